"""DANNet's DeepLab-v2 (W-zx-Y/DANNet ``network/deeplab.py``, AdaptSegNet's ``ResNetMulti``), written here from
the description of its code so that its weights load and compute what its evaluate.py computes:

- a ResNet-101 with a single 7x7 stem conv and ceil-mode max pooling, whose bottlenecks put the stride on the
  first 1x1 conv (Caffe style, not torchvision's 3x3), layer3 dilated 2 and layer4 dilated 4 in every block
  (padding = dilation, output stride 8);
- the classifier ``layer6`` on layer4: four 3x3 convs straight to classes, dilations 6/12/18/24, biases. Its
  forward returns from inside the summing loop, so DANNet's (and AdaptSegNet's) network adds only the
  first **two** branches (dilation 6 and 12); branches 3 and 4 are in the weights but never used. NightSeg
  keeps all four and sums the first ``aspp_branches`` (default 2, DANNet's function). The four convs are
  stored stacked (``head.classifier.weight`` [classes, 4, C, 3, 3]) so that a class map reorders every
  branch together. The auxiliary classifier ``layer5`` on layer3 is a training-only output (dropped).

Then as for DANNet's other networks (`nightseg.models.dannet.DANNetSegmenter`): optional LightNet in front,
class-prior weights on the stride-8 logits, align-corners upsampling.

``dannet_deeplab(num_classes, pretrained=False, light=False, class_prior_std=None, aspp_branches=2,
width=64, layers=(3, 4, 23, 3))`` is the factory that a checkpoint's ``model`` metadata names
(``nightseg.models.dannet_deeplab:dannet_deeplab``); `width` (stem channels; stage planes are width *
1, 2, 4, 8) and `layers` (blocks per stage) default to DANNet's ResNet-101.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nightseg.core.errors import UserError
from nightseg.models.dannet import DANNetSegmenter, dannet_config, projected_stages, run_stages

FACTORY = "nightseg.models.dannet_deeplab:dannet_deeplab"
RESNET101 = (3, 4, 23, 3)
RATES = (6, 12, 18, 24)
USED_BRANCHES = 2  # what DANNet's Classifier_Module.forward adds before it returns


class CaffeBottleneck(nn.Module):
    """DeepLab-v2's bottleneck: 1x1 conv (with the stride), 3x3 conv (dilation d, padding d), 1x1 conv x4,
    BN + ReLU between, projection shortcut when given, ReLU after the sum."""

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class DANNetDeepLabResNet(nn.Module):
    """DANNet's DeepLab-v2 encoder (keys ``conv1``, ``bn1``, ``layer1``..``layer4`` as its release)."""

    def __init__(self, width: int = 64, layers: Sequence[int] = RESNET101) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        # every first block projects (channels change in each stage of this network); layer3/4 dilated 2/4
        dilations = (1, 1, 2, 4)
        stages = projected_stages(layers, width, (1, 2, 1, 1), lambda cin, planes, i, stride, down: CaffeBottleneck(
            cin, planes, stride, dilations[i], down))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = [width * 4 * 2**i for i in range(4)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return [layer1, layer2, layer3, layer4] features (strides 4, 8, 8, 8) of a normalised image batch."""
        return run_stages(self, self.maxpool(self.relu(self.bn1(self.conv1(x)))))


class StackedDilatedClassifier(nn.Module):
    """DeepLab-v2's classifier: 3x3 convs straight to classes at dilations `rates`, the first `used` summed.

    ``weight`` [classes, branches, C, 3, 3] and ``bias`` [classes, branches] hold the branch convs stacked on
    dim 1, so that the class dimension comes first for every branch at once."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = RATES, used: int = USED_BRANCHES):
        super().__init__()
        if not 1 <= used <= len(rates):
            raise UserError(f"aspp_branches={used}: expected 1..{len(rates)} (DANNet's forward sums 2)")
        self.rates = tuple(int(r) for r in rates)
        self.used = int(used)
        self.weight = nn.Parameter(torch.randn(num_classes, len(rates), in_channels, 3, 3) * 0.01)
        self.bias = nn.Parameter(torch.zeros(num_classes, len(rates)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the sum over the first `used` branches of conv(x, dilation r, padding r)."""
        out = None
        for b, rate in enumerate(self.rates[: self.used]):
            y = F.conv2d(x, self.weight[:, b], self.bias[:, b], padding=rate, dilation=rate)
            out = y if out is None else out + y
        return out


class DANNetDeepLabHead(nn.Module):
    """``head.classifier`` on features[-1] (layer4): stride-8 logits."""

    def __init__(self, in_channels: int, num_classes: int, used: int = USED_BRANCHES) -> None:
        super().__init__()
        self.classifier = StackedDilatedClassifier(in_channels, num_classes, RATES, used)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of features[-1]."""
        return self.classifier(features[-1])


class DANNetDeepLab(DANNetSegmenter):
    """DANNet's DeepLab-v2, optionally with its LightNet in front and its test-time class weighting."""


def dannet_deeplab(num_classes: int = 19, pretrained: bool = False, light: bool = False,
                   class_prior_std: float | None = None, aspp_branches: int = USED_BRANCHES, width: int = 64,
                   layers: Sequence[int] = RESNET101, **_: Any) -> DANNetDeepLab:
    """Return DANNet's DeepLab-v2 (see the module docstring); its weights come from `nightseg import` only."""
    layers = tuple(int(n) for n in layers)
    if len(layers) != 4 or min(layers) < 1:
        raise UserError(f"dannet_deeplab: layers={list(layers)}: expected 4 positive block counts")
    config = dannet_config(FACTORY, num_classes, pretrained, light, class_prior_std)
    # only what differs from DANNet's release goes into the config (and so into checkpoint metadata)
    if aspp_branches != USED_BRANCHES:
        config["aspp_branches"] = int(aspp_branches)
    if width != 64 or layers != RESNET101:
        config.update(width=int(width), layers=list(layers))
    backbone = DANNetDeepLabResNet(int(width), layers)
    head = DANNetDeepLabHead(backbone.channels[-1], int(num_classes), int(aspp_branches))
    return DANNetDeepLab(backbone, head, bool(light), class_prior_std, config)
