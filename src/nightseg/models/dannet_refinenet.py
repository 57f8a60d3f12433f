"""DANNet's RefineNet (W-zx-Y/DANNet ``network/refinenet.py``, Nekrasov's RefineNet-101 port), written here from
the description of its code so that its weights load and compute what its evaluate.py computes:

- a plain ResNet-101 (torchvision bottlenecks: stride on the 3x3 conv; 7x7 stem, floor-mode max pooling,
  no dilation), features at strides 4, 8, 16, 32;
- four refinement blocks from the deepest feature up. Block k: a 3x3 conv reducing the feature (512
  channels for layer4, 256 otherwise), a residual conv unit chain (2 units), for k > 1 a 3x3 conv and the
  sum with the block above (upsampled, align_corners=True), a ReLU, chained residual pooling (4 stages of
  5x5 stride-1 max pool then 3x3 conv, each added to the running sum), a 3-unit residual conv chain and,
  except the last, a 3x3 conv to 256 channels before the upsampling. A residual conv unit is
  x + conv(relu(conv_b(relu(x)))) with the bias on the first conv only; no BN anywhere after the encoder;
- dropout 0.5 on layer3, layer4 and before the classifier (training only), a 3x3 classifier with bias:
  stride-4 logits.

Then as for DANNet's other networks (`nightseg.models.dannet.DANNetSegmenter`): optional LightNet in front,
class-prior weights on the logits, align-corners upsampling.

``dannet_refinenet(num_classes, pretrained=False, light=False, class_prior_std=None, width=64,
layers=(3, 4, 23, 3))`` is the factory that a checkpoint's ``model`` metadata names
(``nightseg.models.dannet_refinenet:dannet_refinenet``); `width` scales every channel count (stem width;
the refinement blocks use 8 * width and 4 * width) and `layers` gives the blocks per stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from nightseg.core.errors import UserError
from nightseg.models.dannet import DANNetSegmenter, dannet_config, projected_stages, run_stages

FACTORY = "nightseg.models.dannet_refinenet:dannet_refinenet"
RESNET101 = (3, 4, 23, 3)


def conv3x3(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
    """Return a 3x3, stride-1, padding-1 convolution."""
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)


class DANNetRefineNetResNet(nn.Module):
    """DANNet's RefineNet encoder (keys ``conv1``, ``bn1``, ``layer1``..``layer4`` as its release)."""

    def __init__(self, width: int = 64, layers: Sequence[int] = RESNET101) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # torchvision's Bottleneck puts the stride on the 3x3 conv, as this network's own does
        stages = projected_stages(layers, width, (1, 2, 2, 2), lambda cin, planes, i, stride, down: Bottleneck(
            cin, planes, stride, down))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = [width * 4 * 2**i for i in range(4)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return [layer1, layer2, layer3, layer4] features (strides 4, 8, 16, 32)."""
        return run_stages(self, self.maxpool(self.relu(self.bn1(self.conv1(x)))))


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convs, the bias on conv1 only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, bias=True)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ResidualConvChain(nn.Module):
    """`count` residual conv units in a row."""

    def __init__(self, channels: int, count: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(ResidualConvUnit(channels) for _ in range(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x


class ChainedResidualPooling(nn.Module):
    """x + sum_i p_i with p_0 = x, p_i = conv_i(maxpool5x5(p_{i-1})) (stride 1, padding 2, no bias)."""

    def __init__(self, channels: int, stages: int = 4) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.convs = nn.ModuleList(conv3x3(channels, channels) for _ in range(stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, path = x, x
        for conv in self.convs:
            path = conv(self.pool(path))
            out = out + path
        return out


class RefineBlock(nn.Module):
    """One refinement level: reduce, adapt (2 RCUs) [, adapt_out conv, + the level above], ReLU, chained
    residual pooling, fuse (3 RCUs) [, out conv]."""

    def __init__(self, in_channels: int, channels: int, out_channels: int | None, joins: bool) -> None:
        super().__init__()
        self.reduce = conv3x3(in_channels, channels)
        self.adapt = ResidualConvChain(channels, 2)
        self.adapt_out = conv3x3(channels, channels) if joins else None
        self.pool = ChainedResidualPooling(channels, 4)
        self.fuse = ResidualConvChain(channels, 3)
        self.out = conv3x3(channels, out_channels) if out_channels is not None else None

    def forward(self, feature: torch.Tensor, above: torch.Tensor | None) -> torch.Tensor:
        """Return the refined map at the resolution of `feature` (`above` already upsampled to it)."""
        x = self.adapt(self.reduce(feature))
        if self.adapt_out is not None:
            x = self.adapt_out(x)
        if above is not None:
            x = x + above
        x = self.fuse(self.pool(F.relu(x)))
        return self.out(x) if self.out is not None else x


class DANNetRefineNetHead(nn.Module):
    """``head.blocks.0`` (layer4) .. ``head.blocks.3`` (layer1), then ``head.classifier``: stride-4 logits."""

    def __init__(self, channels: Sequence[int], num_classes: int, width: int = 64) -> None:
        super().__init__()
        top, rest = width * 8, width * 4
        self.blocks = nn.ModuleList([
            RefineBlock(channels[3], top, rest, joins=False),
            RefineBlock(channels[2], rest, rest, joins=True),
            RefineBlock(channels[1], rest, rest, joins=True),
            RefineBlock(channels[0], rest, None, joins=True),
        ])
        self.dropout = nn.Dropout(0.5)
        self.classifier = conv3x3(rest, num_classes, bias=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of features[0] (stride 4)."""
        l1, l2, l3, l4 = features
        inputs = (self.dropout(l4), self.dropout(l3), l2, l1)
        above = None
        for k, (block, feature) in enumerate(zip(self.blocks, inputs)):
            x = block(feature, above)
            if k < 3:
                above = F.interpolate(x, size=inputs[k + 1].shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.dropout(x))


class DANNetRefineNet(DANNetSegmenter):
    """DANNet's RefineNet, optionally with its LightNet in front and its test-time class weighting."""


def dannet_refinenet(num_classes: int = 19, pretrained: bool = False, light: bool = False,
                     class_prior_std: float | None = None, width: int = 64, layers: Sequence[int] = RESNET101,
                     **_: Any) -> DANNetRefineNet:
    """Return DANNet's RefineNet (see the module docstring); its weights come from `nightseg import` only."""
    layers = tuple(int(n) for n in layers)
    if len(layers) != 4 or min(layers) < 1:
        raise UserError(f"dannet_refinenet: layers={list(layers)}: expected 4 positive block counts")
    config = dannet_config(FACTORY, num_classes, pretrained, light, class_prior_std)
    if width != 64 or layers != RESNET101:  # only what differs from DANNet's release
        config.update(width=int(width), layers=list(layers))
    backbone = DANNetRefineNetResNet(int(width), layers)
    head = DANNetRefineNetHead(backbone.channels, int(num_classes), int(width))
    return DANNetRefineNet(backbone, head, bool(light), class_prior_std, config)
