"""Exposure-aware scoring from the EGNet paper (Tan et al., NightCity), Sections 3 and 5.1.

Each pixel's exposure is the V channel of the input image in HSV space, ``V = max(R, G, B)`` in
[0, 1]. Pixels fall into 10 equal exposure bins ``[0, .1), [.1, .2), ..., [.9, 1]``. Per bin we keep a
confusion matrix; from it come the exposure-aware F1 ``EF1_g`` (Eq. 2, beta = 1) and per-bin mIoU,
and ``mEF1`` is the mean of ``EF1_g`` (Eq. 3) over the bins that contain labelled pixels.

The paper does not say how precision and recall are averaged over classes; ``average="pixel"`` (the
default) reproduces the magnitudes of its Table 2, see docs/methods.md, "Exposure-aware F1 (mEF1)".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from nightseg.core.classes import IGNORE_INDEX, NUM_CLASSES
from nightseg.evaluation.metrics import (
    AVERAGES,
    Average,
    ConfusionMatrix,
    accumulate_histogram,
    all_reduce_sum,
    check_num_classes,
    class_names_for,
    precision_recall_f1,
    segmentation_scores,
)

NUM_EXPOSURE_BINS = 10
DEFAULT_AVERAGE: Average = "pixel"


def masked_label(sample: dict[str, Any]) -> torch.Tensor:
    """Return the sample's (or batch's) ``label`` with the pixels of its ``invalid`` mask, if any, set to 255.

    The one definition of the pixels that mEF1 and training validation score (and that training losses
    see): an invalid-mask pixel (Dark Zurich / ACDC ``*_gt_invIds.png``) is in no exposure bin, as
    docs/methods.md ("Exposure-aware F1") defines. Used by the training recipes, `SegmentationModule`'s
    validation and `nightseg evaluate`, so the three cannot drift apart.
    """
    label = sample["label"]
    if sample.get("invalid") is not None:
        label = label.masked_fill(torch.as_tensor(sample["invalid"]).to(device=label.device, dtype=torch.bool),
                                  IGNORE_INDEX)
    return label


def exposure_bins(image: torch.Tensor, num_bins: int = NUM_EXPOSURE_BINS) -> torch.Tensor:
    """Return the exposure bin index (int32 ``[..., H, W]``, 0..num_bins-1) of each pixel of ``[..., 3, H, W]`` images.

    Bin g covers ``[g / num_bins, (g + 1) / num_bins)``; the last bin also takes V = 1 (EGNet paper,
    Sec. 3 and Fig. 4). uint8 images are binned exactly in integer terms; for floating-point images a
    tolerance of 1e-6 in V puts values such as 51/255 = 0.2 into the upper bin whatever their float
    rounding, so an image and its ``/ 255`` float version always get the same bins.
    """
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ValueError(f"expected images [..., 3, H, W], got shape {tuple(image.shape)}")
    value = image.amax(dim=-3)
    if value.dtype == torch.uint8:
        # floor(v * num_bins / 255): exact for all 256 values (tested), one float multiply per pixel
        scale, tolerance = num_bins / 255.0, 1e-4
    elif value.is_floating_point():
        scale, tolerance = float(num_bins), num_bins * 1e-6
    else:
        raise TypeError(f"images must be uint8 or floating point in [0, 1], got dtype {image.dtype}")
    scaled = value.to(torch.float32, copy=True)
    return scaled.mul_(scale).add_(tolerance).clamp_(0, num_bins - 1).to(torch.int32)


def bin_edges(num_bins: int = NUM_EXPOSURE_BINS) -> list[tuple[float, float]]:
    """Return the ``(low, high)`` V range of each exposure bin, e.g. ``(0.0, 0.1), ..., (0.9, 1.0)``."""
    return [(round(g / num_bins, 6), round((g + 1) / num_bins, 6)) for g in range(num_bins)]


class ExposureConfusion:
    """One streaming confusion matrix per exposure bin: int64 ``counts`` of shape ``[bins, C, C + 1]``.

    ``update(pred, target, image)`` bins every pixel by the HSV V of `image` (or by precomputed `bins`,
    e.g. from a predicted exposure map) and counts it like `ConfusionMatrix.update`. ``total()`` gives
    the ordinary confusion matrix over all pixels, so one object yields mIoU and mEF1 together.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        num_bins: int = NUM_EXPOSURE_BINS,
        device: torch.device | str = "cpu",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.num_classes = check_num_classes(num_classes)
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_bins = int(num_bins)
        self.class_names = class_names_for(self.num_classes, class_names)
        self.counts = torch.zeros(
            self.num_bins, self.num_classes, self.num_classes + 1, dtype=torch.int64, device=device
        )

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        image: torch.Tensor | None = None,
        *,
        bins: torch.Tensor | None = None,
        invalid: torch.Tensor | None = None,
    ) -> None:
        """Add a prediction / target pair; `image` is ``[..., 3, H, W]`` (uint8 or float in [0, 1]).

        Give either `image` or `bins` (integer ``[..., H, W]`` bin ids). Target 255 and pixels where
        `invalid` is True are skipped.
        """
        if (image is None) == (bins is None):
            raise ValueError("give exactly one of image= or bins=")
        if bins is None:
            bins = exposure_bins(image, self.num_bins)
        hist = accumulate_histogram(pred, target, self.num_classes, invalid=invalid, bins=bins, num_bins=self.num_bins)
        self.counts += hist.to(self.counts.device)

    def reset(self) -> None:
        """Zero all counts."""
        self.counts.zero_()

    def add_(self, other: ExposureConfusion) -> ExposureConfusion:
        """Add the counts of `other` in place and return self."""
        if other.counts.shape != self.counts.shape:
            raise ValueError(f"cannot add counts of shape {tuple(other.counts.shape)} to {tuple(self.counts.shape)}")
        self.counts += other.counts.to(self.counts.device)
        return self

    def all_reduce(self) -> ExposureConfusion:
        """Return a new object summed over all processes (a copy when torch.distributed is not initialised)."""
        out = ExposureConfusion(self.num_classes, self.num_bins, self.counts.device, self.class_names)
        out.counts = all_reduce_sum(self.counts)
        return out

    def bin(self, g: int) -> ConfusionMatrix:
        """Return the confusion matrix of exposure bin `g` (a copy)."""
        cm = ConfusionMatrix(self.num_classes, self.counts.device, self.class_names)
        cm.counts = self.counts[g].clone()
        return cm

    def total(self) -> ConfusionMatrix:
        """Return the confusion matrix over all bins (the ordinary one)."""
        cm = ConfusionMatrix(self.num_classes, self.counts.device, self.class_names)
        cm.counts = self.counts.sum(dim=0)
        return cm

    def __repr__(self) -> str:
        return (
            f"ExposureConfusion(num_classes={self.num_classes}, num_bins={self.num_bins}, "
            f"pixels={int(self.counts.sum())}, device={self.counts.device})"
        )


def exposure_scores(ec: ExposureConfusion, average: Average = DEFAULT_AVERAGE) -> dict[str, Any]:
    """Return ``EF1_g`` per exposure bin and ``mEF1`` (EGNet paper, Sec. 5.1, Eqs. 2-3), plus per-bin mIoU.

    Keys: ``average`` (how precision / recall are averaged, see `precision_recall_f1`), ``mEF1`` (mean
    EF1 over bins with labelled pixels; NaN if none), ``mIoU`` (over all bins), and ``bins``: a list of
    ``{"range": [low, high], "pixels", "share", "precision", "recall", "ef1", "mIoU"}``. A bin without
    labelled pixels has NaN scores and does not enter mEF1.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    counts = ec.counts.detach().to("cpu")
    pixels = counts.sum(dim=(1, 2))
    total = int(pixels.sum())
    out_bins = []
    for g, (low, high) in enumerate(bin_edges(ec.num_bins)):
        prf = precision_recall_f1(counts[g], average)
        out_bins.append(
            {
                "range": [low, high],
                "pixels": int(pixels[g]),
                "share": int(pixels[g]) / total if total else math.nan,
                "precision": prf["precision"],
                "recall": prf["recall"],
                "ef1": prf["f1"],
                "mIoU": segmentation_scores(counts[g], ec.class_names)["mIoU"],
            }
        )
    scored = [b["ef1"] for b in out_bins if b["pixels"] > 0]
    return {
        "average": average,
        "mEF1": sum(scored) / len(scored) if scored else math.nan,
        "mIoU": segmentation_scores(counts.sum(dim=0), ec.class_names)["mIoU"],
        "bins": out_bins,
    }
