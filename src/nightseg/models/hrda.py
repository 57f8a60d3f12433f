"""HRDA's multi-resolution segmenter (Hoyer et al., ECCV 2022, Sec. 3.2-3.4): a low-resolution context
prediction, a high-resolution detail prediction and a learned scale attention that fuses the two.

For an image (a context crop) ``x_c`` at full resolution:

* context branch: ``x_c`` downscaled by ``lr_scale`` (0.5) -> segmenter -> logits ``y_c`` and, from the same
  encoder features, a second decoder (the *scale attention* head, class-wise as HRDA's default) ->
  ``a_c = sigmoid(f_A(x_c))``;
* detail branch: the segmenter on a full-resolution detail crop ``x_d`` (training: one crop inside the
  context crop, `detail_box`; inference: detail windows that slide over the whole image and are averaged);
* fusion (Eq. 6): ``y_F = (1 - a') * up(y_c) + a' * y_d`` where ``a' = up(a_c)`` inside the detail crop and 0
  outside it (so pixels without a detail prediction keep the context prediction).

Everything is fused at the image's full resolution (HRDA fuses at its decoder's output stride and applies
the crop mask before upsampling; at full resolution the box edges are exact). ``hrda(...)`` is the
``module:factory`` the checkpoints name, so `nightseg predict` rebuilds it; with ``--window`` the predictor's
sliding window runs it over context-sized windows, as HRDA's test-time sliding inference does.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nightseg.models.segmenters import build_segmenter


def detail_box(size: tuple[int, int], crop: tuple[int, int], divisible: int = 1,
               generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """Return a random detail-crop box ``(y1, y2, x1, x2)`` of size `crop` inside an image of `size`, its corner on
    multiples of `divisible` (HRDA's ``get_crop_bbox``: offset ``randint((margin + 1) // divisible) * divisible``)."""
    (h, w), (ch, cw) = size, crop
    if ch > h or cw > w:
        raise ValueError(f"detail crop {crop} is larger than the context crop {size}")
    d = max(1, int(divisible))
    y = int(torch.randint(max(1, (h - ch + 1) // d), (1,), generator=generator)) * d
    x = int(torch.randint(max(1, (w - cw + 1) // d), (1,), generator=generator)) * d
    return y, y + ch, x, x + cw


def fuse_scales(context: torch.Tensor, attention: torch.Tensor, detail: torch.Tensor,
                box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Return ``(1 - a') * context + a' * detail`` (HRDA Eq. 6) for `context` logits and `attention` ``[B,C|1,H,W]``
    at full resolution and `detail` logits of the `box` ``(y1, y2, x1, x2)`` (the whole image when None);
    ``a'`` is `attention` inside the box and 0 outside."""
    if box is None:
        return (1 - attention) * context + attention * detail
    y1, y2, x1, x2 = box
    inside = torch.zeros_like(attention[:, :1])
    inside[..., y1:y2, x1:x2] = 1
    a = attention * inside
    placed = context.new_zeros(context.shape)
    placed[..., y1:y2, x1:x2] = detail
    return (1 - a) * context + a * placed


def reset_parameters(module: nn.Module) -> nn.Module:
    """Re-initialise every layer of `module` that can (a fresh copy of a decoder)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


class HRDASegmenter(nn.Module):
    """A segmenter with HRDA's context branch, detail branch and scale attention; see the module docstring."""

    def __init__(self, segmenter: nn.Module, config: dict[str, Any], lr_scale: float = 0.5,
                 detail_crop: list[int] | None = None, detail_stride: list[int] | None = None,
                 attention: str = "learned") -> None:
        super().__init__()
        if not hasattr(segmenter, "head") or not hasattr(segmenter, "encode"):
            raise ValueError("HRDA needs an encoder-decoder segmenter (with encode() and head)")
        self.segmenter = segmenter
        self.attention = reset_parameters(copy.deepcopy(segmenter.head))
        self.lr_scale = float(lr_scale)
        self.detail_crop = tuple(detail_crop) if detail_crop else None
        self.detail_stride = tuple(detail_stride) if detail_stride else self.detail_crop
        if attention not in ("learned", "average"):
            raise ValueError(f"HRDA attention must be 'learned' or 'average', got {attention!r}")
        self.learned = attention == "learned"  # "average": a = 0.5, HRDA's ablation without learned attention
        self.attention.requires_grad_(self.learned)  # unused then: no optimizer (or DDP) waits for its gradients
        self.config = dict(config)

    # the encoder, for recipes that look at it (DAFormer's feature distance, per-group learning rates)
    @property
    def backbone(self) -> nn.Module:
        return self.segmenter.backbone

    @property
    def mean(self) -> torch.Tensor:
        return self.segmenter.mean

    @property
    def std(self) -> torch.Tensor:
        return self.segmenter.std

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the segmenter's encoder features of `x`."""
        return self.segmenter.encode(x)

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Return the context logits and attention of full-resolution images `x`, both upsampled to the size of
        `x`, and the encoder features of the downscaled image (``lr_scale``)."""
        size = x.shape[-2:]
        small = F.interpolate(x, scale_factor=self.lr_scale, mode="bilinear", align_corners=False)
        features = self.segmenter.encode(small)
        logits = self.segmenter.decode(features, size)
        if self.learned:
            attention = torch.sigmoid(F.interpolate(self.attention(features), size=size, mode="bilinear",
                                                    align_corners=False))
        else:
            attention = torch.full_like(logits[:, :1], 0.5)
        return logits, attention, features

    def detail(self, x: torch.Tensor) -> torch.Tensor:
        """Return full-resolution logits of the whole of `x` from detail windows (``detail_crop`` sliding by
        ``detail_stride``, overlaps averaged, as HRDA's ``hr_slide_inference``), or of `x` in one pass."""
        if self.detail_crop is None or tuple(x.shape[-2:]) == self.detail_crop:
            return self.segmenter(x)
        (h, w), (ch, cw), (sh, sw) = x.shape[-2:], self.detail_crop, self.detail_stride
        ch, cw = min(ch, h), min(cw, w)
        ys = sorted({*range(0, max(h - ch, 0) + 1, sh), max(h - ch, 0)})
        xs = sorted({*range(0, max(w - cw, 0) + 1, sw), max(w - cw, 0)})
        total = count = None
        for y in ys:
            for x0 in xs:
                out = self.segmenter(x[..., y:y + ch, x0:x0 + cw])
                if total is None:
                    total = out.new_zeros(*out.shape[:2], h, w)
                    count = out.new_zeros(1, 1, h, w)
                total[..., y:y + ch, x0:x0 + cw] += out
                count[..., y:y + ch, x0:x0 + cw] += 1
        return total / count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the fused logits of images `x` (RGB in [0, 1]) at their size: context + detail everywhere."""
        logits, attention, _ = self.context(x)
        return fuse_scales(logits, attention, self.detail(x))


def hrda(num_classes: int = 19, pretrained: bool = False, segmenter: str = "daformer_mitb5", lr_scale: float = 0.5,
         detail_crop: list[int] | None = None, detail_stride: list[int] | None = None,
         segmenter_options: dict | None = None, attention: str = "learned") -> HRDASegmenter:
    """Return HRDA's multi-resolution network around the segmenter `segmenter` (a `build_segmenter` name)."""
    inner = build_segmenter(segmenter, num_classes=num_classes, pretrained=pretrained, **(segmenter_options or {}))
    config = {"name": "nightseg.models.hrda:hrda", "num_classes": int(num_classes), "segmenter": segmenter,
              "lr_scale": float(lr_scale), "detail_crop": list(detail_crop) if detail_crop else None,
              "detail_stride": list(detail_stride) if detail_stride else None}
    if segmenter_options:
        config["segmenter_options"] = dict(segmenter_options)
    if attention != "learned":
        config["attention"] = attention
    return HRDASegmenter(inner, config, lr_scale, detail_crop, detail_stride, attention)


__all__ = ["HRDASegmenter", "detail_box", "fuse_scales", "hrda"]
