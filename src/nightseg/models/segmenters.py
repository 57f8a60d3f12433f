"""`build_segmenter(name)`: every segmentation network as one encoder + one decoder.

A `Segmenter` takes RGB images in [0, 1] (ImageNet normalisation happens inside `encode`), so the same
tensors can go through Zero-DCE relighting first. ``encode(x)`` returns the encoder features (deepest
last) and ``decode(features, out_size)`` the logits at `out_size`; anything (e.g. cross attention) may
rewrite the features in between. ``config`` holds the build kwargs: ``build_segmenter(**config)``
rebuilds the architecture (never downloading weights) and is saved as ``{"model": config}`` in
checkpoint metadata.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from nightseg.core.errors import UserError
from nightseg.models.backbones import (
    MiTBackbone,
    MobileNetV3Backbone,
    ResNetBackbone,
    ResNetV1cBackbone,
    dilate_resnet,
)
from nightseg.models.cross_attention import CrossAttentionSegmenter
from nightseg.models.heads import (
    ASPPv2Head,
    DAFormerHead,
    DeepLabV3PlusHead,
    LRASPPHead,
    PyramidPoolingHead,
    SegFormerHead,
    SeparableASPPHead,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Segmenter(nn.Module):
    """An encoder (`backbone`) and a decoder (`head`) with ImageNet normalisation in front.

    ``config["input_norm"]`` (present only for imported models trained otherwise, e.g. DANNet's BGR Caffe
    mean) replaces it: ``{"mean": [3], "std": [3]}`` on the [0, 1] scale and ``"channels": "bgr"`` to feed
    the network BGR; the input stays RGB in [0, 1] either way. ``config["align_corners"]`` (smp models, whose
    segmentation head upsamples with ``UpsamplingBilinear2d``) sets how the logits are upsampled.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, config: dict) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = dict(config)
        self.feature_channels: int = backbone.channels[-1]
        norm = config.get("input_norm") or {}
        self.bgr = norm.get("channels", "rgb") == "bgr"
        self.align_corners = bool(config.get("align_corners", False))
        # Not persistent: constants stay out of checkpoints (the config rebuilds them).
        self.register_buffer("mean", torch.tensor(norm.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.get("std", IMAGENET_STD)).view(1, 3, 1, 1), persistent=False)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the encoder features (deepest last) of RGB images `x` in [0, 1], shape [B,3,H,W]."""
        if self.bgr:
            x = x.flip(1)
        return self.backbone((x - self.mean) / self.std)

    def decode(self, features: list[torch.Tensor], out_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Return logits [B, num_classes, *out_size] (bilinear upsampling of the head's output)."""
        logits = self.head(features)
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=self.align_corners)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits at the size of `x` (RGB in [0, 1])."""
        return self.decode(self.encode(x), x.shape[-2:])


def _pspnet(depth: int, stages: int = 4) -> Callable[[int, bool], tuple[nn.Module, nn.Module]]:
    def build(num_classes: int, pretrained: bool) -> tuple[nn.Module, nn.Module]:
        backbone = ResNetBackbone(depth, output_stride=8, stages=stages, pretrained=pretrained)
        return backbone, PyramidPoolingHead(backbone.channels[-1], num_classes)

    return build


class WideTinyResNetBackbone(ResNetBackbone):
    """ResNet-18's stem and stage 1, then stages 2-3 with `width` times the channels (2 BasicBlocks each),
    output stride 8 (stage 3 dilated): `pspnet_tiny`'s encoder widened. No ImageNet weights exist for it."""

    def __init__(self, width: float) -> None:
        nn.Module.__init__(self)
        net = torchvision.models.resnet18(weights=None)
        self.channels = [64] + [round(64 * 2**i * width) for i in (1, 2)]
        net.inplanes = 64
        net.layer2 = net._make_layer(BasicBlock, self.channels[1], 2, stride=2)
        net.layer3 = net._make_layer(BasicBlock, self.channels[2], 2, stride=2)
        for module in (*net.layer2.modules(), *net.layer3.modules()):  # torchvision's ResNet initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        dilate_resnet(net, 8)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3])


def _pspnet_tiny_wide(width: float) -> Callable[[int, bool], tuple[nn.Module, nn.Module]]:
    def build(num_classes: int, pretrained: bool) -> tuple[nn.Module, nn.Module]:
        if pretrained:
            raise UserError("pspnet_tiny_wide: there are no ImageNet weights for its widened stages 2-3; "
                            "set model.pretrained: false (train it from scratch)")
        backbone = WideTinyResNetBackbone(width)
        return backbone, PyramidPoolingHead(backbone.channels[-1], num_classes)

    return build


def _deeplabv2(num_classes: int, pretrained: bool) -> tuple[nn.Module, nn.Module]:
    backbone = ResNetBackbone(101, output_stride=8, pretrained=pretrained)
    return backbone, ASPPv2Head(backbone.channels[-1], num_classes)


def _deeplabv3plus(num_classes: int, pretrained: bool) -> tuple[nn.Module, nn.Module]:
    backbone = ResNetBackbone(50, output_stride=16, pretrained=pretrained)
    return backbone, DeepLabV3PlusHead(backbone.channels[-1], backbone.channels[0], num_classes)


def _segformer(variant: str) -> Callable[..., tuple[nn.Module, nn.Module]]:
    def build(num_classes: int, pretrained: bool, layer_norm_eps: float | None = None, head: str = "mlp",
              embed_dim: int | None = None, sdpa: bool = False) -> tuple[nn.Module, nn.Module]:
        # layer_norm_eps / head="mmseg" / embed_dim / sdpa (fused attention kernel): options of imported
        # models (nightseg.models.pretrained); the defaults keep segformer_bN as it was
        if head not in ("mlp", "mmseg"):
            raise UserError(f"segformer head {head!r}: expected 'mlp' (NVlabs, Hugging Face) or 'mmseg'")
        backbone = MiTBackbone(variant, pretrained=pretrained, layer_norm_eps=layer_norm_eps, sdpa=sdpa)
        if embed_dim is None:
            embed_dim = 256 if variant in ("b0", "b1") else 768  # as SegFormer (NVlabs configs): 256 for B0-B1
        return backbone, SegFormerHead(backbone.channels, num_classes, embed_dim, stage_norm=head == "mmseg")

    return build


def _mmseg_resnet(depth: int, head: str) -> Callable[[int, bool], tuple[nn.Module, nn.Module]]:
    def build(num_classes: int, pretrained: bool) -> tuple[nn.Module, nn.Module]:
        # pretrained: mmcv's ImageNet file through model.encoder_weights (never downloaded; else a UserError)
        backbone = ResNetV1cBackbone(depth, output_stride=8, pretrained=pretrained)
        if head == "pspnet":
            return backbone, PyramidPoolingHead(backbone.channels[-1], num_classes)
        return backbone, SeparableASPPHead(backbone.channels[-1], backbone.channels[0], num_classes)

    return build


def _daformer(variant: str) -> Callable[[int, bool], tuple[nn.Module, nn.Module]]:
    def build(num_classes: int, pretrained: bool) -> tuple[nn.Module, nn.Module]:
        backbone = MiTBackbone(variant, pretrained=pretrained)
        return backbone, DAFormerHead(backbone.channels, num_classes)

    return build


def _lraspp(num_classes: int, pretrained: bool) -> tuple[nn.Module, nn.Module]:
    backbone = MobileNetV3Backbone(pretrained=pretrained)
    return backbone, LRASPPHead(*backbone.channels, num_classes)


# name -> (builder, one-line description)
SEGMENTERS: dict[str, tuple[Callable[[int, bool], tuple[nn.Module, nn.Module]], str]] = {
    "pspnet_r101": (_pspnet(101), "PSPNet, dilated ResNet-101 (OS 8) + pyramid pooling (DANNet, ULCA)"),
    "pspnet_r50": (_pspnet(50), "PSPNet, dilated ResNet-50 (OS 8) + pyramid pooling"),
    "pspnet_r18": (_pspnet(18), "PSPNet, dilated ResNet-18 (OS 8) + pyramid pooling; small CPU model"),
    "pspnet_tiny": (
        _pspnet(18, stages=3),
        "PSPNet on the first 3 stages of ResNet-18 (OS 8); tiny CPU model",
    ),
    "pspnet_tiny_wide": (
        _pspnet_tiny_wide(1.375),
        "pspnet_tiny with stages 2-3 1.375x wider (176/352 channels): 5.76 M parameters, egnet_tiny's size",
    ),
    "pspnet_nano": (
        _pspnet(18, stages=2),
        "PSPNet on the first 2 stages of ResNet-18 (OS 8); the lightest CPU model",
    ),
    "deeplabv2_r101": (
        _deeplabv2,
        "DeepLab v2, dilated ResNet-101 (OS 8) + ASPP-v2 classifier (UDA baseline)",
    ),
    "deeplabv3plus_r50": (_deeplabv3plus, "DeepLab v3+, dilated ResNet-50 (OS 16) + ASPP + stride-4 decoder"),
    **{
        f"segformer_b{i}": (_segformer(f"b{i}"), f"SegFormer, MiT-B{i} encoder + all-MLP decoder")
        for i in range(6)
    },
    "lraspp_mobilenetv3": (_lraspp, "LR-ASPP, dilated MobileNetV3-Large; real-time CPU model"),
    "daformer_mitb5": (_daformer("b5"), "DAFormer, MiT-B5 + context-aware fusion decoder (Hoyer et al., CVPR 2022)"),
    "daformer_mitb0": (_daformer("b0"), "DAFormer's decoder on MiT-B0; small variant for tests and CPUs"),
    **{
        f"{head}_r{depth}_v1c": (_mmseg_resnet(depth, head), f"{label}, ResNet-{depth}-V1c deep stem (OS 8): mmsegmentation's -D8 model")
        for depth in (50, 101)
        for head, label in (("pspnet", "PSPNet"), ("deeplabv3plus", "DeepLab v3+ (separable ASPP)"))
    },
}


def list_segmenters() -> list[str]:
    """Return the names `build_segmenter` accepts."""
    return list(SEGMENTERS)


def build_segmenter(
    name: str, num_classes: int = 19, pretrained: bool = False, cross_attention: dict | None = None,
    input_norm: dict | None = None, align_corners: bool | None = None, **options: Any,
) -> Segmenter | CrossAttentionSegmenter:
    """Return the segmenter `name` with `num_classes` outputs; ImageNet encoder weights if `pretrained`.

    `input_norm`, `align_corners` (see `Segmenter`) and `options` (builder keywords, e.g. SegFormer's ``layer_norm_eps``)
    are what imported models need to compute exactly what their source library computes; both are kept in
    ``config`` only when given, so other models' metadata is unchanged.

    With `cross_attention` (kwargs of `CrossAttentionSegmenter`: value, policy, reduction) the model
    gets ULCA's cross attention (Eq. 2-3) between encoder and decoder. Raises a UserError for an
    unknown name or when the weights cannot be downloaded (offline).
    """
    if name not in SEGMENTERS:
        raise UserError(f"{name}: unknown model; choose one of {', '.join(SEGMENTERS)}")
    if int(num_classes) < 1:
        raise UserError(f"num_classes={num_classes}: must be at least 1")
    builder, _ = SEGMENTERS[name]
    try:
        backbone, head = builder(int(num_classes), bool(pretrained), **options)
    except TypeError as exc:
        raise UserError(f"{name}: unknown model options {sorted(options)} ({exc})") from exc
    config: dict[str, Any] = {"name": name, "num_classes": int(num_classes), **options}
    if input_norm is not None:
        config["input_norm"] = dict(input_norm)
    if align_corners is not None:
        config["align_corners"] = bool(align_corners)
    model = Segmenter(backbone, head, config)
    if cross_attention is not None:
        try:
            return CrossAttentionSegmenter(model, **cross_attention)
        except (TypeError, ValueError) as exc:
            raise UserError(f"cross_attention={cross_attention}: {exc}") from exc
    return model


def _fused(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    return torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of `model` with each BatchNorm folded into the conv before it.

    Folds `nn.Sequential` runs Conv2d -> BatchNorm2d and the ``convN``/``bnN`` attribute pairs of
    torchvision ResNet stems and blocks (which apply bnN right after convN). Inference only.
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module._modules[a] = _fused(conv, bn)
                    module._modules[b] = nn.Identity()
        for i in range(1, 4):
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, f"conv{i}", _fused(conv, bn))
                setattr(module, f"bn{i}", nn.Identity())
    return model
