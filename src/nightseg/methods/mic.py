"""MIC: Masked Image Consistency (Hoyer et al., CVPR 2023) on top of DAFormer (`nightseg.methods.daformer`).
The whole training step is `MIC.training_step` below.

    L = CE(f(x_S), y_S) + lambda_FD L_FD + lambda_mix L_mix + lambda_m * sum_i q_i CE(f(x_M), y~_T)_i / (H W B)

The DAFormer terms are unchanged. MIC adds (Sec. 3.2, Eq. 4-6): the target image, colour-jittered and
blurred as DACS's mixed images (MIC's ``mask_mode: separatetrgaug``), is masked by random ``b x b`` patches
(``b = 64``, a share ``r = 0.7`` of the patches dropped; `nightseg.methods.self_training.block_mask`), and the
student must predict on it the teacher's pseudo label of the complete image, weighted by the same
confidence weight ``q`` (``lambda_m = 1``). The patch grid starts at the top-left corner, so every mask edge
falls on a multiple of ``b`` (MIC's code rounds ``H / b`` and resizes; the two agree when b divides the crop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.data.photometric import mix_augment
from nightseg.methods.base import masked_label
from nightseg.methods.daformer import DAFormer
from nightseg.methods.daformer import Params as DAFormerParams
from nightseg.methods.self_training import block_mask, pixel_weighted_ce


@dataclass
class MaskingParams:
    """Masked image consistency (MIC Sec. 3.2)."""

    enabled: bool = True
    patch: int = 64
    """Patch size b in pixels."""
    ratio: float = 0.7
    """Mask ratio r: the expected share of dropped patches."""
    weight: float = 1.0
    """lambda_m."""
    augment: bool = True
    """Colour jitter + blur of the target image before masking (MIC's ``separatetrgaug``)."""


@dataclass
class Params(DAFormerParams):
    """Keys of the ``method:`` section of a MIC recipe (DAFormer's plus ``masking``)."""

    name: str = "mic"
    masking: MaskingParams = field(default_factory=MaskingParams)


class MIC(DAFormer):
    """DAFormer plus masked image consistency; see the module docstring."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        m = self.params.masking
        if m.patch < 1 or not 0.0 <= m.ratio < 1.0:
            raise UserError(f"method.masking: patch must be >= 1 and ratio in [0, 1), got {m.patch} and {m.ratio}")

    def masked_loss(self, target: torch.Tensor, label: torch.Tensor, weight: torch.Tensor,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return lambda_m * the MIC loss (Eq. 6) of target images against the teacher's label and weight,
        and the mask used."""
        m = self.params.masking
        image = mix_augment(target, gen, self.augment) if m.augment else target
        mask = block_mask((target.shape[0], *target.shape[-2:]), m.patch, m.ratio, gen, target.device)
        loss = pixel_weighted_ce(self.segment(image * mask.to(image.dtype)), label, weight)
        return m.weight * loss, mask

    # ---- the training step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        p = self.params
        source, label_s = batch["source"]["image"], masked_label(batch["source"])
        gen = self.step_generator()
        target, truth = self.target_crop(batch, source.shape[-2:], gen)

        # 1-2. DAFormer: teacher update, source loss + feature distance
        alpha = self.update_teacher()
        features = self.model.encode(source)
        loss_source = pixel_weighted_ce(self.model.decode(features, source.shape[-2:]), label_s)
        terms: dict[str, torch.Tensor] = {}
        loss_fd = source.new_zeros(())
        if self.imnet is not None:
            loss_fd = self.feature_distance(source, features[-1], label_s)
            terms["fd"] = loss_fd

        # 3. DAFormer: teacher pseudo labels, ClassMix, confidence weight, augmentation, mixed loss
        label_t, weight_t = self.pseudo_labels(target)
        mixed, mixed_label, mixed_weight, mask = self.mix(source, label_s, target, label_t, weight_t, gen)
        loss_mix = pixel_weighted_ce(self.segment(mixed), mixed_label, mixed_weight)

        # 4. MIC: the masked target image against the teacher's label of the complete one
        loss_masked = source.new_zeros(())
        if p.masking.enabled:
            loss_masked, keep = self.masked_loss(target, label_t, weight_t, gen)
            terms.update(masked=loss_masked, masked_share=1.0 - keep.mean())

        total = loss_source + loss_fd + p.mix_weight * loss_mix + loss_masked
        return self.log_losses(total, source=loss_source, mix=loss_mix, mix_share=mask.float().mean(),
                               alpha=alpha, **terms, **self.pseudo_label_terms(label_t, weight_t, truth))


def build(cfg: Config) -> MIC:
    """Return the MIC LightningModule for `cfg`."""
    return MIC(cfg)


__all__ = ["MIC", "MaskingParams", "Params", "build"]
