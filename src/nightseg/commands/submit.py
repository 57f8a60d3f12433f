"""`nightseg submit {dark_zurich,acdc,cityscapes} PRED_DIR --out FILE.zip (--list F | --root DIR)`.

Packs the predictions of ``nightseg predict`` (for Dark Zurich: ``nightseg predict --confidence``) into
the archive the benchmark's evaluation server expects; see `nightseg.evaluation.submission`. The test
image names come from a list file (e.g. Dark Zurich's ``zurich_test.txt``) or the dataset root. Every
prediction's name, size, dtype and values are checked, and the number of test images (Dark Zurich 151,
Cityscapes 1525, ACDC 500 per condition); on any problem nothing is written (exit 2). ACDC needs all
four conditions (fog, night, rain, snow) unless ``--conditions`` names the ones to pack.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nightseg.core.io import check_output_file
from nightseg.evaluation.submission import BENCHMARK_SPECS, BENCHMARKS, expected_images, pack_submission


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the `submit` command."""
    p = subparsers.add_parser("submit", parents=[common], help="pack predictions into a benchmark submission zip")
    p.add_argument("benchmark", choices=BENCHMARKS, help="which test server the archive is for")
    p.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="folder written by `nightseg predict`")
    p.add_argument("--out", type=Path, required=True, help="archive to write (.zip)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--list", type=Path, help="file listing the test images, one path per line")
    source.add_argument("--root", type=Path, help="dataset root holding the test images")
    p.add_argument("--no-uncertainty", action="store_true",
                   help="ACDC: pack labelTrainIds only (standard track, no invalid/confidence maps)")
    p.add_argument("--fill-uncertainty", action="store_true",
                   help="Dark Zurich/ACDC: accept scenes without invalid/confidence maps (no invalid pixel, "
                        "confidence 1.0: UIoU then equals IoU)")
    p.add_argument("--conditions", nargs="+", metavar="COND", choices=BENCHMARK_SPECS["acdc"].conditions,
                   help="ACDC: pack only these conditions (each with its 500 test images; images of the others "
                        "are left out); default: all of fog, night, rain, snow, each required")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`nightseg submit`: check and pack; print what was written."""
    check_output_file(args.out)
    images = expected_images(args.benchmark, args.list, args.root)
    info = pack_submission(args.benchmark, args.pred_dir, args.out, images, uncertainty=not args.no_uncertainty,
                           fill_uncertainty=args.fill_uncertainty, conditions=args.conditions,
                           source=args.list if args.list is not None else args.root)
    note = f"; {info['ignored']} prediction(s) of other images not packed" if info["ignored"] else ""
    if args.conditions:
        note += f"; conditions {', '.join(info['conditions'])} only (a subset of the {args.benchmark} test set)"
    print(f"wrote {info['archive']}: {info['images']} test images, {info['entries']} files, "
          f"{info['bytes'] / 2**20:.1f} MB{note}")
    return 0
