"""Supervised training: source-only (Cityscapes layout), night-supervised (NightCity layout), or both jointly.

The whole training step is below. One labelled stream (``data.source``) gives the plain cross-entropy
with 255 ignored. With a second labelled stream (``data.target``, e.g. NightCity next to Cityscapes)
every step takes a *mixed batch*: ``batch_size`` day and ``batch_size`` night crops go through the
network in one forward pass (so BatchNorm statistics see both domains), and the loss is
``CE(day) + target_weight * CE(night)``, each a mean over its own labelled pixels, logged separately
as ``train/ce_source`` and ``train/ce_target``. Both streams need the same crop size for that
(``crop``, or ``out_size`` where set).

Optional class weights: a list of ``num_classes`` numbers, or ``inverse`` (ULCA, Eq. 5) /
``dannet_log`` (DANNet) computed from the Cityscapes class frequencies (`nightseg.losses.segmentation`); the
weighted cross-entropy is normalised by the summed pixel weights (PyTorch's convention).

``method.init_checkpoint`` starts from the segmenter weights of a NightSeg checkpoint (e.g. fine-tune a
Cityscapes model on NightCity); the optimiser and schedule start afresh. On resume the run's own state
replaces them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nightseg.core.checkpoint import load_segmenter_weights
from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.losses.segmentation import CITYSCAPES_FREQUENCIES, class_weights, weighted_cross_entropy
from nightseg.methods.base import SegmentationModule, masked_label


@dataclass
class Params:
    """Keys of the ``method:`` section of a supervised recipe."""

    name: str = "supervised"
    class_weights: list[float] | str | None = None
    """``null`` (plain cross-entropy), a list of per-class weights, ``inverse`` or ``dannet_log``."""
    target_weight: float = 1.0
    """Weight of the ``data.target`` stream's cross-entropy in joint training."""
    init_checkpoint: str | None = None
    """A NightSeg checkpoint whose segmenter weights the model starts from (``null``: the model's own init)."""


def resolve_class_weights(spec: list[float] | str | None, num_classes: int) -> torch.Tensor | None:
    """Return the class-weight tensor for a ``class_weights`` setting (None for plain cross-entropy)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in ("inverse", "dannet_log"):
            raise UserError(f"method.class_weights={spec!r}: expected a list of {num_classes} numbers, inverse or dannet_log")
        if num_classes != len(CITYSCAPES_FREQUENCIES):
            raise UserError(f"method.class_weights={spec}: needs the 19 Cityscapes classes, the model has {num_classes}")
        return class_weights(CITYSCAPES_FREQUENCIES, spec)
    if len(spec) != num_classes:
        raise UserError(f"method.class_weights: {len(spec)} weights given for {num_classes} classes")
    return torch.tensor(spec, dtype=torch.float32)


class Supervised(SegmentationModule):
    """Cross-entropy on the labelled stream(s); see the module docstring."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.params: Params = cfg.method
        if self.params.init_checkpoint:
            load_segmenter_weights(self.model, self.params.init_checkpoint)
        weights = resolve_class_weights(self.params.class_weights, self.num_classes)
        self.register_buffer("class_weight", weights, persistent=False)
        source, target = cfg.data.source, cfg.data.target
        size_s, size_t = source.out_size or source.crop, target.out_size or target.crop
        if target.dataset is not None and (size_s is None or size_s != size_t):
            raise UserError(f"{cfg.recipe}: joint training needs equal crops (data.source.crop / out_size == "
                            f"data.target.crop / out_size, one mixed batch), got {size_s} and {size_t}")

    def cross_entropy(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over labelled pixels (class-weighted when configured); 0 if none is labelled."""
        return weighted_cross_entropy(logits.float(), label, self.class_weight, normalization="weighted_mean")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        source = batch["source"]
        if "target" not in batch:
            ce = self.cross_entropy(self.model(source["image"]), masked_label(source))
            return self.log_losses(ce, ce_source=ce)
        target = batch["target"]
        images = torch.cat([source["image"], target["image"]])
        logits_source, logits_target = self.model(images).split([len(source["image"]), len(target["image"])])
        ce_source = self.cross_entropy(logits_source, masked_label(source))
        ce_target = self.cross_entropy(logits_target, masked_label(target))
        total = ce_source + self.params.target_weight * ce_target
        return self.log_losses(total, ce_source=ce_source, ce_target=ce_target)


def build(cfg: Config) -> Supervised:
    """Return the supervised LightningModule for `cfg`."""
    return Supervised(cfg)
