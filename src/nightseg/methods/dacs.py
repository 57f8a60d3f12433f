"""DACS: Domain Adaptation via Cross-domain mixed Sampling (Tranheden et al., WACV 2021). The whole training
step is `DACS.training_step` below; DAFormer, MIC and HRDA (`nightseg.methods.daformer`, ``mic``, ``hrda``)
reuse its building blocks.

Each step takes a labelled source batch (``batch["source"]``) and an unlabelled target batch
(``batch["target"]``: its ``image``, or the ``night`` image of a day/night pair stream) and computes

    L = CE(f(x_S), y_S) + lambda_mix * sum_i q_i * CE(f(x_M), y_M)_i / (H W B)

1. **Mean teacher** (`nightseg.methods.teacher`): the EMA teacher is updated from the student
   (``alpha_t = min(1 - 1/(t+1), alpha)``, alpha 0.99) and labels the target images:
   ``y~_T = argmax g(x_T)`` with confidence ``max softmax g(x_T)``.
2. **Source loss**: cross-entropy on the source crop.
3. **ClassMix** (Sec. 3.2, Eq. 1): half of the classes present in each source label are pasted onto the
   target image; the mixed label takes ``y_S`` there and ``y~_T`` elsewhere.
4. **Confidence weight** (Sec. 3.3): pasted source pixels weigh 1, target pixels ``q`` = the share of
   the batch's target pixels whose teacher confidence is at least 0.968.
5. **Augmentation** of the mixed image: colour jitter and Gaussian blur (`nightseg.data.photometric.mix_augment`).

Every component has a switch (``method.classmix.enabled`` off = plain pseudo-labelling of the augmented
target image, ``pseudo_label.confidence_weight`` off = weight 1, ``augment.enabled``, ``teacher.alpha`` 0 =
the student labels itself), so the paper's ablations are configs. A target crop larger than the source
crop is cut at a random position to the source size (as ULCA's NightMix does). Choices are in
``docs/methods.md`` ("Self-training").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nightseg.core.checkpoint import load_segmenter_weights
from nightseg.core.classes import class_ids
from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.data.photometric import MixAugmentConfig, mix_augment
from nightseg.methods.base import SegmentationModule, masked_label
from nightseg.methods.nightmix import match_size
from nightseg.methods.self_training import (
    classmix,
    confidence_weight,
    pixel_weighted_ce,
    pseudo_label_accuracy,
)
from nightseg.methods.teacher import MeanTeacher, TeacherParams


# --------------------------------------------------------------------------------------------- config
@dataclass
class ClassMixParams:
    """ClassMix of source classes onto target images (DACS Sec. 3.2)."""

    enabled: bool = True
    exclude: list[str] = field(default_factory=list)
    """Classes never pasted (DACS pastes any class of the source label; ULCA's NightMix leaves out road,
    vegetation, sky)."""


@dataclass
class PseudoLabelParams:
    """The teacher's pseudo labels and their weight (DACS Sec. 3.3; DAFormer Eq. 6)."""

    threshold: float = 0.968
    confidence_weight: bool = True
    """Weight target pixels by the share of confident pixels (false: weight 1)."""
    ignore_top: int = 0
    """Rows at the top of the target crop whose pseudo label gets weight 0 (DAFormer: 15 for Cityscapes)."""
    ignore_bottom: int = 0
    """Rows at the bottom with weight 0 (DAFormer: 120 for Cityscapes' ego car)."""


@dataclass
class AugmentParams:
    """Colour jitter and Gaussian blur of the mixed images (see `MixAugmentConfig`)."""

    enabled: bool = True
    jitter_p: float = 0.8
    strength: float = 0.25
    """ColorJitter strength s (DACS: 0.25; DAFormer: 0.2)."""
    blur: bool = True
    blur_p: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.15, 1.15])


@dataclass
class Params:
    """Keys of the ``method:`` section of a DACS recipe (see ``configs/dacs.yaml``)."""

    name: str = "dacs"
    init_checkpoint: str | None = None
    """Start the student (and so the teacher) from this NightSeg checkpoint, e.g. a source-only run."""
    mix_weight: float = 1.0
    """lambda_mix of the mixed (pseudo-labelled) loss."""
    teacher: TeacherParams = field(default_factory=TeacherParams)
    classmix: ClassMixParams = field(default_factory=ClassMixParams)
    pseudo_label: PseudoLabelParams = field(default_factory=PseudoLabelParams)
    augment: AugmentParams = field(default_factory=AugmentParams)


def target_image(batch: dict[str, Any], recipe: str) -> torch.Tensor:
    """Return the unlabelled target images of a batch: ``target.image``, or ``target.night`` of a pair stream."""
    if "target" not in batch:
        raise UserError(f"{recipe}: self-training needs data.target (unlabelled target images, e.g. dark_zurich "
                        "split train or dark_zurich_pairs)")
    target = batch["target"]
    return target["image"] if "image" in target else target["night"]


# --------------------------------------------------------------------------------------------- module
class DACS(SegmentationModule):
    """The DACS training recipe; see the module docstring. Subclasses reuse the building blocks."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, self.student_model(cfg))
        p = cfg.method
        self.params = p
        self.before_init_checkpoint()
        if p.init_checkpoint:
            load_segmenter_weights(self.model, p.init_checkpoint)
        try:
            self.teacher = MeanTeacher(self.model, p.teacher)
        except ValueError as exc:
            raise UserError(f"method.teacher.alpha: {exc}") from None
        try:
            excluded = set(class_ids(p.classmix.exclude))
        except ValueError as exc:
            raise UserError(f"method.classmix.exclude: {exc}") from None
        self.mix_classes = [c for c in range(self.num_classes) if c not in excluded]
        a = p.augment
        if len(a.blur_sigma) != 2:
            raise UserError(f"method.augment.blur_sigma: expected [lo, hi], got {a.blur_sigma}")
        self.augment = MixAugmentConfig(jitter_p=a.jitter_p, strength=a.strength,
                                        blur_p=a.blur_p if a.blur else 0.0, blur_sigma=tuple(a.blur_sigma))

    def student_model(self, cfg: Config) -> nn.Module | None:
        """Hook: the student network (None: ``model:`` as configured; HRDA wraps it)."""
        return None

    def before_init_checkpoint(self) -> None:
        """Hook run after the model is built and before ``init_checkpoint`` loads (DAFormer copies its
        ImageNet encoder here)."""

    # ---- building blocks
    def step_generator(self) -> torch.Generator:
        """Return a CPU generator for this step's random choices, seeded from the global RNG (re-seeded by
        the engine from (seed, step, rank) before every step, so a resumed run draws the same)."""
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))

    def update_teacher(self) -> torch.Tensor:
        """Average the student into the teacher for this step (before any pseudo label); return alpha_t."""
        return torch.tensor(self.teacher.update(self.model, self.global_step))

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Return the student's logits (float) at the size of `x`."""
        return self.model(x).float()

    def pseudo_labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the teacher's pseudo label ``[B,H,W]`` and its pixel weight ``[B,H,W]`` for target images `x`."""
        probs = self.teacher.predict(x).softmax(dim=1)
        return self.weighted_labels(probs)

    def teacher_label(self, image: torch.Tensor) -> torch.Tensor:
        """Return the teacher's pseudo label of validation images (as `pseudo_labels` labels target crops)."""
        return self.pseudo_labels(image)[0]

    def weighted_labels(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(argmax label, weight)`` of teacher probabilities ``[B,C,H,W]`` (confidence weight or ones)."""
        pl = self.params.pseudo_label
        label = probs.argmax(dim=1)
        if pl.confidence_weight:
            weight = confidence_weight(probs, pl.threshold, pl.ignore_top, pl.ignore_bottom)
        else:
            weight = torch.ones_like(label, dtype=torch.float32)
        return label, weight

    def mix(self, source: torch.Tensor, source_label: torch.Tensor, target: torch.Tensor, label: torch.Tensor,
            weight: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
        """Return ``(image, label, pixel weight, mask)`` of the ClassMix of source onto target (weight 1 on
        pasted pixels), the image colour-jittered and blurred; without ClassMix the target alone."""
        if self.params.classmix.enabled:
            mixed, mixed_label, mask = classmix(source, source_label, target, label, self.mix_classes, gen)
            mixed_weight = torch.where(mask, torch.ones_like(weight), weight)
        else:
            mixed, mixed_label, mixed_weight = target, label, weight
            mask = torch.zeros_like(label, dtype=torch.bool)
        if self.params.augment.enabled:
            mixed = mix_augment(mixed, gen, self.augment)
        return mixed, mixed_label, mixed_weight, mask

    def target_crop(self, batch: dict[str, Any], size: torch.Size, gen: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the target images cut (or resized) to the source crop `size` so that they can be mixed, and
        their ground truth cut alike when the stream has one (only for logging the pseudo labels' accuracy)."""
        image = target_image(batch, self.cfg.recipe)
        target = batch["target"]
        truth = masked_label(target) if "label" in target and target["label"].shape[-2:] == image.shape[-2:] else None
        if image.shape[-2:] == size:
            return image, truth
        dummy = torch.zeros(image.shape[0], *image.shape[-2:], dtype=torch.long, device=image.device)
        image, cut = match_size(image, truth if truth is not None else dummy, tuple(size), gen)
        return image, cut if truth is not None else None

    def pseudo_label_terms(self, label: torch.Tensor, weight: torch.Tensor, truth: torch.Tensor | None
                           ) -> dict[str, torch.Tensor]:
        """Return the logged pseudo-label statistics: the mean weight and, when the target stream is labelled
        (the synthetic benchmark), the accuracy overall and per class (`pseudo_label_accuracy`)."""
        return {"pl_weight": weight.mean(), **pseudo_label_accuracy(label, truth)}

    # ---- the training step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        p = self.params
        source, label_s = batch["source"]["image"], masked_label(batch["source"])
        gen = self.step_generator()
        target, truth = self.target_crop(batch, source.shape[-2:], gen)

        # 1. teacher update, then the source loss
        alpha = self.update_teacher()
        loss_source = pixel_weighted_ce(self.segment(source), label_s)

        # 2. teacher pseudo labels on the target crop (cut to the source size for mixing)
        label_t, weight_t = self.pseudo_labels(target)

        # 3. ClassMix + confidence weight + colour jitter / blur, and the mixed loss
        mixed, mixed_label, mixed_weight, mask = self.mix(source, label_s, target, label_t, weight_t, gen)
        loss_mix = pixel_weighted_ce(self.segment(mixed), mixed_label, mixed_weight)

        total = loss_source + p.mix_weight * loss_mix
        return self.log_losses(total, source=loss_source, mix=loss_mix, mix_share=mask.float().mean(),
                               alpha=alpha, **self.pseudo_label_terms(label_t, weight_t, truth))


def build(cfg: Config) -> DACS:
    """Return the DACS LightningModule for `cfg`."""
    return DACS(cfg)


__all__ = ["DACS", "Params", "build", "target_image"]
