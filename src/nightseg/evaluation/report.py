"""Evaluation reports: ``report.json``, ``report.md`` and three plots, from a results dict.

The results dict is what `nightseg.evaluation.folder_eval.evaluate_folder` or ``nightseg evaluate``
return: ``mIoU``, ``per_class`` (``{name: {"iou", ...}}``), ``confusion_matrix`` (rows ground truth,
columns prediction, last column "no class"), optionally ``exposure`` (`exposure_scores`) and
``uncertainty`` (UIoU). Plots are drawn with matplotlib's Agg canvas (no display, no global state):

* ``per_class_iou.png``: per-class IoU bars (and UIoU when present);
* ``exposure.png``: EF1 and mIoU per exposure bin, with each bin's share of the labelled pixels;
* ``confusion.png``: the row-normalised confusion matrix as a heatmap.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from nightseg.core.io import atomic_path, write_json


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path, dpi: float | None = None) -> Path:
    """Atomically write a matplotlib figure as PNG (parent folders created), release it, return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", dpi=dpi)
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # a pyplot-managed figure stays in memory until closed
        pyplot.close(fig)
    return path


def plot_per_class(results: dict[str, Any], path: Path) -> Path:
    """Draw per-class IoU bars (plus UIoU bars when the results have them) into `path`."""
    names = list(results["per_class"])
    iou = [results["per_class"][n]["iou"] for n in names]
    fig = _figure(max(6.0, 0.45 * len(names) + 2), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    values = [100 * v if v is not None else 0.0 for v in iou]
    unc = (results.get("uncertainty") or {}).get("per_class")
    width = 0.4 if unc else 0.8
    ax.bar(x - (width / 2 if unc else 0), values, width, label=f"IoU (mIoU {_pct(results['mIoU'])})", color="#4c72b0")
    if unc:
        u = [100 * unc[n]["uiou"] if unc[n]["uiou"] is not None else 0.0 for n in names]
        ax.bar(x + width / 2, u, width, label=f"UIoU (mUIoU {_pct(results['uncertainty']['mUIoU'])})", color="#dd8452")
    for i, v in enumerate(iou):
        if v is None:
            ax.text(i, 1, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Per-class IoU")
    return save_figure(fig, path)


def plot_exposure(exposure: dict[str, Any], path: Path) -> Path:
    """Draw EF1 and mIoU per exposure bin (lines) over each bin's pixel share (bars) into `path`."""
    bins = exposure["bins"]
    labels = [f"{b['range'][0]:.1f}-{b['range'][1]:.1f}" for b in bins]
    x = np.arange(len(bins))
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    share = [100 * (b["share"] or 0.0) for b in bins]
    ax2 = ax.twinx()
    ax2.bar(x, share, color="#cccccc", alpha=0.6, label="pixel share")
    ax2.set_ylabel("share of labelled pixels (%)")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)

    def series(key: str) -> list[float]:
        return [100 * b[key] if b[key] is not None else float("nan") for b in bins]

    ax.plot(x, series("ef1"), "o-", color="#c44e52", label=f"EF1 (mEF1 {_pct(exposure['mEF1'])})")
    ax.plot(x, series("mIoU"), "s-", color="#4c72b0", label="mIoU")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("exposure bin (HSV value of the input)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Scores per exposure bin")
    return save_figure(fig, path)


def plot_confusion(results: dict[str, Any], path: Path) -> Path:
    """Draw the row-normalised confusion matrix (ground truth rows, prediction columns) into `path`."""
    names = list(results["per_class"])
    counts = np.asarray(results["confusion_matrix"], dtype=np.float64)
    cols = names + (["none"] if counts.shape[1] > len(names) else [])
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = _figure(0.4 * len(cols) + 3, 0.4 * len(names) + 2)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the ground-truth class")
    ax.set_title("Confusion matrix (row-normalised)")
    return save_figure(fig, path)


def format_markdown(results: dict[str, Any], title: str = "Evaluation") -> str:
    """Return the Markdown report of `results` (scores in %)."""
    lines = [f"# {title}", ""]
    meta = {k: results[k] for k in ("checkpoint", "dataset", "root", "split", "num_images", "pixels") if k in results}
    for key, value in meta.items():
        lines.append(f"- **{key}**: {value}")
    if "settings" in results:
        lines.append(f"- **settings**: {', '.join(f'{k}={v}' for k, v in results['settings'].items())}")
    lines += ["", "## Summary", "", "| score | value |", "|---|---|", f"| mIoU | {_pct(results['mIoU'])} |"]
    for key, name in (("pixel_accuracy", "pixel accuracy"), ("mean_class_accuracy", "mean class accuracy"),
                      ("fw_iou", "frequency-weighted IoU")):
        if key in results:
            lines.append(f"| {name} | {_pct(results[key])} |")
    exp = results.get("exposure")
    if exp:
        lines.append(f"| mEF1 ({exp['average']}-averaged) | {_pct(exp['mEF1'])} |")
    unc = results.get("uncertainty")
    if unc:
        lines.append(f"| mIoU, valid pixels only | {_pct(unc['mIoU_valid'])} |")
        lines.append(f"| mUIoU at confidence threshold {unc['threshold']} | {_pct(unc['mUIoU'])} |")
        lines.append(f"| average mUIoU over thresholds | {_pct(unc['average_mUIoU'])} |")
    lines += ["", "## Per class", ""]
    header = "| class | IoU | accuracy | gt pixels |" + (" UIoU |" if unc else "")
    lines += [header, "|---|---|---|---|" + ("---|" if unc else "")]
    for name, s in results["per_class"].items():
        row = f"| {name} | {_pct(s['iou'])} | {_pct(s.get('accuracy'))} | {s.get('gt_pixels', '')} |"
        if unc:
            row += f" {_pct(unc['per_class'][name]['uiou'])} |"
        lines.append(row)
    if exp:
        lines += ["", "## Per exposure bin", "", "| V range | pixel share | EF1 | mIoU |", "|---|---|---|---|"]
        for b in exp["bins"]:
            lo, hi = b["range"]
            lines.append(f"| {lo:.1f}–{hi:.1f} | {_pct(b['share'])} | {_pct(b['ef1'])} | {_pct(b['mIoU'])} |")
    plots = results.get("plots") or {}
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({Path(p).name})" for name, p in plots.items()]
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out_dir: str | os.PathLike, title: str = "Evaluation") -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the plots into `out_dir`; return ``{name: path}``.

    `results` must be JSON-safe (NaN already replaced by None, as `evaluate_folder` does).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {"per_class_iou": plot_per_class(results, out / "per_class_iou.png")}
    if results.get("exposure"):
        plots["exposure"] = plot_exposure(results["exposure"], out / "exposure.png")
    if results.get("confusion_matrix"):
        plots["confusion"] = plot_confusion(results, out / "confusion.png")
    results = {**results, "plots": {k: str(v) for k, v in plots.items()}}
    paths = {"json": write_json(out / "report.json", results)}
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(format_markdown(results, title))
    paths["markdown"] = out / "report.md"
    return {**paths, **plots}
