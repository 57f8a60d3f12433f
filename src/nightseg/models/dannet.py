"""DANNet's networks (Wu et al., "DANNet: A One-Stage Domain Adaptation Network for Unsupervised Nighttime
Semantic Segmentation", CVPR 2021), written here from the description of its released code
(W-zx-Y/DANNet, ``network/pspnet.py`` and ``network/relighting.py``) so that its weights load exactly:

- `DANNetPSPNet`: ResNet-101 with a 64-64-128 deep stem and ceil-mode max pooling, layer3 dilated 2 and
  layer4 dilated 4 in every block (multi-grid 1,1,1), then a pyramid pooling module whose bins are a bare
  1x1 conv (no BN/ReLU), upsampled with align_corners=True and concatenated *before* the features, a 3x3
  conv + BN bottleneck (no ReLU), dropout 0.1 and a 1x1 classifier (``head.0`` / ``head.1`` as DANNet).
- `LightNet`: DANNet's relighting net, a ResNet generator (7x7 conv, two stride-2 convs, 3 residual
  blocks, two transposed convs, 7x7 conv, tanh) whose output r is *added* to the normalised image
  (``enhancement = image + r``) before the segmenter; it is part of the network here, because NightSeg's
  Zero-DCE step works on [0, 1] RGB and clamps, which DANNet does not.
- At test time DANNet multiplies the logits by class weights from Cityscapes' class frequencies
  (``(mean(log f) - log f) / std(log f) * 0.16 + 1``, its evaluate.py) and upsamples with
  align_corners=True: the ``class_prior_std`` option and the segmenter's ``align_corners``.

``dannet_pspnet(num_classes, pretrained=False, light=False, class_prior_std=None)`` is the factory that a
checkpoint's ``model`` metadata names (``nightseg.models.dannet:dannet_pspnet``). DANNet's DeepLab-v2 and
RefineNet (`nightseg.models.dannet_deeplab`, `nightseg.models.dannet_refinenet`) share `DANNetSegmenter`
(LightNet in front, class weights, upsampling) and `dannet_config` with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from nightseg.core.errors import UserError
from nightseg.models.segmenters import Segmenter

FACTORY = "nightseg.models.dannet:dannet_pspnet"
# Cityscapes class pixel frequencies in trainId order, as DANNet's evaluate.py lists them
CITYSCAPES_FREQUENCIES = (
    0.36869696, 0.06084986, 0.22824049, 0.00655399, 0.00877272, 0.01227341, 0.00207795, 0.0055127, 0.15928651,
    0.01157818, 0.04018982, 0.01218957, 0.00135122, 0.06994545, 0.00267456, 0.00235192, 0.00232904, 0.00098658,
    0.00413907,
)


def class_prior_weights(std: float) -> torch.Tensor:
    """Return DANNet's test-time logit weights per class: (mean(log f) - log f) / std(log f) * `std` + 1."""
    log_f = torch.log(torch.tensor(CITYSCAPES_FREQUENCIES, dtype=torch.float32))
    return (log_f.mean() - log_f) / log_f.std() * std + 1.0


class DANNetResNet(nn.Module):
    """DANNet's dilated ResNet-101 (keys ``conv1``..``bn3``, ``layer1``..``layer4`` as its release)."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 23, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.inplanes = 128
        self.layer1 = self._layer(64, layers[0])
        self.layer2 = self._layer(128, layers[1], stride=2)
        self.layer3 = self._layer(256, layers[2], dilation=2)
        self.layer4 = self._layer(512, layers[3], dilation=4)
        self.channels = [256, 512, 1024, 2048]

    def _layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        # every block of a dilated stage uses the full dilation (no contraction in the first block)
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, dilation=dilation)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return [layer1, layer2, layer3, layer4] features of a normalised image batch."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return run_stages(self, self.maxpool(self.relu(self.bn3(self.conv3(x)))))


def projected_stages(layers: Sequence[int], width: int, strides: Sequence[int],
                     block: Callable[[int, int, int, int, nn.Module | None], nn.Module]) -> list[nn.Sequential]:
    """Return ResNet's four bottleneck stages (``layers[i]`` blocks of ``width * 2**i`` planes, expansion 4) as
    DANNet's DeepLab-v2 and RefineNet encoders build them: the first block of each stage projects with a 1x1
    conv of stride ``strides[i]`` + BN. ``block(inplanes, planes, stage, stride, downsample)`` builds one
    block (stride 1 and ``downsample`` None after the first)."""
    stages, inplanes = [], width
    for i, (blocks, stride) in enumerate(zip(layers, strides, strict=True)):
        planes = width * 2**i
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
        stages.append(nn.Sequential(block(inplanes, planes, i, stride, downsample),
                                    *(block(planes * 4, planes, i, 1, None) for _ in range(1, blocks))))
        inplanes = planes * 4
    return stages


def run_stages(encoder: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Return the outputs of ``encoder.layer1`` .. ``layer4`` applied in turn to the stem's output `x`."""
    features = []
    for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
        x = layer(x)
        features.append(x)
    return features


class DANNetPSPModule(nn.Module):
    """DANNet's pyramid pooling: bins are pool + bare 1x1 conv; [bins..., x]; 3x3 conv + BN; dropout."""

    def __init__(self, features: int = 2048, out_features: int = 512, sizes: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(features, out_features, 1, bias=False)) for s in sizes
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(features + len(sizes) * out_features, out_features, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_features),
            nn.Dropout2d(0.1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        priors = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=True) for stage in self.stages]
        return self.bottleneck(torch.cat([*priors, x], dim=1))


class DANNetHead(nn.Sequential):
    """``head.0`` = `DANNetPSPModule`, ``head.1`` = the 1x1 classifier; takes the feature list."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(DANNetPSPModule(), nn.Conv2d(512, num_classes, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        """Return logits at the resolution of features[-1] (stride 8)."""
        return self[1](self[0](features[-1]))


class ResnetBlock(nn.Module):
    """LightNet's residual block: reflect-pad, 3x3 conv, BN, ReLU, reflect-pad, 3x3 conv, BN, plus input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LightNet(nn.Module):
    """DANNet's relighting net (a ResNet generator, 3 blocks, BatchNorm); returns r in [-1, 1]."""

    def __init__(self, ngf: int = 64, blocks: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=False), nn.BatchNorm2d(ngf),
                                   nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1, bias=False), nn.BatchNorm2d(ngf * mult * 2),
                       nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class DANNetSegmenter(Segmenter):
    """What DANNet's three networks share at test time (its evaluate.py): the image normalised with ImageNet
    mean/std, optionally LightNet's r added to it, the logits multiplied by its class weights, then upsampled
    with align_corners=True. Subclasses give the backbone (a feature list) and the head (logits)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, light: bool, class_prior_std: float | None,
                 config: dict) -> None:
        super().__init__(backbone, head, config)
        num_classes = int(config["num_classes"])
        self.light = LightNet() if light else None
        if class_prior_std is not None and num_classes != len(CITYSCAPES_FREQUENCIES):
            raise UserError(f"class_prior_std needs Cityscapes' 19 classes, not {num_classes}")
        weights = class_prior_weights(class_prior_std) if class_prior_std is not None else torch.ones(num_classes)
        self.register_buffer("class_weights", weights.view(1, -1, 1, 1), persistent=False)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the encoder features of RGB images in [0, 1]: normalised, plus LightNet's r if present."""
        x = (x - self.mean) / self.std
        if self.light is not None:
            if x.shape[-2] % 4 or x.shape[-1] % 4:  # its two stride-2 convs and transposed convs
                raise UserError(f"DANNet's LightNet needs height and width divisible by 4, got {tuple(x.shape[-2:])}")
            x = x + self.light(x)
        return self.backbone(x)

    def decode(self, features: list[torch.Tensor], out_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Return logits at `out_size`: head, DANNet's class weights, bilinear upsampling (align_corners)."""
        logits = self.head(features) * self.class_weights  # per-class scaling commutes with the upsampling
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=self.align_corners)
        return logits


class DANNetPSPNet(DANNetSegmenter):
    """DANNet's PSPNet, optionally with its LightNet in front and its test-time class weighting."""

    def __init__(self, num_classes: int, light: bool, class_prior_std: float | None, config: dict) -> None:
        super().__init__(DANNetResNet(), DANNetHead(num_classes), light, class_prior_std, config)


def dannet_config(factory: str, num_classes: int, pretrained: bool, light: bool,
                  class_prior_std: float | None) -> dict[str, Any]:
    """Return the ``model`` config of one of DANNet's networks (the factory's keyword arguments); a UserError
    for ``pretrained: true``, since their weights come from DANNet's release through `nightseg import`."""
    if pretrained:
        name = factory.rsplit(":", 1)[-1]
        raise UserError(f"{name}: its weights come from DANNet's release (`nightseg import FILE.pth`); "
                        "set model.pretrained: false")
    config: dict[str, Any] = {"name": factory, "num_classes": int(num_classes), "light": bool(light),
                              "align_corners": True}
    if class_prior_std is not None:
        config["class_prior_std"] = float(class_prior_std)
    return config


def dannet_pspnet(num_classes: int = 19, pretrained: bool = False, light: bool = False,
                  class_prior_std: float | None = None, **_: Any) -> DANNetPSPNet:
    """Return DANNet's PSPNet (see the module docstring); its weights come from `nightseg import` only."""
    config = dannet_config(FACTORY, num_classes, pretrained, light, class_prior_std)
    return DANNetPSPNet(int(num_classes), bool(light), class_prior_std, config)
