"""EGNet, the Exposure-Guided Network of the EGNet paper (Tan et al., "Night-time Semantic Segmentation with a
Large Real Dataset"), Section 4, and the ablations of its Tables 4 and 5.

A dilated ResNet (output stride 8, as PSPNet) is split after its stage 1 (shared) into two streams with
the same architecture, each holding its own copy of stages 2..N:

* the **segmentation stream** ends in the segmentation head (logits);
* the **exposure stream** ends in the **exposure head**, a 1x1 conv + sigmoid giving the exposure map
  M_E in [0, 1] at output stride 8, trained against the normalised HSV V channel (`exposure_map`).

After each streamed stage an **exposure guidance layer** (EGL, Eq. 1) rewrites the segmentation
features with the exposure features of the same stage:

    f_S <- w1 * f_S + w2 * f_S (x) W_r,    W_r = sigmoid(W * f_E + b)      (Eq. 1)

with W a 1x1 conv to one channel (a spatial attention map), w1 = 1 and w2 = 0.3 (Sec. 5).

``variant`` selects the paper's model or one of its ablations:

=====================  ======================================================================
``egnet``              the full model (Eq. 1)
``no_egl``             exposure stream and exposure loss kept, no guidance layers (Table 4)
``no_es``              no exposure stream at all: a plain segmenter (Table 4)
``concat``             f_S <- 1x1 conv of [f_S, f_E] (Table 4)
``sum``                f_S <- w1 * f_S + w2 * f_E (Table 4)
``extra_input``        V channel concatenated to the RGB input, no exposure stream (Table 5)
``exposure_attention`` W_r in Eq. 1 replaced by the V map of the input, no exposure stream (Table 5)
=====================  ======================================================================

Model contract (`nightseg.models.segmenters`): RGB in [0, 1], ``encode`` / ``decode`` / ``forward``;
``forward`` returns only the logits, `EGNet.forward_with_exposure` returns ``(logits, M_E)`` for training
(M_E is None for the variants without exposure stream). Checkpoints rebuild through the ``module:factory``
form: ``model.name: nightseg.models.egnet:egnet_tiny`` (or ``egnet_r101``) with the options below.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from nightseg.data.photometric import hsv_value
from nightseg.models.backbones import ResNetBackbone
from nightseg.models.heads import PyramidPoolingHead
from nightseg.models.segmenters import IMAGENET_MEAN, IMAGENET_STD

TEST_RESIZE = ("stretch", "keep_aspect")
"""How ``test_size`` is applied: resize to exactly [H, W] (the paper's 900x900 as printed), or scale the
frame isotropically to the same pixel count (docs/methods.md, "EGNet", train/test geometry)."""
VARIANTS = ("egnet", "no_egl", "no_es", "concat", "sum", "extra_input", "exposure_attention")
HEADS = ("psp", "conv")
WITH_EXPOSURE_STREAM = ("egnet", "no_egl", "concat", "sum")
GUIDANCE = {"egnet": "attention", "concat": "concat", "sum": "sum", "exposure_attention": "exposure_attention"}
"""Variant -> fusion mode of its guidance layers (variants not listed have none)."""


def exposure_map(image: torch.Tensor, size: tuple[int, int] | torch.Size | None = None) -> torch.Tensor:
    """Return the exposure map [B,1,h,w]: the HSV V = max(R,G,B) of images [B,3,H,W] in [0,1] (EGNet paper,
    Sec. 3-4), area-averaged to `size` (None: the image size). The target of the exposure head's L1 loss."""
    value = hsv_value(image).unsqueeze(1)
    if size is not None and tuple(value.shape[-2:]) != tuple(size):
        value = F.interpolate(value, size=tuple(size), mode="area")
    return value


class ExposureGuidance(nn.Module):
    """One exposure guidance layer: fuses segmentation features f_S with exposure information.

    ``mode``: ``attention`` (Eq. 1, W_r = sigmoid(W * f_E + b)), ``concat`` (1x1 conv of [f_S, f_E],
    initialised to pass f_S through), ``sum`` (w1 f_S + w2 f_E) or ``exposure_attention`` (Eq. 1 with
    W_r = the V map of the input instead of learned features).
    """

    MODES = ("attention", "concat", "sum", "exposure_attention")

    def __init__(self, seg_channels: int, exp_channels: int, mode: str = "attention",
                 w1: float = 1.0, w2: float = 0.3) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if mode == "sum" and seg_channels != exp_channels:
            raise ValueError(f"sum fusion needs equal channels, got {seg_channels} and {exp_channels}")
        self.mode = mode
        self.w1, self.w2 = float(w1), float(w2)
        if mode == "attention":
            self.attention = nn.Conv2d(exp_channels, 1, 1)  # W and b of Eq. 1
        elif mode == "concat":
            self.fuse = nn.Conv2d(seg_channels + exp_channels, seg_channels, 1, bias=False)
            with torch.no_grad():  # start as the identity on f_S (so training starts from the w/o-EGL network)
                self.fuse.weight.zero_()
                self.fuse.weight[:, :seg_channels, 0, 0].copy_(torch.eye(seg_channels))

    def attention_map(self, f_e: torch.Tensor | None = None, exposure: torch.Tensor | None = None) -> torch.Tensor:
        """Return W_r [B,1,h,w]: sigmoid(W * f_E + b) (``attention``) or the V map (``exposure_attention``)."""
        if self.mode == "attention":
            return torch.sigmoid(self.attention(f_e))
        if self.mode == "exposure_attention":
            return exposure
        raise ValueError(f"mode {self.mode!r} has no attention map")

    def forward(self, f_s: torch.Tensor, f_e: torch.Tensor | None = None,
                exposure: torch.Tensor | None = None) -> torch.Tensor:
        """Return the exposure-aware features (Eq. 1 for ``attention`` / ``exposure_attention``).

        `f_e`: the exposure stream's features of the same stage; `exposure`: the V map at f_S's size.
        """
        if self.mode in ("attention", "exposure_attention"):
            return self.w1 * f_s + self.w2 * f_s * self.attention_map(f_e, exposure)
        if self.mode == "concat":
            return self.fuse(torch.cat([f_s, f_e], dim=1))
        return self.w1 * f_s + self.w2 * f_e


class ConvHead(nn.Module):
    """The paper's output layer of the segmentation stream: dropout 0.1 and a 1x1 conv to the classes."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of features[-1]."""
        return self.classifier(self.dropout(features[-1]))


class EGNet(nn.Module):
    """Exposure-Guided Network (EGNet paper, Sec. 4); see the module docstring for the variants."""

    def __init__(self, num_classes: int = 19, depth: int = 101, stages: int = 4, pretrained: bool = False,
                 variant: str = "egnet", head: str = "conv", w1: float = 1.0, w2: float = 0.3,
                 test_size: list[int] | tuple[int, int] | None = None, name: str = "nightseg.models.egnet:EGNet",
                 test_resize: str = "stretch") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if stages < 2:
            raise ValueError(f"EGNet needs at least 2 ResNet stages (1 shared + streamed ones), got {stages}")
        if test_size is not None and (len(test_size) != 2 or min(test_size) < 8):
            raise ValueError(f"test_size must be [H, W] of at least 8 pixels, got {test_size}")
        if test_resize not in TEST_RESIZE:
            raise ValueError(f"test_resize must be one of {', '.join(TEST_RESIZE)}, got {test_resize!r}")
        self.variant = variant
        self.backbone = ResNetBackbone(depth, output_stride=8, stages=stages, pretrained=pretrained)
        channels = self.backbone.channels
        if variant == "extra_input":  # 4-channel stem: the V channel's weights start at zero
            old = self.backbone.stem[0]
            new = nn.Conv2d(4, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
            with torch.no_grad():
                new.weight.zero_()
                new.weight[:, :3].copy_(old.weight)
            self.backbone.stem[0] = new
        # the exposure stream: its own copy of stages 2..N (ImageNet weights too, when pretrained)
        self.exposure_layers = copy.deepcopy(self.backbone.layers[1:]) if variant in WITH_EXPOSURE_STREAM else None
        self.exposure_head = nn.Conv2d(channels[-1], 1, 1) if self.exposure_layers is not None else None
        mode = GUIDANCE.get(variant)
        self.guidance = (nn.ModuleList(ExposureGuidance(c, c, mode, w1, w2) for c in channels[1:])
                         if mode is not None else None)
        self.head = (PyramidPoolingHead(channels[-1], num_classes) if head == "psp"
                     else ConvHead(channels[-1], num_classes))
        self.feature_channels: int = channels[-1]
        self.test_size = tuple(int(s) for s in test_size) if test_size is not None else None
        self.test_resize = test_resize
        self.config = {"name": name, "num_classes": int(num_classes), "variant": variant, "head": head,
                       "w1": float(w1), "w2": float(w2), "test_size": list(self.test_size) if self.test_size else None,
                       "test_resize": test_resize}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def uses_exposure_stream(self) -> bool:
        """Whether the variant has an exposure stream (and so an exposure head and loss)."""
        return self.exposure_layers is not None

    def _streams(self, x: torch.Tensor, with_exposure_head: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Run both streams; return (segmentation features, deepest last; exposure map M_E or None)."""
        inp = (x - self.mean) / self.std
        if self.variant == "extra_input":
            inp = torch.cat([inp, 2.0 * hsv_value(x).unsqueeze(1) - 1.0], dim=1)
        f = self.backbone.layers[0](self.backbone.stem(inp))  # shared stage 1
        features = [f]
        f_s = f_e = f
        run_exposure = self.uses_exposure_stream and (self.guidance is not None or with_exposure_head)
        for i, layer in enumerate(self.backbone.layers[1:]):
            f_s = layer(f_s)
            if run_exposure:
                f_e = self.exposure_layers[i](f_e)
            if self.guidance is not None:
                exposure = exposure_map(x, f_s.shape[-2:]) if self.variant == "exposure_attention" else None
                f_s = self.guidance[i](f_s, f_e if run_exposure else None, exposure)
            features.append(f_s)
        m_e = torch.sigmoid(self.exposure_head(f_e)) if run_exposure and with_exposure_head else None
        return features, m_e

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the (exposure-guided) segmentation features, deepest last, of RGB images in [0, 1]."""
        return self._streams(x, with_exposure_head=False)[0]

    def decode(self, features: list[torch.Tensor], out_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Return logits [B, num_classes, *out_size] (bilinear upsampling of the head's output)."""
        logits = self.head(features)
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
        return logits

    def forward_with_exposure(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (logits at x's size, exposure map M_E [B,1,H/8,W/8] in [0,1] or None): the training pass."""
        features, m_e = self._streams(x, with_exposure_head=True)
        return self.decode(features, x.shape[-2:]), m_e

    def network_size(self, size: tuple[int, int] | torch.Size) -> tuple[int, int]:
        """Return the [H, W] the network sees for a frame of `size` at test time: the frame's own size
        (no ``test_size``), ``test_size`` itself (``stretch``), or the frame scaled by one factor to
        ``test_size``'s pixel count (``keep_aspect``: 1024x512 -> 1273x636 for 900x900)."""
        h, w = int(size[0]), int(size[1])
        if self.test_size is None:
            return h, w
        if self.test_resize == "stretch":
            return self.test_size
        scale = math.sqrt(self.test_size[0] * self.test_size[1] / (h * w))
        return max(8, round(h * scale)), max(8, round(w * scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits at x's size (RGB in [0, 1]); with ``test_size`` the input is resized first
        (`network_size`) and the logits back (the paper tests at 900x900 and scales predictions to the
        frame size)."""
        size = x.shape[-2:]
        target = self.network_size(size)
        if tuple(size) != tuple(target):
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        return self.decode(self.encode(x), size)


def egnet_r101(num_classes: int = 19, pretrained: bool = False, variant: str = "egnet", head: str = "conv",
               w1: float = 1.0, w2: float = 0.3, test_size: list[int] | None = None,
               test_resize: str = "stretch") -> EGNet:
    """Return the paper's EGNet: dilated ResNet-101, stage 1 shared, stages 2-4 in both streams, 3 EGLs."""
    return EGNet(num_classes, 101, 4, pretrained, variant, head, w1, w2, test_size, "nightseg.models.egnet:egnet_r101",
                 test_resize)


def egnet_tiny(num_classes: int = 19, pretrained: bool = False, variant: str = "egnet", head: str = "psp",
               w1: float = 1.0, w2: float = 0.3, test_size: list[int] | None = None,
               test_resize: str = "stretch") -> EGNet:
    """Return the CPU EGNet on `pspnet_tiny`'s encoder: ResNet-18 stage 1 shared, stages 2-3 in both
    streams, 2 EGLs, PSPNet's pyramid pooling head (so ``variant="no_es"`` is exactly `pspnet_tiny`)."""
    return EGNet(num_classes, 18, 3, pretrained, variant, head, w1, w2, test_size, "nightseg.models.egnet:egnet_tiny",
                 test_resize)
