"""`nightseg demo`: generate the synthetic benchmark, train source-only / ULCA / oracle on the CPU, report."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the `demo` command."""
    p = subparsers.add_parser(
        "demo", parents=[common], help="ULCA end to end on synthetic day/night scenes (CPU, minutes)",
        description="Generate synthetic day/night street scenes, train source-only, ULCA and a night-supervised "
        "oracle on the CPU, score them on synthetic night val and write a report. Rerun to resume.",
    )
    p.add_argument("--out", default="nightseg-demo", help="output folder (default: nightseg-demo)")
    p.add_argument("--quick", action="store_true", help="a few minutes instead of ~15 (fewer scenes and steps)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 on success."""
    from nightseg.pipelines.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0
