"""Uncertainty-aware IoU (UIoU) of the Dark Zurich benchmark (Sakaridis et al., GCMA, ICCV 2019 and
MGCDA, TPAMI 2020); see docs/methods.md, "Uncertainty-aware IoU (UIoU)".

The ground truth of a frame has a semantic label H(p) for every annotated pixel, including the pixels
whose content cannot be recognised in the night image alone (labelled with the help of the daytime
reference), and an invalid mask J (``*_gt_invIds.png``, J(p) = 1 for those). A prediction may declare
pixels *invalid* (value 255 in ``labelTrainIds_invalid``). For class c, over pixels with H(p) = c or a
prediction of c (void ground truth, 255, is never counted):

* TP: predicted c, H = c;  FP: predicted c, H != c;  FN: predicted another class, H = c;
* TI (true invalid): predicted invalid, H = c, J = 1;  FI (false invalid): predicted invalid, H = c, J = 0;

    UIoU(c) = (TP + TI) / (TP + TI + FP + FN + FI)

Without invalid predictions UIoU = IoU. Declaring a truly invalid pixel invalid is rewarded like a
correct label; declaring a valid pixel invalid is penalised like a wrong label (but gives no false
positive to another class). The standard IoU counts every invalid declaration as a miss.

Predictions are usually invalidated by thresholding the confidence (probability of the predicted class):
invalid where confidence < theta. `UncertaintyConfusion` keeps the counts per (J, confidence bin, target,
prediction), so UIoU at any threshold on its grid and its average over thresholds come from one pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from nightseg.core.classes import NUM_CLASSES
from nightseg.evaluation.metrics import (
    accumulate_histogram,
    all_reduce_sum,
    check_num_classes,
    class_names_for,
    class_totals,
    nanmean,
    safe_divide,
    segmentation_scores,
)

NUM_CONFIDENCE_BINS = 100


def invalid_histogram(
    pred: torch.Tensor, target: torch.Tensor, gt_invalid: torch.Tensor, num_classes: int = NUM_CLASSES
) -> torch.Tensor:
    """Return counts ``[2, C, C + 1]``: (J, target class, prediction), last column = predicted invalid.

    `pred` holds class ids with 255 (or any id >= C) meaning "invalid"; `gt_invalid` is the boolean J.
    """
    bins = torch.as_tensor(gt_invalid, device=target.device).to(torch.int32)
    return accumulate_histogram(pred, target, num_classes, bins=bins, num_bins=2)


def uiou_scores(counts: torch.Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Return UIoU per class and its mean from counts ``[2, C, C + 1]`` (see `invalid_histogram`).

    Keys: ``mUIoU`` (mean over classes with a defined UIoU), ``mIoU`` (standard IoU of the same
    prediction, invalid declarations counted as misses), ``invalid_share`` (share of annotated pixels
    declared invalid), ``true_invalid`` / ``false_invalid`` (pixel counts), and ``per_class``:
    ``{name: {"uiou", "iou", "tp", "fp", "fn", "ti", "fi"}}``.
    """
    counts = counts.detach().to("cpu", torch.int64)
    c = counts.shape[-2]
    names = class_names_for(c, class_names)
    both = counts.sum(dim=0)
    tp, gt, pred = class_totals(both)
    fp = pred - tp
    ti = counts[1, :, c]
    fi = counts[0, :, c]
    fn = gt - tp - ti - fi
    uiou = safe_divide(tp + ti, tp + ti + fp + fn + fi)
    iou = segmentation_scores(both, names)
    total = int(gt.sum())
    return {
        "mUIoU": nanmean(uiou),
        "mIoU": iou["mIoU"],
        "invalid_share": float(ti.sum() + fi.sum()) / total if total else math.nan,
        "true_invalid": int(ti.sum()),
        "false_invalid": int(fi.sum()),
        "per_class": {
            name: {
                "uiou": float(uiou[i]), "iou": iou["per_class"][name]["iou"], "tp": int(tp[i]), "fp": int(fp[i]),
                "fn": int(fn[i]), "ti": int(ti[i]), "fi": int(fi[i]),
            }
            for i, name in enumerate(names)
        },
    }


class UncertaintyConfusion:
    """Streaming counts ``[2, K, C, C + 1]`` of (gt invalid J, confidence bin, target, predicted class).

    Confidence bin k covers ``[k / K, (k + 1) / K)`` (1.0 goes to the last bin). `counts_at(theta)`
    invalidates every pixel with confidence < theta (theta on the grid k / K) and returns the
    ``[2, C, C + 1]`` counts of `uiou_scores`.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        num_bins: int = NUM_CONFIDENCE_BINS,
        device: torch.device | str = "cpu",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.num_bins = int(num_bins)
        self.class_names = class_names_for(self.num_classes, class_names)
        self.counts = torch.zeros(2, self.num_bins, self.num_classes, self.num_classes + 1, dtype=torch.int64, device=device)

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, gt_invalid: torch.Tensor, confidence: torch.Tensor
    ) -> None:
        """Add one prediction (class ids), its target (255 = void), invalid mask J and confidence in [0, 1]."""
        confidence = torch.as_tensor(confidence)
        if confidence.shape != target.shape:
            raise ValueError(f"confidence shape {tuple(confidence.shape)} != target shape {tuple(target.shape)}")
        k = (confidence.to(torch.float32) * self.num_bins).clamp_(0, self.num_bins - 1).to(torch.int32)
        j = torch.as_tensor(gt_invalid, device=k.device).to(torch.int32)
        bins = j * self.num_bins + k
        hist = accumulate_histogram(pred, target, self.num_classes, bins=bins, num_bins=2 * self.num_bins)
        self.counts += hist.view_as(self.counts).to(self.counts.device)

    def all_reduce(self) -> UncertaintyConfusion:
        """Return a copy summed over all processes (a plain copy without torch.distributed)."""
        out = UncertaintyConfusion(self.num_classes, self.num_bins, self.counts.device, self.class_names)
        out.counts = all_reduce_sum(self.counts)
        return out

    def thresholds(self) -> list[float]:
        """Return the thresholds on the grid: 0, 1/K, ..., (K-1)/K."""
        return [k / self.num_bins for k in range(self.num_bins)]

    def counts_at(self, threshold: float) -> torch.Tensor:
        """Return counts ``[2, C, C + 1]`` after invalidating pixels with confidence < `threshold`."""
        t = round(threshold * self.num_bins)
        if abs(t - threshold * self.num_bins) > 1e-6 or not 0 <= t <= self.num_bins:
            raise ValueError(f"threshold {threshold} is not on the grid k/{self.num_bins}")
        c = self.num_classes
        kept = self.counts[:, t:].sum(dim=1)
        kept[:, :, c] += self.counts[:, :t].sum(dim=(1, 3))
        return kept

    def scores(self, threshold: float) -> dict[str, Any]:
        """Return `uiou_scores` at `threshold` plus ``threshold``."""
        return {"threshold": threshold, **uiou_scores(self.counts_at(threshold), self.class_names)}

    def average_uiou(self) -> float:
        """Return the mean of mUIoU over the thresholds 0, 1/K, ..., (K-1)/K (see docs/methods.md)."""
        values = [uiou_scores(self.counts_at(t), self.class_names)["mUIoU"] for t in self.thresholds()]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    def curve(self, step: int = 5) -> list[dict[str, float]]:
        """Return ``[{"threshold", "mUIoU", "invalid_share"}]`` every `step` grid points (for plots)."""
        out = []
        for k in range(0, self.num_bins, step):
            s = uiou_scores(self.counts_at(k / self.num_bins), self.class_names)
            out.append({"threshold": k / self.num_bins, "mUIoU": s["mUIoU"], "invalid_share": s["invalid_share"]})
        return out
