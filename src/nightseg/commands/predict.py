"""`nightseg predict CKPT INPUT... --out DIR`: segment images, folders, glob patterns and videos
(argument parsing; the work is `nightseg.pipelines.predict`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nightseg.commands.inference_options import add_inference_options, predictor_from_args
from nightseg.core.errors import UserError
from nightseg.core.io import check_output_dir
from nightseg.pipelines.predict import DEFAULT_OUTPUTS, SUFFIXES, expand_inputs, parse_outputs, predict_inputs


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the `predict` command."""
    p = subparsers.add_parser("predict", parents=[common], help="segment images, folders, globs and videos with a checkpoint")
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="model .safetensors (with its .json), exported .onnx, or a published model: file, folder, hf:ORG/NAME")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders (recursive) or glob patterns")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_inference_options(p)
    p.add_argument("--outputs", default=",".join(DEFAULT_OUTPUTS),
                   help=f"comma list of {', '.join(SUFFIXES)} (default {','.join(DEFAULT_OUTPUTS)})")
    p.add_argument("--confidence", action="store_true", help="also write confidence and invalid maps (benchmark submissions)")
    p.add_argument("--video-overlay", action="store_true", help="write <stem>_overlay.mp4 for each video")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs already exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`nightseg predict`: see `nightseg.pipelines.predict`."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if not 0.0 <= args.invalid_threshold <= 1.0:
        raise UserError(f"--invalid-threshold {args.invalid_threshold}: must be in [0, 1]")
    kinds = parse_outputs(args.outputs, args.confidence)
    expand_inputs(args.inputs)  # bad inputs and an unwritable --out fail before the model loads
    check_output_dir(args.out)
    segmenter = predictor_from_args(args)
    stats = predict_inputs(segmenter, args.inputs, args.out, kinds, args.invalid_threshold, args.batch_size,
                           args.skip_bad, args.workers, args.overwrite, args.video_overlay)
    parts = [f"{stats.images} image(s)"] + ([f"{stats.frames} video frame(s)"] if stats.videos else [])
    msg = f"predicted {' and '.join(parts)} into {args.out} in {stats.seconds:.1f} s"
    if stats.skipped_done:
        msg += f"; {stats.skipped_done} already done (skipped)"
    if stats.skipped_bad:
        msg += f"; {len(stats.skipped_bad)} unreadable input(s) skipped"
    if stats.single_channel:
        msg += f"; {len(stats.single_channel)} single-channel input(s) read as gray RGB"
    print(msg)
    return 0


