"""HRDA: context-aware high-resolution domain adaptation (Hoyer et al., ECCV 2022), on DAFormer's
self-training (`nightseg.methods.daformer`). The whole training step is `HRDA.training_step` below.

The stream crops are HRDA's *context crops* at full resolution (``data.source.crop``: 1024x1024 of
Cityscapes at 2048x1024). The student is `nightseg.models.hrda.HRDASegmenter` around the configured
segmenter (``model:``); per image it predicts

* the context crop downscaled by ``lr_scale`` (0.5): context logits and the learned scale attention;
* a *detail crop* (``detail_crop``: 512x512) at full resolution, at a random box inside the context crop
  whose corner lies on multiples of ``divisible`` (8 = the decoder's output stride / ``lr_scale``, so the box
  falls on whole cells of the context prediction; `nightseg.models.hrda.detail_box`);
* the fusion ``(1 - a) * context + a * detail`` inside the box, context alone outside (Eq. 6).

Loss (Eq. 7), for the source crop and for the ClassMix crop alike (the latter with the pseudo-label weights):

    L = (1 - lambda_d - lambda_c) * CE(fused, y) + lambda_d * CE(detail, y_box) + lambda_c * CE(context, y)

with ``lambda_d = 0.1`` (``detail_weight``) and ``lambda_c = 0`` (``context_weight``, HRDA's default). The
teacher labels the whole target context crop with the full fusion (detail windows sliding over it, as
HRDA's pseudo labels); the feature distance uses the context branch's features. The checkpoint is the
`HRDASegmenter` (``nightseg.models.hrda:hrda``): validation and ``nightseg predict`` run context + sliding
detail on each image, and ``nightseg predict --window 1024 --stride 512`` adds the outer sliding window over
context crops (`nightseg.inference.Predictor`'s ``SlidingWindow``), as HRDA's test-time inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.methods.base import masked_label
from nightseg.methods.daformer import DAFormer
from nightseg.methods.daformer import Params as DAFormerParams
from nightseg.methods.self_training import pixel_weighted_ce
from nightseg.models.hrda import HRDASegmenter, detail_box, fuse_scales, hrda


@dataclass
class MultiResolutionParams:
    """HRDA's context and detail crops (Sec. 3.2-3.4)."""

    lr_scale: float = 0.5
    """Scale of the context branch's input (HRDA: 0.5)."""
    detail_crop: list[int] = field(default_factory=lambda: [512, 512])
    """Detail crop [H, W] in full-resolution pixels, inside the stream's (context) crop."""
    detail_stride: list[int] = field(default_factory=lambda: [256, 256])
    """Stride of the detail windows when the whole image is predicted (teacher, validation, inference)."""
    divisible: int = 8
    """The detail crop's corner lies on multiples of this (decoder output stride / lr_scale)."""
    detail_weight: float = 0.1
    """lambda_d of Eq. 7."""
    context_weight: float = 0.0
    """lambda_c: weight of the context prediction's own loss (HRDA: 0)."""
    attention: Literal["learned", "average"] = "learned"
    """The learned scale attention, or a fixed 0.5 (HRDA's ablation without learned attention)."""


@dataclass
class Params(DAFormerParams):
    """Keys of the ``method:`` section of an HRDA recipe (DAFormer's plus ``multi_resolution``)."""

    name: str = "hrda"
    multi_resolution: MultiResolutionParams = field(default_factory=MultiResolutionParams)


class HRDA(DAFormer):
    """DAFormer with HRDA's multi-resolution training; see the module docstring."""

    def student_model(self, cfg: Config) -> nn.Module:
        """Return `HRDASegmenter` around ``cfg.model`` (a `build_segmenter` name)."""
        m = cfg.method.multi_resolution
        if ":" in cfg.model.name:
            raise UserError(f"model.name={cfg.model.name}: HRDA wraps a segmenter of build_segmenter by name "
                            "(e.g. daformer_mitb5, pspnet_tiny)")
        if len(m.detail_crop) != 2 or len(m.detail_stride) != 2 or not 0 < m.lr_scale <= 1:
            raise UserError(f"method.multi_resolution: detail_crop/detail_stride must be [H, W] and lr_scale in "
                            f"(0, 1], got {m.detail_crop}, {m.detail_stride}, {m.lr_scale}")
        return hrda(cfg.model.num_classes, cfg.model.pretrained, cfg.model.name, m.lr_scale, m.detail_crop,
                    m.detail_stride, dict(cfg.model.options) or None, m.attention)

    def multi_resolution(self, x: torch.Tensor, gen: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int, int, int], list]:
        """Return ``(fused, detail, context logits, box, context features)`` of the student on context crops `x`."""
        m = self.params.multi_resolution
        model: HRDASegmenter = self.model
        box = detail_box(tuple(x.shape[-2:]), tuple(m.detail_crop), m.divisible, gen)
        y1, y2, x1, x2 = box
        context, attention, features = model.context(x)
        detail = model.segmenter(x[..., y1:y2, x1:x2])
        return fuse_scales(context, attention, detail, box).float(), detail.float(), context.float(), box, features

    def multi_resolution_loss(self, x: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None,
                              gen: torch.Generator) -> tuple[torch.Tensor, list]:
        """Return Eq. 7's loss of the student on context crops `x` and the context branch's features."""
        m = self.params.multi_resolution
        fused, detail, context, (y1, y2, x1, x2), features = self.multi_resolution(x, gen)
        crop_w = weight[:, y1:y2, x1:x2] if weight is not None else None
        loss = (1 - m.detail_weight - m.context_weight) * pixel_weighted_ce(fused, label, weight)
        loss = loss + m.detail_weight * pixel_weighted_ce(detail, label[:, y1:y2, x1:x2], crop_w)
        if m.context_weight:
            loss = loss + m.context_weight * pixel_weighted_ce(context, label, weight)
        return loss, features

    # ---- the training step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        p = self.params
        source, label_s = batch["source"]["image"], masked_label(batch["source"])
        gen = self.step_generator()
        target, truth = self.target_crop(batch, source.shape[-2:], gen)
        if any(c > s for c, s in zip(p.multi_resolution.detail_crop, source.shape[-2:])):
            raise UserError(f"method.multi_resolution.detail_crop={p.multi_resolution.detail_crop} is larger than "
                            f"the source crop {list(source.shape[-2:])}")

        # 1. teacher update; multi-resolution source loss (+ feature distance on the context branch)
        alpha = self.update_teacher()
        loss_source, features = self.multi_resolution_loss(source, label_s, None, gen)
        terms: dict[str, torch.Tensor] = {}
        loss_fd = source.new_zeros(())
        if self.imnet is not None:
            small = torch.nn.functional.interpolate(source, scale_factor=p.multi_resolution.lr_scale,
                                                    mode="bilinear", align_corners=False)
            loss_fd = self.feature_distance(small, features[-1], label_s)
            terms["fd"] = loss_fd

        # 2. teacher pseudo labels from its full fusion over the target context crop; ClassMix at full resolution
        label_t, weight_t = self.pseudo_labels(target)
        mixed, mixed_label, mixed_weight, mask = self.mix(source, label_s, target, label_t, weight_t, gen)

        # 3. multi-resolution loss on the mixed crop, pseudo-label weighted
        loss_mix, _ = self.multi_resolution_loss(mixed, mixed_label, mixed_weight, gen)

        total = loss_source + loss_fd + p.mix_weight * loss_mix
        return self.log_losses(total, source=loss_source, mix=loss_mix, mix_share=mask.float().mean(),
                               alpha=alpha, **terms, **self.pseudo_label_terms(label_t, weight_t, truth))


def build(cfg: Config) -> HRDA:
    """Return the HRDA LightningModule for `cfg`."""
    return HRDA(cfg)


__all__ = ["HRDA", "MultiResolutionParams", "Params", "build"]
