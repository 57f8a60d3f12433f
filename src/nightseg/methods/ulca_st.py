"""ULCA with a mean teacher (``ulca_st``): ULCA's relighting, static loss, NightMix and cross attention
(`nightseg.methods.ulca`), plus the teacher's confidence-weighted pseudo labels on the night image for every
class. The whole training step is `ULCAST.training_step` below; the design and why are in
``docs/methods.md`` ("ULCA with a mean teacher").

ULCA supervises the night image only through the static classes (L_static) and through NightMix, whose
night part is labelled by the *student's own* day-corrected prediction at weight beta1 = 0.04; nothing
teaches the dynamic classes at night. Here an EMA teacher (`nightseg.methods.teacher`, alpha 0.99) labels
the relit night image B_n, with cross attention to its own features of the day image B_d:

    L = L_seg + L_static + lambda_st * L_st [+ beta1 * L_mix] [+ beta2 * L_kl]

* **Teacher label** (``self_training.label``): ``teacher_dannet`` (default) corrects the teacher's static
  channels by its day prediction exactly as ULCA corrects the student's (DANNet's fusion,
  `nightseg.methods.pseudo_label`), the dynamic channels staying the teacher's night prediction; ``teacher``
  takes the teacher's night argmax alone.
* **Weight** (``self_training.weighting``): ``share`` (default) is DACS's confidence weight ``q`` (share of night
  pixels whose teacher confidence is >= 0.968) on every pixel; ``pixel`` keeps the teacher's label only on
  those confident pixels, at weight 1, and ignores the rest, so the teacher's unconfident and mostly wrong
  labels (night buses called building or car) are not trained at all; ``confidence_weight: false``: 1.
* **Input** (``self_training.input``): ``nightmix`` (default) is ULCA's NightMix image (A's hard classes pasted
  on B_n) labelled with L_A where pasted (weight 1) and the teacher's label elsewhere (weight q), colour-
  jittered and blurred as DACS's, at ``lambda_st = 1``; it replaces ULCA's student-labelled L_mix (which is
  then off). ``night`` trains on the colour-jittered B_n itself (cross attention to the day features) and
  keeps ULCA's L_mix as configured.
* **Paste style** (``self_training.paste_style``, NightMix input only): ``day`` pastes A's objects as
  they are; ``fda`` first gives A the low-frequency amplitude of the night image (FDA), so the truly labelled
  pasted objects carry the night's brightness and colour cast (the dynamic classes are the ones no teacher
  labels at night); ``translate`` renders A at night with a frozen day->night CycleGAN generator
  (``self_training.translator``: a ``nightseg translate train`` checkpoint, trained on the same unpaired day and
  night frames), which can also change saturation and texture, before relighting and pasting; ``jitter`` gives
  every class of the relit A its own colour jitter (``self_training.paste_jitter``, saturation down to grey and
  brightness up to 1.5x: `nightseg.data.photometric.region_jitter`; the default), so that no pasted object
  can be told by its day colours, and a grey, lit night bus is among the appearances a pasted bus takes.
* **Always pasted** (``self_training.always_paste``, NightMix input only; default person, rider, bus, train,
  motorcycle, bicycle): classes pasted whenever A has them, the random half being drawn from A's other hard classes, so that the classes the teacher does
  not label at night (bus, train, person) get their truly labelled night examples on every step that has them.
* The static loss, its day-corrected label, the consistency term and the cross attention are ULCA's.

The defaults (``jitter`` with those six classes always pasted) are the design that closed 81.5 % of the
source-to-oracle gap over three seeds on the synthetic benchmark, against 73.5 % for ``jitter`` alone and
63.2 % for full ULCA; ``paste_style: day`` with ``always_paste: []`` is the first design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from nightseg.core.classes import IGNORE_INDEX, class_ids
from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.data.photometric import (
    MixAugmentConfig,
    RegionJitterConfig,
    fourier_style,
    mix_augment,
    region_jitter,
    strong_augment,
    weak_augment,
)
from nightseg.losses.segmentation import consistency_kl, static_loss, weighted_cross_entropy
from nightseg.methods.base import masked_label
from nightseg.methods.nightmix import match_size, nightmix
from nightseg.methods.pseudo_label import fuse_day_night, pseudo_label
from nightseg.methods.self_training import (
    confidence_mask,
    confidence_weight,
    pixel_weighted_ce,
    pseudo_label_accuracy,
)
from nightseg.methods.teacher import MeanTeacher, TeacherParams
from nightseg.methods.ulca import ULCA
from nightseg.methods.ulca import Params as ULCAParams
from nightseg.models.translator import load_translator

ALWAYS_PASTED = ("person", "rider", "bus", "train", "motorcycle", "bicycle")
"""The default ``always_paste``: the dynamic classes whose night recall in the teacher averaged under 20 % over
the ``paste_style: jitter`` fine-tunes of the synthetic benchmark (docs/methods.md)."""


@dataclass
class PasteJitterParams:
    """``paste_style: jitter``: the ranges of each pasted class's colour jitter (`RegionJitterConfig`)."""

    brightness: list[float] = field(default_factory=lambda: [0.6, 1.5])
    contrast: list[float] = field(default_factory=lambda: [0.6, 1.4])
    saturation: list[float] = field(default_factory=lambda: [0.0, 1.2])
    hue: float = 0.1


@dataclass
class SelfTrainingParams:
    """The teacher-labelled night term L_st."""

    enabled: bool = True
    weight: float = 1.0
    """lambda_st."""
    input: Literal["nightmix", "night"] = "nightmix"
    label: Literal["teacher_dannet", "teacher"] = "teacher_dannet"
    threshold: float = 0.968
    confidence_weight: bool = True
    weighting: Literal["share", "pixel"] = "share"
    """``share``: DACS's q on every teacher-labelled pixel; ``pixel``: the label kept where the teacher's night
    confidence is >= ``threshold`` (weight 1) and ignored elsewhere (`confidence_mask`)."""
    augment: bool = True
    """Colour jitter + blur of the input (DACS's), strength `strength`."""
    strength: float = 0.25
    paste_style: Literal["day", "fda", "translate", "jitter"] = "jitter"
    """NightMix input only: paste A's objects as they are (``day``), night-styled first with FDA, the low
    frequencies of the night image's amplitude spectrum (``fda``, `nightseg.data.photometric.fourier_style`),
    or rendered at night by the day->night generator of ``translator`` (``translate``), before relighting, so
    that the pasted, truly labelled objects look like night objects; or, after relighting, colour-jittered
    class by class (``jitter``, ranges in ``paste_jitter``), so that their colours stop telling their class."""
    fda_beta: float = 0.05
    translator: str | None = None
    """``paste_style: translate``: ``translator.safetensors`` of ``nightseg translate train`` (its ``G_day2night``
    is used, frozen; relative paths from the current directory)."""
    paste_jitter: PasteJitterParams = field(default_factory=PasteJitterParams)
    always_paste: list[str] = field(default_factory=lambda: list(ALWAYS_PASTED))
    """NightMix input only: classes pasted whenever A has them (the random half is drawn from A's other hard
    classes): the classes the teacher does not label at night get their truly labelled night examples on
    every step that has them, not on half of them. ``[]``: ClassMix's draws."""


@dataclass
class Params(ULCAParams):
    """Keys of the ``method:`` section of ``ulca_st``: ULCA's plus ``teacher`` and ``self_training``."""

    name: str = "ulca_st"
    teacher: TeacherParams = field(default_factory=TeacherParams)
    self_training: SelfTrainingParams = field(default_factory=SelfTrainingParams)


class ULCAST(ULCA):
    """ULCA plus mean-teacher self-training on the night image; see the module docstring."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        try:
            self.teacher = MeanTeacher(self.model, cfg.method.teacher)
        except ValueError as exc:
            raise UserError(f"method.teacher.alpha: {exc}") from None
        st = cfg.method.self_training
        self.mix_aug = MixAugmentConfig(strength=st.strength)
        jitter = st.paste_jitter
        self.paste_jitter = RegionJitterConfig(tuple(jitter.brightness), tuple(jitter.contrast),
                                               tuple(jitter.saturation), jitter.hue)
        # frozen like the relighting net (requires_grad=False, no_grad); instance norm without running statistics
        # and no dropout, so train mode changes nothing and follows the module's. Training state only:
        # `export_tensors` is ULCA's (segmenter + relighting net).
        self.translator = None
        if st.paste_style == "translate":
            if not st.translator:
                raise UserError("method.self_training.paste_style=translate needs method.self_training.translator: "
                                "the translator.safetensors of `nightseg translate train` (day and night frames)")
            self.translator = load_translator(st.translator, "day2night").train()
        try:
            self.always_paste = class_ids(st.always_paste)
        except ValueError as exc:
            raise UserError(f"method.self_training.always_paste: {exc}") from None
        if cfg.method.consistency.shared_forward != "weak":
            raise UserError(f"method.consistency.shared_forward={cfg.method.consistency.shared_forward}: ulca_st "
                            "implements ULCA's default 'weak' only")

    def teacher_label(self, image: torch.Tensor) -> torch.Tensor:
        """Return the teacher's night label of relit validation images. Validation has no day image, so this
        is the dynamic-class half of the training label (its static classes are day-corrected in training)."""
        return self.teacher.predict(self.relit(image)).argmax(dim=1)

    def teacher_labels(self, relit_night: torch.Tensor, relit_day: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the teacher's night label ``[B,H,W]`` (all classes) and its confidence weight ``[B,H,W]``."""
        p = self.params
        st, pl = p.self_training, p.pseudo_label
        with self.teacher.frozen() as net:
            size = relit_night.shape[-2:]
            day_features = net.encode(relit_day)
            logits_day = net.decode(day_features, relit_day.shape[-2:]).float()
            if p.cross_attention.enabled:
                features = net.encode(relit_night)
                features[-1] = net.attention(features[-1], day_features[-1])
                logits_night = net.decode(features, size).float()
            else:
                logits_night = net(relit_night).float()
        probs = logits_night.softmax(dim=1)
        if st.label == "teacher_dannet":
            fused = fuse_day_night(logits_day, logits_night, pl.mode, self.static_classes, pl.space, pl.threshold,
                                   pl.high, pl.low)
            label = pseudo_label(fused, self.pl_weight)
        else:
            label = probs.argmax(dim=1)
        if st.confidence_weight and st.weighting == "pixel":
            label = confidence_mask(label, probs, st.threshold)
            weight = torch.ones_like(label, dtype=torch.float32)
        elif st.confidence_weight:
            weight = confidence_weight(probs, st.threshold)
        else:
            weight = torch.ones_like(label, dtype=torch.float32)
        return label, weight

    # ---- the training step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        p = self.params
        st = p.self_training
        if "target" not in batch:
            raise UserError(f"{self.cfg.recipe}: ulca_st needs data.target (day/night pairs, e.g. dark_zurich_pairs)")
        image_a, label_a = batch["source"]["image"], masked_label(batch["source"])
        night, day = batch["target"]["night"], batch["target"]["day"]
        gen = self.step_generator()
        zero = image_a.new_zeros(())
        terms: dict[str, torch.Tensor] = {}

        # 0. teacher update (EMA of the whole student, cross attention included)
        terms["alpha"] = torch.tensor(self.teacher.update(self.model, self.global_step))

        # 1. frozen relighting (B_n weakly augmented when it doubles as the consistency's weak branch)
        share = "weak" if p.consistency.enabled else "none"
        relit_a, relit_day, relit_clean = self.relit(image_a), self.relit(day), self.relit(night)
        relit_night = relit_clean if share == "none" else self.relit(weak_augment(night, gen, self.weak))

        # 2. L_seg on A (Eq. 5-6)
        loss_seg = weighted_cross_entropy(self.segment(relit_a, policy=p.cross_attention.unpaired).float(),
                                          label_a, self.seg_weight, p.ce_normalization)
        terms["seg"] = loss_seg

        # 3. student's day (no gradient) and night (cross attention) predictions; ULCA's static label
        with torch.no_grad():
            day_features = self.model.encode(relit_day)
            logits_day = self.model.decode(day_features, relit_day.shape[-2:]).float()
        day_deep = day_features[-1] if p.cross_attention.enabled else None
        logits_night = self.segment(relit_night, day=day_deep).float()
        pl = p.pseudo_label
        fused = fuse_day_night(logits_day, logits_night, pl.mode, self.static_classes, pl.space, pl.threshold,
                               pl.high, pl.low)

        # 4. L_static (Eq. 7-8), as ULCA
        loss_static = zero
        if p.static.enabled:
            label_static = pseudo_label(fused, self.pl_weight, static_only=True, static_classes=self.static_classes,
                                        restrict_to_static=pl.restrict_to_static)
            loss_static = static_loss(logits_night, label_static, p.static.gamma, self.static_classes,
                                      self.pl_weight if p.static.class_weights else None, p.static.kernel,
                                      p.static.softmax_over)
            terms["static"] = loss_static

        # 5. L_st: the teacher's confidence-weighted label of the (clean) relit night image, every class
        loss_st = zero
        replaces_mix = st.enabled and st.input == "nightmix"
        if st.enabled:
            label_t, weight_t = self.teacher_labels(relit_clean, relit_day)
            terms["pl_weight"] = (weight_t * (label_t != IGNORE_INDEX)).mean()  # q, or the kept share (pixel)
            target = batch["target"]
            truth = masked_label(target) if "label" in target and target["label"].shape == label_t.shape else None
            terms.update(pseudo_label_accuracy(label_t, truth))
            if st.input == "nightmix":
                # the raw night crop rides along for FDA; the draws are those of cropping relit_clean alone
                both, crop_label = match_size(torch.cat([relit_clean, night], 1), label_t,
                                              tuple(relit_a.shape[-2:]), gen)
                crop, night_crop = both[:, :3], both[:, 3:]
                pasted = relit_a
                if st.paste_style == "fda":
                    pasted = self.relit(fourier_style(image_a, night_crop, st.fda_beta))
                elif st.paste_style == "translate":
                    with torch.no_grad():
                        pasted = self.relit(self.translator(image_a))
                elif st.paste_style == "jitter":
                    # its own generator, seeded from the step's, so every other draw of the step stays as is
                    pasted = region_jitter(relit_a, label_a, torch.Generator().manual_seed(gen.initial_seed() + 1),
                                           self.paste_jitter)
                image, label, mask = nightmix(pasted, label_a, crop, crop_label, self.hard, gen, self.always_paste)
                weight = torch.where(mask, torch.ones((), device=mask.device), weight_t.mean())  # q: one share per batch
                policy = {"policy": p.cross_attention.unpaired}
                terms["mix_share"] = mask.float().mean()
            else:
                image, label, weight, policy = relit_clean, label_t, weight_t, {"day": day_deep}
            if st.augment:
                image = mix_augment(image, gen, self.mix_aug)
            loss_st = pixel_weighted_ce(self.segment(image, **policy).float(), label, weight)
            terms["st"] = loss_st

        # 6. ULCA's L_mix with the student's own corrected label (unless L_st's NightMix replaces it)
        loss_mix = zero
        if p.nightmix.enabled and not replaces_mix:
            label_night = pseudo_label(fused, self.pl_weight)
            night_crop, label_crop = match_size(relit_night, label_night, tuple(relit_a.shape[-2:]), gen)
            mixed, mixed_label, _ = nightmix(relit_a, label_a, night_crop, label_crop, self.hard, gen)
            loss_mix = weighted_cross_entropy(self.segment(mixed, policy=p.cross_attention.unpaired).float(),
                                              mixed_label)
            terms["mix"] = loss_mix

        # 7. L_kl (Eq. 4), as ULCA: weak branch = the night prediction above (detached inside)
        loss_kl = zero
        if p.consistency.enabled:
            relit_strong = self.relit(strong_augment(night, gen, self.strong))
            loss_kl = consistency_kl(self.segment(relit_strong, day=day_deep).float(), logits_night,
                                     p.consistency.target)
            terms["kl"] = loss_kl

        total = (loss_seg + p.static.weight * loss_static + st.weight * loss_st + p.nightmix.weight * loss_mix
                 + p.consistency.weight * loss_kl)
        if p.cross_attention.enabled:
            terms["ca_alpha"] = self.model.attention.alpha.detach().reshape(())
        return self.log_losses(total, **terms)


def build(cfg: Config) -> ULCAST:
    """Return the ``ulca_st`` LightningModule for `cfg`."""
    return ULCAST(cfg)


__all__ = ["ULCAST", "Params", "PasteJitterParams", "SelfTrainingParams", "build"]
