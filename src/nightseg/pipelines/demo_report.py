"""The pictures of the demo report (`nightseg demo`, step 5), and the rule that picks its example scenes.

``predictions.png``: one row per example scene, titled columns (night input | Zero-DCE relit | each model |
ground truth | ULCA vs source-only), a class-colour legend and a legend of the error map, which marks the
pixels ULCA gets right and source-only wrong (fixed, green) and the reverse (broken, red).
``class_iou.png``: night per-class IoU bars of every model; ``exposure.png``: night mIoU per exposure bin.

The example scenes are chosen by a stated rule, never by hand (`pick_scenes`): every night val scene is scored
by its pixel-accuracy gain of ULCA over source-only, and the report shows the scenes with the largest, the
median and the smallest gain, so that it shows where ULCA helps, a typical scene and where it hurts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nightseg.core.classes import CLASS_NAMES, IGNORE_INDEX, PALETTE, colorize
from nightseg.core.io import read_image, read_label
from nightseg.evaluation.report import save_figure
from nightseg.inference import Predictor
from nightseg.models.relight import load_dce_weights, relight

FIXED = np.array([40, 170, 60], dtype=np.uint8)  # ULCA right, source-only wrong
BROKEN = np.array([220, 40, 40], dtype=np.uint8)  # ULCA wrong, source-only right
BOTH_WRONG = np.array([90, 90, 90], dtype=np.uint8)
BOTH_RIGHT = np.array([235, 235, 235], dtype=np.uint8)
IGNORED = np.array([0, 0, 0], dtype=np.uint8)
RULE = ("the night val scenes with the largest, the median and the smallest pixel-accuracy gain of ULCA over "
        "source-only (every scene scored, none picked by hand)")


@dataclass(frozen=True)
class SceneScore:
    """One night val scene: its files and the pixel accuracy of source-only and ULCA on it."""

    image: Path
    label: Path
    source_only: float
    ulca: float

    @property
    def gain(self) -> float:
        """ULCA's pixel accuracy minus source-only's (the quantity `pick_scenes` ranks by)."""
        return self.ulca - self.source_only

    @property
    def name(self) -> str:
        """The scene's stem (file name without ``_rgb_anon.png``)."""
        return self.image.name.replace("_rgb_anon.png", "")


def figure(width: float, height: float) -> Any:
    """Return a matplotlib Figure of `width` x `height` inches on the Agg canvas (no pyplot, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def night_val_scenes(data: Path) -> list[tuple[Path, Path]]:
    """Return (image, trainIds label) paths of the demo's synthetic night val scenes (Dark Zurich layout), sorted."""
    images = sorted((data / "dark_zurich" / "rgb_anon" / "val" / "night").rglob("*_rgb_anon.png"))
    gt = data / "dark_zurich" / "gt" / "val" / "night"
    return [(p, next(gt.rglob(p.name.replace("_rgb_anon.png", "_gt_labelTrainIds.png")))) for p in images]


def pixel_accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    """Return the share of labelled pixels (not 255) of `label` that `pred` gets right (NaN when none is labelled)."""
    valid = label != IGNORE_INDEX
    return float((pred[valid] == label[valid]).mean()) if valid.any() else float("nan")


def score_scenes(scenes: Sequence[tuple[Path, Path]], source_only: Predictor, ulca: Predictor) -> list[SceneScore]:
    """Return the per-scene pixel accuracy of source-only and ULCA for every (image, label) of `scenes`."""
    scores = []
    for image_path, label_path in scenes:
        image, label = read_image(image_path), read_label(label_path)
        scores.append(SceneScore(image_path, label_path, pixel_accuracy(source_only.predict(image).labels, label),
                                 pixel_accuracy(ulca.predict(image).labels, label)))
    return scores


def pick_scenes(scores: Sequence[SceneScore]) -> list[tuple[str, SceneScore]]:
    """Return ``[(why, scene)]``: the scenes of largest, median and smallest ULCA gain (see `RULE`), without
    repeats; ties are broken by scene name so the choice is deterministic."""
    ranked = sorted((s for s in scores if np.isfinite(s.gain)), key=lambda s: (-s.gain, s.name))
    if not ranked:
        return []
    picks = [("largest gain", ranked[0]), ("median gain", ranked[(len(ranked) - 1) // 2]),
             ("smallest gain", ranked[-1])]
    seen: set[str] = set()
    unique = []
    for why, scene in picks:
        if scene.name not in seen:
            seen.add(scene.name)
            unique.append((why, scene))
    return unique


def error_map(source_only: np.ndarray, ulca: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Return an HxWx3 uint8 map of where ULCA fixes (green) and breaks (red) source-only's prediction; both
    right is light gray, both wrong dark gray, unlabelled pixels black."""
    src_ok, ulca_ok = source_only == label, ulca == label
    out = np.empty((*label.shape, 3), dtype=np.uint8)
    out[src_ok & ulca_ok] = BOTH_RIGHT
    out[~src_ok & ~ulca_ok] = BOTH_WRONG
    out[~src_ok & ulca_ok] = FIXED
    out[src_ok & ~ulca_ok] = BROKEN
    out[label == IGNORE_INDEX] = IGNORED
    return out


def plot_predictions(picks: Sequence[tuple[str, SceneScore]], segmenters: dict[str, Predictor],
                     titles: dict[str, str], relight_weights: Path, path: Path) -> Path:
    """Draw the example scenes with titled columns, the class legend and the error-map legend into `path`."""
    from matplotlib.patches import Patch

    dce = load_dce_weights(relight_weights)
    columns = ["night input", "Zero-DCE relit", *(titles[k] for k in segmenters), "ground truth",
               "ULCA vs source-only"]
    fig = figure(2.1 * len(columns), 1.25 * max(1, len(picks)) + 1.6)
    grid = fig.add_gridspec(len(picks) + 2, len(columns), height_ratios=[1.0] * len(picks) + [0.75, 0.45])
    for row, (why, scene) in enumerate(picks):
        image, label = read_image(scene.image), read_label(scene.label)
        preds = {k: s.predict(image).labels for k, s in segmenters.items()}
        cells = [image, relight(dce, image), *(colorize(p) for p in preds.values()), colorize(label),
                 error_map(preds["source_only"], preds["ulca"], label)]
        for col, cell in enumerate(cells):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{why}\n{100 * scene.gain:+.1f} pts", fontsize=8)
    classes = [Patch(facecolor=PALETTE[i] / 255.0, edgecolor="none", label=n) for i, n in enumerate(CLASS_NAMES)]
    errors = [Patch(facecolor=c / 255.0, edgecolor="0.5", label=t) for c, t in (
        (FIXED, "fixed by ULCA"), (BROKEN, "broken by ULCA"), (BOTH_RIGHT, "both right"),
        (BOTH_WRONG, "both wrong"), (IGNORED, "unlabelled"))]
    for row, handles, title, ncol in ((len(picks), classes, "classes", 10),
                                      (len(picks) + 1, errors, "last column: ULCA vs source-only", 5)):
        ax = fig.add_subplot(grid[row, :])
        ax.axis("off")
        ax.legend(handles=handles, loc="center", ncol=ncol, fontsize=8, frameon=False, title=title,
                  title_fontsize=8)
    return save_figure(fig, path, dpi=100)


def plot_class_iou(results: dict[str, dict[str, Any]], titles: dict[str, str], path: Path) -> Path:
    """Draw the night per-class IoU of every model as grouped bars into `path`."""
    keys = [k for k in titles if k in results]
    fig = figure(max(8.0, 0.6 * len(CLASS_NAMES) + 2), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(CLASS_NAMES))
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        per_class = results[key]["night"]["per_class"]
        values = [100 * (per_class[n]["iou"] or 0.0) for n in CLASS_NAMES]
        miou = 100 * (results[key]["night"]["mIoU"] or 0.0)
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, values, width, label=f"{titles[key]} (mIoU {miou:.1f})")
    ax.set_xticks(x)
    ax.set_xticklabels(CLASS_NAMES, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU on synthetic night val (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi=100)


def plot_exposure_curve(results: dict[str, dict[str, Any]], titles: dict[str, str], path: Path) -> Path:
    """Draw the night mIoU per exposure bin (HSV value V) of every model, with each bin's pixel share, into `path`."""
    fig = figure(7.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    share_ax = ax.twinx()
    bins = None
    for key in (k for k in titles if k in results):
        bins = results[key]["night"]["exposure"]["bins"]
        centers = [(b["range"][0] + b["range"][1]) / 2 for b in bins]
        values = [np.nan if b["mIoU"] is None else 100 * b["mIoU"] for b in bins]
        ax.plot(centers, values, marker="o", label=titles[key])
    if bins:
        share_ax.bar([(b["range"][0] + b["range"][1]) / 2 for b in bins], [100 * (b["share"] or 0.0) for b in bins],
                     width=0.08, color="0.85", zorder=0)
        share_ax.set_ylabel("share of pixels (%)", color="0.5")
    ax.set_zorder(share_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xlabel("exposure bin (HSV value V = max(R, G, B))")
    ax.set_ylabel("mIoU in the bin (%)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=100)


def scene_table(picks: Sequence[tuple[str, SceneScore]], total: int) -> str:
    """Return the Markdown table of the example scenes and their pixel accuracies, with the rule that chose them."""
    lines = [f"Example scenes: {RULE}; {total} scenes scored.", "",
             "| row | scene | source-only pixel acc | ULCA pixel acc | gain (pts) |", "|---|---|---|---|---|"]
    lines += [f"| {why} | {s.name} | {100 * s.source_only:.1f} | {100 * s.ulca:.1f} | {100 * s.gain:+.1f} |"
              for why, s in picks]
    return "\n".join(lines)


def write_pictures(data: Path, checkpoints: dict[str, Path], titles: dict[str, str], relight_weights: Path,
                   results: dict[str, dict[str, Any]], out: Path) -> str:
    """Write ``predictions.png``, ``class_iou.png`` and ``exposure.png`` into `out`; return the report's
    Markdown section that shows them (with the scene table and what each column is)."""
    segmenters = {k: Predictor.from_checkpoint(p) for k, p in checkpoints.items()}
    scenes = night_val_scenes(data)
    picks = pick_scenes(score_scenes(scenes, segmenters["source_only"], segmenters["ulca"]))
    grid = plot_predictions(picks, segmenters, titles, relight_weights, out / "predictions.png")
    bars = plot_class_iou(results, titles, out / "class_iou.png")
    curve = plot_exposure_curve(results, titles, out / "exposure.png")
    columns = " | ".join(["night input", "Zero-DCE relit", *(titles[k] for k in segmenters), "ground truth",
                          "ULCA vs source-only"])
    return (f"## Per-class IoU (night val)\n\n![per-class IoU]({bars.name})\n\n"
            f"## mIoU per exposure bin (night val)\n\n![exposure curve]({curve.name})\n\n"
            f"## Example scenes\n\n{scene_table(picks, len(scenes))}\n\n"
            f"Columns of the picture: {columns}. In the last column green marks pixels that ULCA gets right and "
            "source-only wrong (fixed), red the reverse (broken).\n\n"
            f"![predictions]({grid.name})\n")
