"""`nightseg evaluate CKPT --dataset NAME --root DIR [--split val] [--out DIR]`: score a checkpoint on a dataset.

Runs the model over every sample of the split (the dataset loaders of `nightseg.data`, full resolution)
and reports mIoU and per-class IoU over all labelled pixels, mEF1 and IoU per exposure bin (EGNet paper),
and, where the dataset has invalid masks (Dark Zurich val, ACDC), the uncertainty-aware mUIoU of the
Dark Zurich benchmark (pixels whose confidence is below ``--invalid-threshold`` declared invalid), its
average over confidence thresholds and the mIoU over valid pixels only. Writes ``report.md``,
``report.json`` and plots (per-class IoU, exposure curve, confusion matrix) into --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from nightseg.commands.inference_options import add_inference_options, predictor_from_args
from nightseg.core.errors import UserError
from nightseg.core.io import check_output_dir
from nightseg.evaluation.exposure import DEFAULT_AVERAGE
from nightseg.evaluation.metrics import AVERAGES
from nightseg.evaluation.report import write_report
from nightseg.models.pretrained.reference import parse_hf
from nightseg.pipelines.evaluate import evaluate_dataset, inference_settings


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the `evaluate` command."""
    p = subparsers.add_parser(
        "evaluate", parents=[common],
        help="run a checkpoint over a labelled dataset split and score it (report + plots)",
        description="Run the checkpoint CKPT over a labelled dataset split and score its predictions (mIoU, "
        "per-class IoU, mEF1, per-exposure-bin IoU, UIoU); writes a Markdown report with plots. To score "
        "prediction PNGs already on disk, without a model, use `nightseg eval`.")
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="model .safetensors (with its .json), exported .onnx, or a published model: file, folder, hf:ORG/NAME")
    p.add_argument("--dataset", required=True, help="dataset name (see `nightseg data`), e.g. dark_zurich, acdc, cityscapes")
    p.add_argument("--root", type=Path, required=True, help="dataset root folder")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--out", type=Path, help="report folder (default: eval_<dataset>_<split> beside the checkpoint)")
    p.add_argument("--limit", type=int, help="score only the first N samples")
    p.add_argument("--ef1-average", choices=AVERAGES, default=DEFAULT_AVERAGE, help="precision/recall averaging of EF1")
    add_inference_options(p)
    p.set_defaults(func=run)


def _grid_threshold(value: float) -> float:
    if not 0.0 <= value < 1.0 or abs(value * 100 - round(value * 100)) > 1e-9:
        raise UserError(f"--invalid-threshold {value}: evaluate scores thresholds 0, 0.01, ..., 0.99")
    return round(value, 2)


def run(args: argparse.Namespace) -> int:
    """`nightseg evaluate`: see the module docstring."""
    from nightseg.data import build_dataset

    threshold = _grid_threshold(args.invalid_threshold)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be at least 1")
    hub = parse_hf(args.checkpoint)  # a hub reference has no folder of its own: report into the current one
    out = args.out or (Path(".") if hub else args.checkpoint.parent) / f"eval_{args.dataset}_{args.split}"
    dataset = build_dataset(args.dataset, args.root, args.split, skip_bad=args.skip_bad)
    check_output_dir(out)  # before the model runs over the whole split
    segmenter = predictor_from_args(args)
    start = time.perf_counter()
    results = evaluate_dataset(segmenter, dataset, threshold, args.ef1_average, args.limit, args.skip_bad, args.workers)
    settings = {**inference_settings(segmenter),  # what ran: a checkpoint's own sliding window included
                "relight": "off" if args.no_relight else (args.relight or "checkpoint"), "seconds": round(time.perf_counter() - start, 1)}
    results = {"checkpoint": str(args.checkpoint), "dataset": args.dataset, "root": str(args.root), "split": args.split,
               "settings": settings, **results}
    paths = write_report(results, out, title=f"{args.checkpoint.name} on {args.dataset} {args.split}")

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}"

    line = f"mIoU {pct(results['mIoU'])} | mEF1 {pct(results['exposure']['mEF1'])}"
    if "uncertainty" in results:
        u = results["uncertainty"]
        line += f" | mUIoU@{u['threshold']} {pct(u['mUIoU'])} | avg mUIoU {pct(u['average_mUIoU'])}"
    print(f"{line} ({results['num_images']} images)")
    print(f"report: {paths['markdown']}")
    return 0
