"""`nightseg data check NAME ROOT`: validate a copy of a dataset (counts, unmatched files, label values, sizes)."""

from __future__ import annotations

import argparse

from nightseg.data import DATASET_NAMES


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``data`` command and its ``check`` subcommand."""
    parser = subparsers.add_parser("data", parents=[common], help="check a dataset copy",
                                   description="Inspect datasets on disk.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    check = actions.add_parser(
        "check", parents=[common], help="validate a dataset copy and print a summary",
        description="Validate a copy of a dataset: counts per split, unmatched files, label values, image "
        "sizes and every defect (naming the file). Exit 0 clean, 1 defects found, 2 wrong layout.",
    )
    check.add_argument("name", choices=DATASET_NAMES, metavar="NAME", help=f"one of {', '.join(DATASET_NAMES)}")
    check.add_argument("root", help="the dataset root folder (layouts: docs/datasets.md)")
    check.add_argument("--split", default=None, help="check only this split (default: every split present)")
    check.add_argument("--skip-bad", action="store_true",
                       help="report defects but exit 0 if the rest is usable (what loading with skip_bad does)")
    check.set_defaults(func=run)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run(args: argparse.Namespace) -> int:
    """Run ``nightseg data check`` and return its exit code."""
    from nightseg.data.check import run_check

    return run_check(args.name, args.root, split=args.split, skip_bad=args.skip_bad)
