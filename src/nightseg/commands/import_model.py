"""`nightseg import SRC --out FILE.safetensors [--format hf|smp|mmseg|dannet] [--class-map keep|FILE.json]`:
convert a published checkpoint into a NightSeg checkpoint (argument parsing; the work is
`nightseg.pipelines.pretrained`). SRC: a file, a folder or ``hf:ORG/NAME[@REV]`` (downloaded once)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nightseg.models.pretrained import FORMATS
from nightseg.pipelines.pretrained import import_model, summary


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the `import` command."""
    p = subparsers.add_parser("import", parents=[common],
                              help="convert a published checkpoint (Hugging Face, smp, mmsegmentation, DANNet) to NightSeg")
    p.add_argument("source", metavar="SRC", help="checkpoint file, model folder, or hf:ORG/NAME[@REV]")
    p.add_argument("--out", type=Path, required=True, help="NightSeg checkpoint to write (.safetensors + .json)")
    p.add_argument("--format", choices=FORMATS, help="source format (default: detected)")
    p.add_argument("--class-map", metavar="keep|FILE.json",
                   help="for models not trained on Cityscapes' 19 classes: 'keep' their classes, or a JSON list "
                        "whose entry i is the source class (name or index) for NightSeg class i")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`nightseg import`: convert, write, print one line."""
    path, meta = import_model(args.source, args.out, args.format, args.class_map)
    print(summary(path, meta))
    return 0
