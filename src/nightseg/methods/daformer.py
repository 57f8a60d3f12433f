"""DAFormer (Hoyer et al., CVPR 2022): DACS's self-training (`nightseg.methods.dacs`) plus three training
strategies. The whole training step is `DAFormer.training_step` below.

    L = CE(f(x_S), y_S) + lambda_FD * L_FD + lambda_mix * weighted CE(f(x_M), y_M)

1. **Rare class sampling** (Sec. 3.4, Eq. 4-5) is a property of the *source stream*, because the engine
   picks samples by position: ``data.source.dataset: nightseg.data.rare_class:rare_class_sampling`` with
   ``options: {dataset: cityscapes, temperature: 0.01}`` (`nightseg.data.rare_class`). Each sample draws
   a class ``c ~ softmax((1 - f_c) / T)`` and then an image containing c, from the generator the engine
   seeds per (seed, stream, position), so the data stays a pure function of the step.
2. **Thing-class ImageNet feature distance** (Sec. 3.5, Eq. 7-8): the distance between the bottleneck
   features of the student and of a frozen copy of the ImageNet encoder on the source image, over the
   cells whose downscaled label is a thing class, weighted by ``lambda_FD = 0.005``. It needs ImageNet
   weights: ``model.pretrained: true`` (downloaded) or ``model.encoder_weights: FILE`` (a local ImageNet
   file, e.g. NVlabs' ``mit_b5.pth`` as DAFormer uses); without either it is off, with a one-line warning.
3. **Learning-rate warm-up** (Sec. 3.6): linear over ``optim.warmup_steps`` (1500), then poly decay; the
   decoder trains with 10 times the encoder's learning rate (``head_lr_mult``, AdamW).

The EMA teacher (alpha 0.999), ClassMix, confidence weight and augmentation are DACS's, with DAFormer's
settings in ``configs/daformer.yaml`` (ColorJitter strength 0.2). The DAFormer decoder on MiT-B5 is the
segmenter ``daformer_mitb5`` (`nightseg.models.heads.DAFormerHead`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nightseg.core.classes import class_ids
from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.methods.base import masked_label
from nightseg.methods.dacs import DACS, AugmentParams
from nightseg.methods.dacs import Params as DACSParams
from nightseg.methods.self_training import downscale_label_ratio, masked_feature_distance, pixel_weighted_ce
from nightseg.methods.teacher import TeacherParams

log = logging.getLogger("nightseg.train")
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm)

THING_CLASSES = ["traffic light", "traffic sign", "person", "rider", "car", "truck", "bus", "train",
                 "motorcycle", "bicycle"]
"""DAFormer's thing classes for the feature distance (``fdist_classes = [6, 7, 11, ..., 18]``)."""


@dataclass
class FeatureDistanceParams:
    """Thing-class ImageNet feature distance (DAFormer Sec. 3.5)."""

    enabled: bool = True
    weight: float = 0.005
    """lambda_FD."""
    classes: list[str] = field(default_factory=lambda: list(THING_CLASSES))
    """Classes whose cells count (empty: every cell, the plain ImageNet feature distance)."""
    min_ratio: float = 0.75
    """A downscaled label cell keeps its class only if that class covers this share of it (Eq. 8)."""


@dataclass
class Params(DACSParams):
    """Keys of the ``method:`` section of a DAFormer recipe (see ``configs/daformer.yaml``)."""

    name: str = "daformer"
    teacher: TeacherParams = field(default_factory=lambda: TeacherParams(alpha=0.999))
    augment: AugmentParams = field(default_factory=lambda: AugmentParams(strength=0.2))
    head_lr_mult: float = 10.0
    """Learning-rate multiplier of everything but the encoder (DAFormer: 10)."""
    norm_weight_decay: bool = False
    """Whether normalisation layers get weight decay (DAFormer: ``decay_mult=0`` for them)."""
    feature_distance: FeatureDistanceParams = field(default_factory=FeatureDistanceParams)


class DAFormer(DACS):
    """The DAFormer training recipe; see the module docstring."""

    def before_init_checkpoint(self) -> None:
        """Keep a frozen copy of the ImageNet encoder for the feature distance, taken before any
        ``init_checkpoint`` replaces the weights (the encoder ``model.pretrained`` downloaded or
        ``model.encoder_weights`` loaded); off (one warning) without ImageNet weights."""
        fd = self.params.feature_distance
        self.imnet: nn.Module | None = None
        try:
            self.fd_classes = list(class_ids(fd.classes))
        except ValueError as exc:
            raise UserError(f"method.feature_distance.classes: {exc}") from None
        if not fd.enabled:
            return
        if not (self.cfg.model.pretrained or self.cfg.model.encoder_weights):
            log.warning("%s: feature distance off: model.pretrained is false and no model.encoder_weights file is "
                        "given, so there is no ImageNet encoder to keep the features close to", self.cfg.recipe)
            return
        if not hasattr(self.model, "backbone") or not hasattr(self.model, "encode"):
            raise UserError(f"model.name={self.cfg.model.name}: the feature distance needs a segmenter with an "
                            "encoder (backbone); set method.feature_distance.enabled=false")
        self.enable_feature_distance(copy.deepcopy(self.model.backbone))

    def enable_feature_distance(self, encoder: nn.Module) -> None:
        """Use `encoder` (frozen here) as the ImageNet reference of the feature distance."""
        self.imnet = encoder.requires_grad_(False)

    def imagenet_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the deepest features of the frozen ImageNet encoder (eval mode, no gradient) for images `x`."""
        mode = self.imnet.training
        self.imnet.eval()
        with torch.no_grad():
            features = self.imnet((x - self.model.mean) / self.model.std)[-1]
        self.imnet.train(mode)
        return features

    def feature_distance(self, x: torch.Tensor, features: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Return lambda_FD * L_FD (DAFormer Eq. 7-8) of the student's deepest `features` of source images `x`."""
        fd = self.params.feature_distance
        reference = self.imagenet_features(x)
        mask = None
        if self.fd_classes:
            h, w = features.shape[-2:]
            factor = max(1, label.shape[-2] // h)
            scaled = downscale_label_ratio(label[:, : h * factor, : w * factor], factor, fd.min_ratio,
                                           self.num_classes)
            mask = torch.isin(scaled, torch.tensor(self.fd_classes, device=scaled.device))
        return fd.weight * masked_feature_distance(features, reference, mask)

    def param_groups(self) -> list[dict[str, Any]]:
        """Encoder at the base lr, everything else (decoder) at ``head_lr_mult`` times it; normalisation
        weights and biases without weight decay unless ``norm_weight_decay``."""
        encoder = getattr(self.model, "backbone", None)
        encoder_ids = {id(q) for q in encoder.parameters()} if encoder is not None else set()
        norm_ids = set()
        if not self.params.norm_weight_decay:
            for module in self.model.modules():
                if isinstance(module, NORM_LAYERS):
                    norm_ids.update(id(q) for q in module.parameters())
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for q in self.model.parameters():
            if q.requires_grad:
                groups.setdefault((id(q) in encoder_ids, id(q) in norm_ids), []).append(q)
        out = []
        for (is_encoder, is_norm), params in sorted(groups.items()):
            group: dict[str, Any] = {"params": params, "lr_mult": 1.0 if is_encoder else self.params.head_lr_mult}
            if is_norm:
                group["weight_decay"] = 0.0
            out.append(group)
        return out

    # ---- the training step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        p = self.params
        source, label_s = batch["source"]["image"], masked_label(batch["source"])
        gen = self.step_generator()
        target, truth = self.target_crop(batch, source.shape[-2:], gen)

        # 1. teacher update; source loss (+ feature distance on the same forward's bottleneck features)
        alpha = self.update_teacher()
        features = self.model.encode(source)
        loss_source = pixel_weighted_ce(self.model.decode(features, source.shape[-2:]), label_s)
        terms: dict[str, torch.Tensor] = {}
        loss_fd = source.new_zeros(())
        if self.imnet is not None:
            loss_fd = self.feature_distance(source, features[-1], label_s)
            terms["fd"] = loss_fd

        # 2. teacher pseudo labels on the target crop, ClassMix, confidence weight, augmentation
        label_t, weight_t = self.pseudo_labels(target)
        mixed, mixed_label, mixed_weight, mask = self.mix(source, label_s, target, label_t, weight_t, gen)
        loss_mix = pixel_weighted_ce(self.segment(mixed), mixed_label, mixed_weight)

        total = loss_source + loss_fd + p.mix_weight * loss_mix
        return self.log_losses(total, source=loss_source, mix=loss_mix, mix_share=mask.float().mean(),
                               alpha=alpha, **terms, **self.pseudo_label_terms(label_t, weight_t, truth))


def build(cfg: Config) -> DAFormer:
    """Return the DAFormer LightningModule for `cfg`."""
    return DAFormer(cfg)


__all__ = ["THING_CLASSES", "DAFormer", "FeatureDistanceParams", "Params", "build"]
