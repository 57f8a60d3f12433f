"""Encoders: each returns a list of feature maps, shallowest first and deepest last.

- `ResNetBackbone`: torchvision ResNet-18/50/101 made dilated (output stride 8 or 16), the encoder of
  PSPNet (Zhao et al., CVPR 2017), DeepLab v2/v3+ and DANNet / ULCA.
- `MiTBackbone`: the Mix Transformer encoders MiT-B0..B5 of SegFormer (Xie et al., NeurIPS 2021), from
  segmentation_models_pytorch.
- `MobileNetV3Backbone`: the dilated MobileNetV3-Large of LR-ASPP (Howard et al., ICCV 2019).
- `ResNetV1cBackbone`: `ResNetBackbone` with the deep stem (three 3x3 convs) of ResNet-V1c, the encoder of
  OpenMMLab mmsegmentation's PSPNet / DeepLab v3+ "-D8" models (same key layout as mmseg's backbone).

ImageNet weights are fetched only when asked (`pretrained=True`); `fetch_weights` turns a failed
download into a `UserError` that says where to put the file by hand. Inside `imagenet_weights_from(loader)`
(``model.encoder_weights: FILE``, see `nightseg.models.pretrained.imagenet`) every encoder built with
`pretrained=True` takes its ImageNet weights from the loader (a local file) instead of downloading them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar
from urllib.error import URLError

import torch
import torchvision
from torch import nn

from nightseg.core.errors import UserError

DOWNLOAD_ERRORS = (URLError, OSError, RuntimeError, ValueError)

ImageNetLoader = Callable[[nn.Module, str], None]
"""``loader(module, family)`` loads ImageNet weights into `module` (a torchvision classifier, an smp encoder or
`ResNetV1cBackbone`); `family` names the encoder (``resnet50``, ``resnet50_v1c``, ``mit_b0``, ``mobilenet_v3_large``)."""
_LOCAL_IMAGENET: contextvars.ContextVar[ImageNetLoader | None] = contextvars.ContextVar("imagenet_loader", default=None)


def fetch_weights(fetch: Callable[[], Any], what: str, where: str) -> Any:
    """Return ``fetch()``; a network/cache failure becomes a UserError naming `what` and `where` to put it."""
    try:
        return fetch()
    except DOWNLOAD_ERRORS as exc:
        raise UserError(
            f"{what}: ImageNet weights could not be downloaded ({type(exc).__name__}: {exc}); "
            f"go online once, or set model.encoder_weights=FILE (a torchvision/timm/smp ImageNet file you have; "
            f"docs/pretrained.md), or copy the file into {where}, or build with pretrained=False"
        ) from exc


@contextlib.contextmanager
def imagenet_weights_from(loader: ImageNetLoader) -> Iterator[None]:
    """While active, encoders built with ``pretrained=True`` load their ImageNet weights with `loader`
    instead of downloading them (an outer active loader stays in charge of nested uses)."""
    if _LOCAL_IMAGENET.get() is not None:
        yield
        return
    token = _LOCAL_IMAGENET.set(loader)
    try:
        yield
    finally:
        _LOCAL_IMAGENET.reset(token)


def current_imagenet_loader() -> ImageNetLoader | None:
    """Return the active local ImageNet loader (`imagenet_weights_from`), None when weights are downloaded."""
    return _LOCAL_IMAGENET.get()


def load_imagenet(module: nn.Module, family: str, download: Callable[[], dict[str, torch.Tensor]]) -> None:
    """Load the ImageNet weights of encoder `family` into `module`: from the active local loader
    (`imagenet_weights_from`), else the state dict ``download()`` returns; returns None."""
    loader = _LOCAL_IMAGENET.get()
    if loader is not None:
        loader(module, family)
    else:
        module.load_state_dict(download())


def _torchvision_state_dict(weights: torchvision.models.WeightsEnum) -> dict[str, torch.Tensor]:
    """Return the state dict of a torchvision weights enum, downloading it into the torch hub cache."""
    hub = torch.hub.get_dir()
    filename = weights.url.rsplit("/", 1)[-1]
    return fetch_weights(
        lambda: weights.get_state_dict(progress=True, check_hash=True),
        weights.url,
        f"{hub}/checkpoints/{filename}",
    )


def dilate_resnet(resnet: torchvision.models.ResNet, output_stride: int) -> None:
    """Turn the strides of layer3/layer4 into dilations (in place) to reach `output_stride` (8 or 16).

    Same scheme as torchvision's ``replace_stride_with_dilation`` (first block of a dilated stage keeps
    the previous dilation), but it also works for ResNet-18/34, whose BasicBlock torchvision refuses to
    dilate.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    dilation = 1
    for name, dilate in (("layer3", output_stride <= 8), ("layer4", output_stride <= 16)):
        if not dilate:
            continue
        layer = getattr(resnet, name, None)
        if layer is None:
            continue
        previous, dilation = dilation, dilation * 2
        for index, block in enumerate(layer):
            d = previous if index == 0 else dilation
            for module in block.modules():
                if isinstance(module, nn.Conv2d):
                    if module.stride == (2, 2):
                        module.stride = (1, 1)
                    if module.kernel_size == (3, 3):
                        module.dilation = (d, d)
                        module.padding = (d, d)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet at output stride 8/16; returns the features of its stages (deepest last)."""

    WEIGHTS: ClassVar[dict[int, tuple[Callable[..., torchvision.models.ResNet], str]]] = {
        18: (torchvision.models.resnet18, "ResNet18_Weights"),
        50: (torchvision.models.resnet50, "ResNet50_Weights"),
        101: (torchvision.models.resnet101, "ResNet101_Weights"),
    }

    def __init__(self, depth: int, output_stride: int = 8, stages: int = 4, pretrained: bool = False) -> None:
        super().__init__()
        builder, weights_name = self.WEIGHTS[depth]
        net = builder(weights=None)
        if pretrained:
            weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1
            load_imagenet(net, f"resnet{depth}", lambda: _torchvision_state_dict(weights))
        dilate_resnet(net, output_stride)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([getattr(net, f"layer{i}") for i in range(1, stages + 1)])
        expansion = 4 if depth >= 50 else 1
        self.channels = [64 * 2**i * expansion for i in range(stages)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the stage outputs [layer1, ..., layerN] for a normalised image batch."""
        x = self.stem(x)
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class ResNetV1cBackbone(ResNetBackbone):
    """ResNet-50/101-V1c at output stride 8/16: a deep stem (3x3 convs 3->32->32->64, stride 2 on the first,
    each with BN + ReLU, then max pooling) instead of the 7x7 conv, else torchvision's bottlenecks (stride on
    the 3x3 conv, as mmseg's ``style="pytorch"``). The D8 dilation scheme of mmseg (``contract_dilation``:
    the first block of a dilated stage keeps the previous dilation) is `dilate_resnet`'s. No ImageNet weights
    are downloaded: these encoders come with a converted mmsegmentation checkpoint, or (`pretrained`) from
    mmcv's ImageNet file given as ``model.encoder_weights``."""

    def __init__(self, depth: int, output_stride: int = 8, pretrained: bool = False) -> None:
        super().__init__(depth, output_stride=output_stride, stages=4, pretrained=False)

        def conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        # indices 0/1, 3/4, 6/7 are conv/bn: the same ``stem.N`` keys as mmseg's backbone
        self.stem = nn.Sequential(*conv_bn_relu(3, 32, 2), *conv_bn_relu(32, 32, 1), *conv_bn_relu(32, 64, 1),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        for module in self.stem.modules():  # torchvision's ResNet initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if pretrained:
            load_imagenet(self, f"resnet{depth}_v1c", functools.partial(_no_v1c_download, depth))


def _no_v1c_download(depth: int) -> dict[str, torch.Tensor]:
    raise UserError(f"ResNet-{depth}-V1c: its ImageNet weights are not downloaded; set model.encoder_weights=FILE "
                    f"(mmcv's resnet{depth}_v1c ImageNet .pth) or start from an imported mmsegmentation checkpoint "
                    "(method.init_checkpoint) with model.pretrained: false")


@functools.cache
def sdpa_attention_class() -> type[nn.Module]:
    """Return smp's MiT attention with an SDPA forward (built on first use: smp imports slowly)."""
    from segmentation_models_pytorch.encoders.mix_transformer import Attention

    class SDPAAttention(Attention):
        """smp's MiT efficient self-attention (keys/values reduced by ``sr_ratio``) computed with
        ``F.scaled_dot_product_attention``; same parameters, same function."""

        def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
            b, n, c = x.shape
            heads = self.num_heads
            q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
            if self.sr_ratio > 1:
                x = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, height, width)).reshape(b, c, -1).transpose(1, 2))
            k, v = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale)
            return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))

    return SDPAAttention


class MiTBackbone(nn.Module):
    """SegFormer's Mix Transformer encoder MiT-B0..B5 (via segmentation_models_pytorch).

    Returns the four stage outputs at strides 4, 8, 16, 32.
    """

    def __init__(self, variant: str, pretrained: bool = False, layer_norm_eps: float | None = None,
                 sdpa: bool = False) -> None:
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder
        from segmentation_models_pytorch.encoders.mix_transformer import Attention

        name = f"mit_{variant}"
        self.encoder = get_encoder(name, in_channels=3, depth=5, weights=None)
        if pretrained:
            load_imagenet(self.encoder, name, lambda: fetch_weights(
                lambda: get_encoder(name, in_channels=3, depth=5, weights="imagenet").state_dict(),
                f"smp-hub/{name}.imagenet",
                "the Hugging Face hub cache (~/.cache/huggingface/hub, or $HF_HOME/hub)",
            ))
        # smp reports [input, dummy(0 channels), s4, s8, s16, s32]; keep the four real stages.
        self.channels = list(self.encoder.out_channels[2:])
        if layer_norm_eps is not None:
            # smp follows NVlabs (1e-6 in blocks, 1e-5 in patch embeddings); Hugging Face uses 1e-5 and
            # mmseg 1e-6 everywhere, so an imported model sets one eps on every LayerNorm to be exact.
            for module in self.encoder.modules():
                if isinstance(module, nn.LayerNorm):
                    module.eps = float(layer_norm_eps)
        if sdpa:
            # the same attention through torch's fused kernel: smp materialises the N x N/r^2 score matrix
            # (131072 x 2048 floats in stage 1 of a 1024x2048 image), SDPA does not; equal up to rounding
            for module in self.encoder.modules():
                if isinstance(module, Attention):
                    module.__class__ = sdpa_attention_class()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the MiT stage outputs [s4, s8, s16, s32] for a normalised image batch."""
        return self.encoder(x)[2:]


class MobileNetV3Backbone(nn.Module):
    """Dilated MobileNetV3-Large as in torchvision's LR-ASPP: returns [low (stride 8), high (stride 16)]."""

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        net = torchvision.models.mobilenet_v3_large(weights=None, dilated=True)
        if pretrained:
            weights = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
            load_imagenet(net, "mobilenet_v3_large", lambda: _torchvision_state_dict(weights))
        blocks = net.features
        stage_starts = (
            [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
        )
        self.low_index = stage_starts[-4]
        self.features = blocks[: stage_starts[-1] + 1]
        self.channels = [blocks[self.low_index].out_channels, blocks[stage_starts[-1]].out_channels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return [low-level features at stride 8, high-level features at stride 16]."""
        low = None
        for index, block in enumerate(self.features):
            x = block(x)
            if index == self.low_index:
                low = x
        return [low, x]
