"""Decoders: each takes the encoder's feature list (deepest last) and returns low-resolution logits.

- `PyramidPoolingHead`: PSPNet's pyramid pooling module, bins (1, 2, 3, 6) (Zhao et al., CVPR 2017).
- `ASPPv2Head`: DeepLab v2's classifier, a sum of four dilated 3x3 convs, rates 6/12/18/24 (Chen et al.,
  TPAMI 2018), the AdaptSegNet/ADVENT UDA baseline head.
- `DeepLabV3PlusHead`: ASPP (torchvision) plus the stride-4 low-level decoder of DeepLab v3+ (Chen et
  al., ECCV 2018).
- `SegFormerHead`: SegFormer's all-MLP decoder (Xie et al., NeurIPS 2021).
- `LRASPPHead`: torchvision's Lite R-ASPP head (Howard et al., ICCV 2019).
- `SeparableASPPHead`: DeepLab v3+ with depthwise-separable ASPP and decoder convs, as OpenMMLab
  mmsegmentation's ``DepthwiseSeparableASPPHead`` (its Cityscapes DeepLab v3+ checkpoints load into it).
- `DAFormerHead`: DAFormer's context-aware fusion decoder (Hoyer et al., CVPR 2022).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.lraspp import LRASPPHead as _TorchvisionLRASPPHead


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """Return Conv(bias-free) -> BatchNorm -> ReLU with 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PyramidPoolingHead(nn.Module):
    """PSPNet head: pool features[-1] to 1x1, 2x2, 3x3, 6x6, reduce to C/4 each, upsample, concatenate
    with the input, 3x3 conv to C/4, dropout 0.1, 1x1 classifier.

    Note: with batch size 1 in training mode the 1x1 bin's BatchNorm sees one value per channel and
    PyTorch refuses it; train with batches of 2 or more (as PSPNet and DANNet do).
    """

    def __init__(self, in_channels: int, num_classes: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        branch = in_channels // 4
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *conv_bn_relu(in_channels, branch)) for b in bins
        )
        self.bottleneck = conv_bn_relu(in_channels + branch * len(bins), branch, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(branch, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of features[-1]."""
        x = features[-1]
        pooled = [_resize(stage(x), x.shape[-2:]) for stage in self.stages]
        x = self.bottleneck(torch.cat([x, *pooled], dim=1))
        return self.classifier(self.dropout(x))


class ASPPv2Head(nn.Module):
    """DeepLab v2 ASPP classifier: sum of four 3x3 convs (dilation 6, 12, 18, 24) straight to classes."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of features[-1]."""
        x = features[-1]
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV3PlusHead(nn.Module):
    """DeepLab v3+ decoder: ASPP(features[-1]) upsampled to features[0] (stride 4), concatenated with a
    48-channel projection of features[0], two 3x3 conv-BN-ReLU, 1x1 classifier (plain, not separable, convs).
    """

    def __init__(
        self, in_channels: int, low_channels: int, num_classes: int, rates: tuple[int, ...] = (6, 12, 18)
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, list(rates), out_channels=256)
        self.low = conv_bn_relu(low_channels, 48)
        self.fuse = nn.Sequential(conv_bn_relu(256 + 48, 256, 3), conv_bn_relu(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of features[0] (stride 4)."""
        low = self.low(features[0])
        x = _resize(self.aspp(features[-1]), low.shape[-2:])
        return self.classifier(self.fuse(torch.cat([x, low], dim=1)))


class SegFormerHead(nn.Module):
    """SegFormer all-MLP decoder: per-stage linear (1x1) to `embed_dim`, upsample to stride 4,
    concatenate, 1x1 conv-BN-ReLU fuse, dropout 0.1, 1x1 classifier.
    """

    def __init__(self, in_channels: list[int], num_classes: int, embed_dim: int = 256, stage_norm: bool = False) -> None:
        super().__init__()
        # stage_norm: mmseg's SegformerHead projects each stage with conv-BN-ReLU instead of a linear layer
        self.linear = nn.ModuleList(
            conv_bn_relu(c, embed_dim) if stage_norm else nn.Conv2d(c, embed_dim, 1) for c in in_channels
        )
        self.fuse = conv_bn_relu(embed_dim * len(in_channels), embed_dim)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of features[0] (stride 4)."""
        size = features[0].shape[-2:]
        x = [_resize(proj(f), size) for proj, f in zip(self.linear, features)]
        return self.classifier(self.dropout(self.fuse(torch.cat(x, dim=1))))


class LRASPPHead(nn.Module):
    """Lite R-ASPP head (torchvision) on [low (stride 8), high (stride 16)] features."""

    def __init__(
        self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128
    ) -> None:
        super().__init__()
        self.head = _TorchvisionLRASPPHead(low_channels, high_channels, num_classes, inter_channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of features[0] (stride 8)."""
        return self.head({"low": features[0], "high": features[-1]})


def separable_conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """Return a depthwise 3x3 conv-BN-ReLU (dilated) followed by a pointwise 1x1 conv-BN-ReLU
    (mmcv's ``DepthwiseSeparableConvModule`` with its default norm and activation on both convs)."""
    depthwise = nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
    )
    return nn.Sequential(depthwise, conv_bn_relu(in_channels, out_channels))


class SeparableASPPHead(nn.Module):
    """DeepLab v3+ head of mmsegmentation (``DepthwiseSeparableASPPHead``): image pooling + 1x1 + three
    separable dilated 3x3 branches on features[-1], 3x3 bottleneck, upsampled to features[0] (stride 4) and
    concatenated with its 48-channel 1x1 projection, two separable 3x3 convs, dropout 0.1, 1x1 classifier.

    The dilations (12, 24, 36) are mmseg's for output stride 8 (its "-D8" Cityscapes models).
    """

    def __init__(self, in_channels: int, low_channels: int, num_classes: int, channels: int = 512,
                 rates: tuple[int, ...] = (12, 24, 36), low_out: int = 48) -> None:
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels))
        self.aspp = nn.ModuleList(
            [conv_bn_relu(in_channels, channels), *(separable_conv_bn_relu(in_channels, channels, r) for r in rates)]
        )
        self.bottleneck = conv_bn_relu(channels * (len(rates) + 2), channels, 3)
        self.low = conv_bn_relu(low_channels, low_out)
        self.fuse = nn.Sequential(separable_conv_bn_relu(channels + low_out, channels),
                                  separable_conv_bn_relu(channels, channels))
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of features[0] (stride 4)."""
        x = features[-1]
        branches = [_resize(self.image_pool(x), x.shape[-2:]), *(branch(x) for branch in self.aspp)]
        x = self.bottleneck(torch.cat(branches, dim=1))
        low = self.low(features[0])
        x = torch.cat([_resize(x, low.shape[-2:]), low], dim=1)
        return self.classifier(self.dropout(self.fuse(x)))


class DAFormerHead(nn.Module):
    """DAFormer's context-aware fusion decoder (Hoyer et al., CVPR 2022, Sec. 3.2): each stage embedded to
    `embed_dim` by a linear layer (1x1 conv), upsampled to stride 4 and concatenated; then an ASPP-like fusion
    of a 1x1 conv and depthwise-separable 3x3 convs with dilations 6, 12, 18 (all conv-BN-ReLU), a 3x3
    conv-BN-ReLU bottleneck over their concatenation, dropout 0.1 and a 1x1 classifier."""

    def __init__(self, in_channels: list[int], num_classes: int, embed_dim: int = 256,
                 dilations: tuple[int, ...] = (1, 6, 12, 18)) -> None:
        super().__init__()
        self.linear = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        fused = embed_dim * len(in_channels)
        self.fusion = nn.ModuleList(
            conv_bn_relu(fused, embed_dim) if d == 1 else separable_conv_bn_relu(fused, embed_dim, d)
            for d in dilations
        )
        self.bottleneck = conv_bn_relu(embed_dim * len(dilations), embed_dim, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of features[0] (stride 4)."""
        size = features[0].shape[-2:]
        x = torch.cat([_resize(proj(f), size) for proj, f in zip(self.linear, features)], dim=1)
        x = self.bottleneck(torch.cat([branch(x) for branch in self.fusion], dim=1))
        return self.classifier(self.dropout(x))
