"""`nightseg nightlab --config FILE --out DIR [KEY=VALUE...]`: the NightLab stages (NightLab), resumable.

Thin wrapper around `nightseg.methods.nightlab.run_nightlab`; see that module for the stages.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `nightlab` command."""
    p = subparsers.add_parser(
        "nightlab", parents=[common], help="NightLab: Phi_I, hard classes, Phi_R, RDN, HDM, merge",
        description="Run the NightLab stages into --out (rerun the same command to resume): Phi_I, hard-class "
        "selection, the region-level model Phi_R, the RDN, the HDM labels and training, and the export of "
        "OUT/nightlab.safetensors (and OUT/nightlab_rdn.safetensors, without HDM) for `nightseg predict`.",
    )
    p.add_argument("--config", required=True, metavar="YAML", help="NightLab recipe, e.g. configs/cpu/nightlab.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.root=data/synthetic")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (all stages)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the pipeline and print its summary; 0 on success."""
    from nightseg.pipelines.nightlab import run_nightlab

    summary = run_nightlab(args.config, list(args.overrides), args.out)
    print(json.dumps(summary, indent=2))
    return 0
