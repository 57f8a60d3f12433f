"""Score a folder of prediction PNGs against ground truth: the logic behind ``nightseg eval``.

Files are matched by *scene stem*: the file name without its extension and without the dataset
suffixes, so that ``aachen_000000_000019_leftImg8bit.png`` (prediction), ``..._gtFine_labelIds.png``
and ``..._gtFine_labelTrainIds.png`` (Cityscapes), ``GOPR0356_frame_000321_rgb_anon.png``,
``..._gt_labelTrainIds.png``, ``..._gt_labelIds.png`` and ``..._gt_invIds.png`` (Dark Zurich, ACDC)
all share one stem. Sub-folders are searched recursively; a stem must be unique within a folder.

In a folder holding several kinds of maps for the same scenes (a Cityscapes ``gtFine`` folder has
``_labelIds``, ``_labelTrainIds``, ``_color`` and ``_instanceIds``), the files of the requested kind
are used; without such files, files without a kind suffix are used; colour and instance maps are
never used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from nightseg.core.classes import IGNORE_INDEX, LABEL_ID_TO_TRAIN_ID, NUM_CLASSES, VALID_LABEL_IDS
from nightseg.core.errors import UserError
from nightseg.core.io import json_safe, list_images, prefetch, read_image, read_label
from nightseg.evaluation.exposure import DEFAULT_AVERAGE, ExposureConfusion, exposure_scores
from nightseg.evaluation.metrics import AVERAGES, ConfusionMatrix, segmentation_scores

FORMATS = ("trainIds", "labelIds")

# kind -> file-name suffixes (before the extension) that mark it; longest first within a kind
_KIND_SUFFIXES: dict[str, tuple[str, ...]] = {
    "trainIds": (
        "_gtFine_labelTrainIds", "_gtCoarse_labelTrainIds", "_gt_labelTrainIds", "_labelTrainIds",
        "_trainIds", "_train_id",
    ),
    "labelIds": ("_gtFine_labelIds", "_gtCoarse_labelIds", "_gt_labelIds", "_labelIds"),
    "invalid": ("_gt_invIds", "_invIds"),
    "other": (
        "_gtFine_instanceIds", "_gtCoarse_instanceIds", "_gtFine_color", "_gtCoarse_color",
        "_gt_labelColor", "_labelColor", "_instanceIds", "_color",
    ),
}
# suffixes of input images and prediction files that carry no kind
_PLAIN_SUFFIXES = ("_leftImg8bit", "_rgb_anon", "_rgb", "_prediction", "_pred")
_SUFFIXES = sorted(
    [(s, kind) for kind, sufs in _KIND_SUFFIXES.items() for s in sufs] + [(s, "plain") for s in _PLAIN_SUFFIXES],
    key=lambda item: -len(item[0]),
)


def scene_stem(path: str | os.PathLike) -> tuple[str, str]:
    """Return ``(stem, kind)`` of a file: the scene stem and its map kind.

    kind is ``"trainIds"``, ``"labelIds"``, ``"invalid"``, ``"other"`` (colour / instance maps) or
    ``"plain"`` (no kind suffix: images, predictions). E.g. ``x_gtFine_labelIds.png -> ("x", "labelIds")``,
    ``x_leftImg8bit_pred.png -> ("x", "plain")``.
    """
    name = Path(path).name
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix else name
    kind = "plain"
    changed = True
    while changed:
        changed = False
        for suffix, suffix_kind in _SUFFIXES:
            if stem.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                if kind == "plain":
                    kind = suffix_kind
                changed = True
                break
    return stem, kind


def _collect(folder: Path, wanted: str, role: str, option: str, suffix: str | None = ".png") -> dict[str, Path]:
    """Return ``{stem: path}`` of the files of kind `wanted` in `folder` (else the kind-less ones)."""
    files = list_images(folder, suffix)
    by_kind: dict[str, list[tuple[str, Path]]] = {}
    for path in files:
        stem, kind = scene_stem(path)
        by_kind.setdefault(kind, []).append((stem, path))
    chosen = by_kind.get(wanted) or ([] if wanted == "plain" else by_kind.get("plain", []))
    if not chosen:
        for other in FORMATS:
            if wanted in FORMATS and other != wanted and by_kind.get(other):
                n = len(by_kind[other])
                raise UserError(
                    f"{folder}: found {n} *_{other} maps but no {role} in {wanted} format "
                    f"(first: {by_kind[other][0][1]}); pass {option} {other}"
                )
        what = "images" if suffix is None else "*.png maps"
        raise UserError(f"{folder}: no {role} found (looked for {what}, recursively)")
    out: dict[str, Path] = {}
    for stem, path in chosen:
        if stem in out:
            raise UserError(f"{path}: same scene stem {stem!r} as {out[stem]}; keep one {role} file per scene")
        out[stem] = path
    return out


@dataclass
class Pair:
    """The files of one scene."""

    stem: str
    pred: Path
    gt: Path
    image: Path | None = None
    invalid: Path | None = None


def match_files(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    gt_format: str = "trainIds",
    pred_format: str = "trainIds",
    images_dir: str | os.PathLike | None = None,
    invalid_dir: str | os.PathLike | None = None,
) -> list[Pair]:
    """Return the prediction / ground truth (/ image / invalid mask) files matched by scene stem.

    Raises a UserError naming the folder and the first unmatched file when a prediction has no
    ground truth or the reverse, and when a matched scene has no image or invalid mask.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds = _collect(pred_dir, pred_format, "predictions", "--pred-format")
    gts = _collect(gt_dir, gt_format, "ground-truth maps", "--gt-format")
    no_gt = sorted(set(preds) - set(gts))
    if no_gt:
        raise UserError(
            f"{pred_dir}: {len(no_gt)} of {len(preds)} predictions have no ground truth in {gt_dir} "
            f"(first: {preds[no_gt[0]]}, scene stem {no_gt[0]!r})"
        )
    no_pred = sorted(set(gts) - set(preds))
    if no_pred:
        raise UserError(
            f"{gt_dir}: {len(no_pred)} of {len(gts)} ground-truth maps have no prediction in {pred_dir} "
            f"(first: {gts[no_pred[0]]}, scene stem {no_pred[0]!r})"
        )
    pairs = [Pair(stem, preds[stem], gts[stem]) for stem in sorted(gts)]
    extras = [("image", images_dir, "plain", "images", "--images", None)]
    extras.append(("invalid", invalid_dir, "invalid", "invalid masks", "--invalid", ".png"))
    for attr, folder, kind, role, option, suffix in extras:
        if folder is None:
            continue
        found = _collect(Path(folder), kind, role, option, suffix)
        missing = [p for p in pairs if p.stem not in found]
        if missing:
            raise UserError(
                f"{folder}: {len(missing)} of {len(pairs)} scenes have no {role[:-1]} here "
                f"(first: ground truth {missing[0].gt}, scene stem {missing[0].stem!r})"
            )
        for p in pairs:
            setattr(p, attr, found[p.stem])
    return pairs


def _check_ids(label: np.ndarray, path: Path, fmt: str, num_classes: int, option: str) -> None:
    present = np.flatnonzero(np.bincount(label.reshape(-1), minlength=256))
    if fmt == "trainIds":
        bad = [int(v) for v in present if v >= num_classes and v != IGNORE_INDEX]
        expected = f"a trainId map (0-{num_classes - 1}, {IGNORE_INDEX} = ignore)"
        hint = f"; if it holds Cityscapes labelIds pass {option} labelIds" if max(bad, default=0) <= 33 else ""
    else:
        bad = [int(v) for v in present if int(v) not in VALID_LABEL_IDS]
        expected = f"a Cityscapes labelId map (ids {min(VALID_LABEL_IDS)}-{max(VALID_LABEL_IDS)})"
        hint = f"; if it holds trainIds pass {option} trainIds" if bad == [IGNORE_INDEX] else ""
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise UserError(f"{path}: contains ids {shown}; expected {expected}{hint}")


def _to_train_ids(label: np.ndarray, fmt: str) -> np.ndarray:
    return LABEL_ID_TO_TRAIN_ID[label] if fmt == "labelIds" else label


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


@dataclass
class _Loaded:
    pred: np.ndarray
    gt: np.ndarray
    image: np.ndarray | None
    invalid: np.ndarray | None


def _load(pair: Pair, gt_format: str, pred_format: str, num_classes: int) -> _Loaded:
    """Read and check one scene's files; return trainId maps (uint8), image (HxWx3) and invalid mask."""
    gt = read_label(pair.gt)
    _check_ids(gt, pair.gt, gt_format, num_classes, "--gt-format")
    pred = read_label(pair.pred)
    if pred.shape != gt.shape:
        raise UserError(
            f"{pair.pred}: prediction is {_size(pred)} but its ground truth {pair.gt} is {_size(gt)}; "
            "predictions must be at ground-truth resolution"
        )
    _check_ids(pred, pair.pred, pred_format, num_classes, "--pred-format")
    image = invalid = None
    if pair.image is not None:
        image = read_image(pair.image)
        if image.shape[:2] != gt.shape:
            raise UserError(
                f"{pair.image}: image is {_size(image)} but its ground truth {pair.gt} is {_size(gt)}; "
                "exposure bins need the image at ground-truth resolution"
            )
    if pair.invalid is not None:
        mask = read_label(pair.invalid)
        if mask.shape != gt.shape:
            raise UserError(f"{pair.invalid}: invalid mask is {_size(mask)} but its ground truth {pair.gt} is {_size(gt)}")
        invalid = mask != 0
    return _Loaded(_to_train_ids(pred, pred_format), _to_train_ids(gt, gt_format), image, invalid)


T = TypeVar("T")
R = TypeVar("R")


def evaluate_folder(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    gt_format: str = "trainIds",
    pred_format: str = "trainIds",
    images_dir: str | os.PathLike | None = None,
    invalid_dir: str | os.PathLike | None = None,
    num_classes: int = NUM_CLASSES,
    average: str = DEFAULT_AVERAGE,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score prediction PNGs against ground truth and return the results as a JSON-ready dict.

    Keys: the inputs, ``num_images``, the `segmentation_scores` keys (``mIoU``, ``pixel_accuracy``,
    ``mean_class_accuracy``, ``fw_iou``, ``pixels``, ``classes_scored``, ``per_class``),
    ``confusion_matrix`` (rows ground truth, columns prediction, last column "no class"), and with
    `images_dir` also ``exposure`` (`exposure_scores`: ``mEF1`` and per-bin EF1 / mIoU, EGNet paper Sec. 5.1).
    Undefined scores are None (not NaN) so the dict is valid JSON.
    """
    for fmt, option in ((gt_format, "--gt-format"), (pred_format, "--pred-format")):
        if fmt not in FORMATS:
            raise UserError(f"{option} {fmt}: expected one of {', '.join(FORMATS)}")
    if "labelIds" in (gt_format, pred_format) and num_classes != NUM_CLASSES:
        raise UserError(f"--num-classes {num_classes}: labelIds maps always score the {NUM_CLASSES} Cityscapes classes")
    if average not in AVERAGES:
        raise UserError(f"--ef1-average {average}: expected one of {', '.join(AVERAGES)}")
    pairs = match_files(pred_dir, gt_dir, gt_format, pred_format, images_dir, invalid_dir)
    if images_dir is not None:
        acc: ExposureConfusion | ConfusionMatrix = ExposureConfusion(num_classes)
    else:
        acc = ConfusionMatrix(num_classes)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    loaded = prefetch(lambda p: _load(p, gt_format, pred_format, num_classes), pairs, workers)
    for item in tqdm(loaded, total=len(pairs), desc="eval", unit="img", disable=None if progress else True):
        pred, gt = torch.from_numpy(item.pred), torch.from_numpy(item.gt)
        invalid = torch.from_numpy(item.invalid) if item.invalid is not None else None
        if isinstance(acc, ExposureConfusion):
            image = torch.from_numpy(item.image).permute(2, 0, 1)
            acc.update(pred, gt, image, invalid=invalid)
        else:
            acc.update(pred, gt, invalid=invalid)
    cm = acc.total() if isinstance(acc, ExposureConfusion) else acc
    results: dict[str, Any] = {
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "gt_format": gt_format,
        "pred_format": pred_format,
        "images_dir": None if images_dir is None else str(images_dir),
        "invalid_dir": None if invalid_dir is None else str(invalid_dir),
        "num_classes": num_classes,
        "num_images": len(pairs),
    }
    results.update(segmentation_scores(cm))
    if isinstance(acc, ExposureConfusion):
        results["exposure"] = exposure_scores(acc, average)  # type: ignore[arg-type]
    results["confusion_matrix"] = cm.counts.tolist()
    return json_safe(results)


def _fmt(x: float | None, width: int = 7) -> str:
    return f"{x:{width}.4f}" if x is not None else f"{'-':>{width}}"


def format_report(results: dict[str, Any]) -> str:
    """Return the human-readable table of `evaluate_folder` results (scores are fractions, 1 = perfect)."""
    lines = [f"{'class':<15}{'IoU':>7}  {'acc':>7}  {'gt pixels':>11}"]
    for name, s in results["per_class"].items():
        lines.append(f"{name:<15}{_fmt(s['iou'])}  {_fmt(s['accuracy'])}  {s['gt_pixels']:>11}")
    lines.append("-" * 44)
    lines.append(
        f"mIoU {_fmt(results['mIoU'], 0)} over {results['classes_scored']} classes | "
        f"pixel acc {_fmt(results['pixel_accuracy'], 0)} | mean class acc {_fmt(results['mean_class_accuracy'], 0)} | "
        f"fwIoU {_fmt(results['fw_iou'], 0)}"
    )
    exp = results.get("exposure")
    if exp:
        lines.append("")
        lines.append(f"{'exposure (V)':<15}{'share':>7}  {'EF1':>7}  {'mIoU':>7}")
        for b in exp["bins"]:
            low, high = b["range"]
            rng = f"[{low:.1f}, {high:.1f}" + ("]" if high >= 1 else ")")
            share = f"{100 * b['share']:6.1f}%" if b["share"] is not None else f"{'-':>7}"
            lines.append(f"{rng:<15}{share}  {_fmt(b['ef1'])}  {_fmt(b['mIoU'])}")
        used = sum(1 for b in exp["bins"] if b["pixels"])
        lines.append("-" * 44)
        lines.append(f"mEF1 {_fmt(exp['mEF1'], 0)} ({exp['average']}-averaged precision/recall, {used} bins with labels)")
    lines.append(f"{results['num_images']} images, {results['pixels']} labelled pixels")
    return "\n".join(lines)
