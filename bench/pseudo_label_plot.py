"""Plot each self-training recipe's teacher pseudo-label accuracy per class over training (issue 20).

Reads the ``metrics.json`` histories of the benchmark's run folders (``OUT/<row>_seed<N>``) written by
`bench/synthetic_benchmark.py`: every validation (``train.val_every``) scores the teacher's pseudo labels of
the labelled synthetic night val frames against their ground truth (``teacher_accuracy``: the share of each
class's pixels the teacher labels right, i.e. recall; ``teacher_precision``: the share of the pixels it
labels as the class that are the class). One panel per recipe and score (``--key``, one or both), mean over
the seeds found; dynamic classes are solid, static ones dashed.

    python bench/pseudo_label_plot.py runs/benchmark_8x_converged --output docs/images/self_training_pseudo_labels.png
    python bench/pseudo_label_plot.py runs/benchmark_8x_converged_1200 --rows ulca_st_jitter \
        --key teacher_accuracy teacher_precision --output docs/images/self_training_1200_teacher.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

DYNAMIC = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
ROWS = ("dacs", "daformer", "mic", "hrda", "ulca_st", "ulca_st_jitter")
TITLES = {"dacs": "DACS", "daformer": "DAFormer (no FD)", "mic": "MIC", "hrda": "HRDA", "ulca_st": "ULCA + mean teacher",
          "ulca_st_jitter": "ULCA + mean teacher, paste jitter"}
SCORES = {"teacher_accuracy": "recall", "teacher_precision": "precision"}
COLUMNS = 3
"""Panels per row of the figure."""


def teacher_curves(out: Path, row: str, key: str = "teacher_accuracy") -> dict[str, list[tuple[int, float]]]:
    """Return ``{class: [(step, mean over seeds of the teacher's per-class score), ...]}`` for `row` (classes
    never in the ground truth left out)."""
    by_step: dict[str, dict[int, list[float]]] = {}
    for metrics in sorted(out.glob(f"{row}_seed*/metrics.json")):
        for entry in json.loads(metrics.read_text()).get("history", []):
            for name, value in (entry.get(key) or {}).items():
                if value is not None and not math.isnan(value):
                    by_step.setdefault(name, {}).setdefault(int(entry["step"]), []).append(100 * value)
    return {name: sorted((step, statistics.mean(v)) for step, v in steps.items()) for name, steps in by_step.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the benchmark's --out folder")
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--key", nargs="+", choices=list(SCORES), default=["teacher_accuracy"],
                        help="one panel per recipe and score")
    parser.add_argument("--output", "--png", dest="png", type=Path, default=Path("pseudo_labels.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nightseg.core.classes import CLASS_NAMES, PALETTE

    panels_wanted = [(r, key) for r in args.rows for key in args.key if teacher_curves(args.out, r, key)]
    if not panels_wanted:
        raise SystemExit(f"error: {args.out}: no run folder with a teacher history ({', '.join(args.rows)}_seed*)")
    colours = PALETTE.tolist()
    columns = min(COLUMNS, len(panels_wanted))
    lines = math.ceil(len(panels_wanted) / columns)
    # at least 8.4 inches wide, so that the legend and the title fit a figure of one or two panels
    fig, axes = plt.subplots(lines, columns, figsize=(max(4.2 * columns, 8.4), 3.6 * lines + 0.8), sharey=True,
                             squeeze=False)
    panels = axes.ravel()
    for ax in panels[len(panels_wanted):]:
        ax.set_visible(False)
    for ax, (row, key) in zip(panels, panels_wanted, strict=False):
        curves = teacher_curves(args.out, row, key)
        for name in CLASS_NAMES:
            if name not in curves or max(v for _, v in curves[name]) < 1.0:
                continue  # a class the teacher never labels: a flat line at 0 says nothing
            steps, values = zip(*curves[name], strict=True)
            dynamic = name in DYNAMIC
            ax.plot(steps, values, "-" if dynamic else "--", lw=2.2 if dynamic else 1.0,
                    color=[c / 255 for c in colours[CLASS_NAMES.index(name)]], label=name)
        seeds = len(list(args.out.glob(f"{row}_seed*/metrics.json")))
        score = f", {SCORES[key]}" if len(args.key) > 1 else ""
        ax.set_title(f"{TITLES.get(row, row)} ({seeds} seed{'s' if seeds > 1 else ''}){score}", fontsize=10)
        ax.set_ylabel(f"teacher {SCORES[key]} (%)")
        ax.set_xlabel("fine-tuning step")
        ax.grid(alpha=0.3)
    handles, labels = {}, []
    for ax in panels:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    fig.legend([handles[n] for n in labels], labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8,
               title="class (solid: dynamic, dashed: static)")
    fig.suptitle("Self-training from the converged source model:\nthe teacher's pseudo labels per class, night val")
    fig.tight_layout(rect=(0, 1.0 / (3.6 * lines + 0.8), 1, 0.95))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
