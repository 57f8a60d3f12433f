"""Streaming confusion matrices and the segmentation scores computed from them.

`ConfusionMatrix` accumulates, batch after batch, how many labelled pixels of ground-truth class
``i`` were predicted as class ``j``. It works on torch tensors on any device (the counts stay on the
device they were created on), skips pixels whose target is `IGNORE_INDEX` (255) or that an optional
``invalid`` mask marks, and can be summed over processes with `ConfusionMatrix.all_reduce`.

Predictions that are not one of the ``C`` classes (255, or any id >= C) are kept in an extra
"unassigned" column: they are misses (false negatives) of the ground-truth class and false positives
of no class. This is exactly how cityscapesscripts' `evalPixelLevelSemanticLabeling` treats
predictions of void labelIds, so per-class IoU here equals the official Cityscapes number.

`segmentation_scores` turns the counts into per-class IoU / accuracy / precision / recall / F1, mIoU
(classes absent from both prediction and ground truth are NaN and skipped, as Cityscapes does),
pixel accuracy, mean class accuracy and frequency-weighted IoU. `precision_recall_f1` gives the
averaged precision / recall / F1 that the exposure-aware F1 of the EGNet paper (Section 5.1, Eq. 2) uses;
see `nightseg.evaluation.exposure`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from nightseg.core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

Average = Literal["pixel", "class"]
AVERAGES: tuple[str, ...] = ("pixel", "class")

_ROWS = IGNORE_INDEX + 1  # target ids 0..255 get their own histogram row; rows >= C are checked, then dropped


def class_names_for(num_classes: int, class_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """Return the class names to report: `class_names`, the Cityscapes names for 19 classes, else class_<i>."""
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        return tuple(class_names)
    if num_classes == NUM_CLASSES:
        return CLASS_NAMES
    return tuple(f"class_{i}" for i in range(num_classes))


def check_num_classes(num_classes: int) -> int:
    num_classes = int(num_classes)
    if not 1 <= num_classes < IGNORE_INDEX:
        raise ValueError(f"num_classes must be in 1..{IGNORE_INDEX - 1}, got {num_classes}")
    return num_classes


def _as_int_tensor(x: Any, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{what} must be an integer tensor of class ids, got dtype {x.dtype}")
    return x


def _to_uint8_ids(x: torch.Tensor, what: str, num_classes: int) -> torch.Tensor:
    """Return integer ids `x` as uint8. Out-of-range predictions become `num_classes` (no class);
    out-of-range targets raise ValueError."""
    if x.dtype == torch.uint8:
        return x
    if x.numel() == 0:
        return x.to(torch.uint8)
    lo, hi = (int(v) for v in torch.aminmax(x))
    if lo < 0 or hi > IGNORE_INDEX:
        if what == "target":
            bad = lo if lo < 0 else hi
            raise ValueError(f"target contains id {bad} outside 0..{num_classes - 1} (and {IGNORE_INDEX} = ignore)")
        x = torch.where((x < 0) | (x > IGNORE_INDEX), num_classes, x)
    return x.to(torch.uint8)


def accumulate_histogram(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    invalid: torch.Tensor | None = None,
    bins: torch.Tensor | None = None,
    num_bins: int = 1,
) -> torch.Tensor:
    """Return the int64 counts ``[num_bins, C, C + 1]`` of (bin, target class, predicted class) for one batch.

    Column ``C`` counts labelled pixels whose prediction is not a class (255 or any id outside 0..C-1).
    Pixels with target 255 or ``invalid`` True are skipped. Target ids outside 0..C-1 other than 255
    raise ValueError (e.g. labelIds passed where trainIds are expected). One ``torch.bincount`` over
    ``((bin * 256 + target) * (C + 1) + pred)`` in int32 does the work; see bench/bench_confusion.py.
    """
    num_classes = check_num_classes(num_classes)
    pred = _as_int_tensor(pred, "pred")
    target = _as_int_tensor(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} but target is on {target.device}")
    cols = num_classes + 1
    target = _to_uint8_ids(target, "target", num_classes)
    pred = _to_uint8_ids(pred, "pred", num_classes).clamp(max=num_classes)
    index = target.to(torch.int32)  # a fresh copy we may modify in place
    if invalid is not None:
        invalid = torch.as_tensor(invalid, device=index.device)
        if invalid.shape != index.shape:
            raise ValueError(f"invalid mask shape {tuple(invalid.shape)} != target shape {tuple(index.shape)}")
        index.masked_fill_(invalid.to(torch.bool), IGNORE_INDEX)
    if bins is not None:
        bins = _as_int_tensor(bins, "bins")
        if bins.shape != index.shape:
            raise ValueError(f"exposure bins shape {tuple(bins.shape)} != target shape {tuple(index.shape)}")
        index.add_(bins.to(device=index.device, dtype=torch.int32), alpha=_ROWS)
    index.mul_(cols).add_(pred)
    size = num_bins * _ROWS * cols
    hist = torch.bincount(index.reshape(-1), minlength=size)
    if hist.numel() != size:
        raise ValueError(f"exposure bin ids must lie in 0..{num_bins - 1}")
    hist = hist.view(num_bins, _ROWS, cols)
    stray = hist[:, num_classes:IGNORE_INDEX].sum(dim=(0, 2))
    if int(stray.sum()) > 0:
        ids = (torch.nonzero(stray).flatten() + num_classes).tolist()
        shown = ", ".join(str(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")
        raise ValueError(
            f"target contains ids {shown} outside 0..{num_classes - 1} (and {IGNORE_INDEX} = ignore); "
            "are these labelIds instead of trainIds?"
        )
    return hist[:, :num_classes]


class ConfusionMatrix:
    """Streaming confusion matrix over `num_classes` classes (rows: ground truth, columns: prediction).

    ``counts`` is an int64 tensor ``[C, C + 1]`` on `device`; its last column counts labelled pixels
    predicted as no class (255 or an id >= C). ``matrix`` is the usual ``[C, C]`` part.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        device: torch.device | str = "cpu",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.class_names = class_names_for(self.num_classes, class_names)
        self.counts = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64, device=device)

    @property
    def matrix(self) -> torch.Tensor:
        """The ``[C, C]`` confusion matrix: ``matrix[i, j]`` = pixels of class i predicted as class j."""
        return self.counts[:, : self.num_classes]

    @property
    def unassigned(self) -> torch.Tensor:
        """Per ground-truth class, labelled pixels whose prediction was no class (255 or an id >= C)."""
        return self.counts[:, self.num_classes]

    def update(self, pred: torch.Tensor, target: torch.Tensor, invalid: torch.Tensor | None = None) -> None:
        """Add one prediction / target pair (any matching shape, e.g. ``[H,W]`` or ``[B,H,W]``).

        `pred` and `target` are integer class-id tensors (uint8 is fastest); target 255 is ignored;
        pixels where the boolean `invalid` mask is True are excluded.
        """
        hist = accumulate_histogram(pred, target, self.num_classes, invalid=invalid)[0]
        self.counts += hist.to(self.counts.device)

    def reset(self) -> None:
        """Zero all counts."""
        self.counts.zero_()

    def add_(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of `other` (same number of classes) into this matrix in place and return self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot add a {other.num_classes}-class matrix to a {self.num_classes}-class one")
        self.counts += other.counts.to(self.counts.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Return a new matrix holding the sum of the counts of every process of the default process group.

        Without an initialised ``torch.distributed`` group this is a copy of self. Call it on every rank
        (it is a collective). ``self`` is left unchanged, so calling it twice never double-counts.
        """
        out = ConfusionMatrix(self.num_classes, self.counts.device, self.class_names)
        out.counts = all_reduce_sum(self.counts)
        return out

    @property
    def total(self) -> int:
        """Number of labelled pixels counted so far."""
        return int(self.counts.sum())

    def scores(self) -> dict[str, Any]:
        """Shorthand for ``segmentation_scores(self)``."""
        return segmentation_scores(self)

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.total}, device={self.counts.device})"


def all_reduce_sum(counts: torch.Tensor) -> torch.Tensor:
    """Return a copy of `counts` summed over all processes (a plain copy when not distributed)."""
    out = counts.clone()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return out
    work = out
    if torch.distributed.get_backend() == "nccl" and out.device.type != "cuda":
        work = out.to(torch.device("cuda", torch.cuda.current_device()))
    torch.distributed.all_reduce(work, op=torch.distributed.ReduceOp.SUM)
    return work.to(counts.device)


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den elementwise in float64, NaN where den == 0."""
    num = num.double()
    den = den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))


def nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


def _counts_of(cm: ConfusionMatrix | torch.Tensor) -> torch.Tensor:
    counts = cm.counts if isinstance(cm, ConfusionMatrix) else cm
    return counts.detach().to("cpu", torch.int64)


def class_totals(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (true positives, ground-truth pixels, predicted pixels) per class from ``[..., C, C+1]`` counts."""
    c = counts.shape[-2]
    tp = torch.diagonal(counts[..., :c], dim1=-2, dim2=-1)
    gt = counts.sum(dim=-1)  # includes the unassigned column: those are misses of the true class
    pred = counts[..., :c].sum(dim=-2)
    return tp, gt, pred


def precision_recall_f1(cm: ConfusionMatrix | torch.Tensor, average: Average = "pixel") -> dict[str, float]:
    """Return averaged ``precision``, ``recall`` and their harmonic mean ``f1`` (EGNet paper, Eq. 2, beta = 1).

    ``average="pixel"`` (micro): sums true positives, predicted and ground-truth pixels over all
    classes. Every labelled pixel is one ground-truth and at most one predicted pixel, so recall is the
    pixel accuracy, and precision equals it too unless some labelled pixels are predicted as no class
    (then precision > recall); hence F1 = pixel accuracy for ordinary single-label predictions.

    ``average="class"`` (macro): precision and recall of each class present (in ground truth or
    prediction), an undefined ratio counting 0 as in scikit-learn, averaged over those classes; F1 is
    Eq. 2 applied to the two averages.

    All three are NaN when there are no labelled pixels.
    """
    tp, gt, pred = class_totals(_counts_of(cm))
    if int(gt.sum()) == 0:
        return {"precision": math.nan, "recall": math.nan, "f1": math.nan}
    if average == "pixel":
        precision = float(tp.sum()) / float(pred.sum()) if int(pred.sum()) else 0.0
        recall = float(tp.sum()) / float(gt.sum())
    elif average == "class":
        present = (gt > 0) | (pred > 0)
        precision = float(torch.nan_to_num(safe_divide(tp, pred), nan=0.0)[present].mean())
        recall = float(torch.nan_to_num(safe_divide(tp, gt), nan=0.0)[present].mean())
    else:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def segmentation_scores(
    cm: ConfusionMatrix | torch.Tensor, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Return the standard segmentation scores of a confusion matrix (counts ``[C, C+1]`` or ``[C, C]``).

    Keys: ``mIoU``, ``pixel_accuracy``, ``mean_class_accuracy``, ``fw_iou`` (frequency-weighted IoU),
    ``pixels`` (labelled pixels), ``classes_scored`` (classes with a defined IoU), and ``per_class``:
    ``{name: {"iou", "accuracy", "precision", "f1", "gt_pixels", "pred_pixels"}}``. Scores are fractions
    in [0, 1]. IoU = TP / (TP + FP + FN) is NaN for a class absent from both ground truth and prediction
    and such classes are skipped by the means (Cityscapes convention); class accuracy (= recall) is NaN
    without ground-truth pixels; everything is NaN when nothing was counted.
    """
    counts = _counts_of(cm)
    if counts.shape[-1] == counts.shape[-2]:  # a plain [C, C] matrix: no unassigned column
        counts = torch.cat([counts, torch.zeros_like(counts[:, :1])], dim=1)
    num_classes = counts.shape[0]
    if class_names is None and isinstance(cm, ConfusionMatrix):
        class_names = cm.class_names
    names = class_names_for(num_classes, class_names)
    tp, gt, pred = class_totals(counts)
    iou = safe_divide(tp, gt + pred - tp)
    acc = safe_divide(tp, gt)
    precision = safe_divide(tp, pred)
    f1 = safe_divide(2 * tp, gt + pred)
    total = int(gt.sum())
    if total:
        fw = float(torch.nansum(gt.double() / total * torch.nan_to_num(iou, nan=0.0)))
        pixel_acc = float(tp.sum()) / total
    else:
        fw = pixel_acc = math.nan
    per_class = {
        name: {
            "iou": float(iou[i]),
            "accuracy": float(acc[i]),
            "precision": float(precision[i]),
            "f1": float(f1[i]),
            "gt_pixels": int(gt[i]),
            "pred_pixels": int(pred[i]),
        }
        for i, name in enumerate(names)
    }
    return {
        "mIoU": nanmean(iou),
        "pixel_accuracy": pixel_acc,
        "mean_class_accuracy": nanmean(acc),
        "fw_iou": fw,
        "pixels": total,
        "classes_scored": int((~torch.isnan(iou)).sum()),
        "per_class": per_class,
    }
