"""`nightseg synth`: generate the synthetic day/night street-scene benchmark."""

from __future__ import annotations

import argparse
import re

from nightseg.core.errors import UserError
from nightseg.synthetic.generator import PRESETS, SPLITS, generate

_HELP = {
    "train": "Cityscapes-layout labelled day train scenes",
    "val": "Cityscapes-layout labelled day val scenes",
    "pairs": "Dark-Zurich-layout unlabelled day/night train pairs",
    "night_val": "Dark-Zurich-layout labelled night val scenes",
    "night_train": "NightCity-layout labelled night train scenes",
    "nightcity_val": "NightCity-layout labelled night val scenes",
}


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `synth` command."""
    p = subparsers.add_parser(
        "synth",
        parents=[common],
        help="generate the synthetic day/night street-scene benchmark",
        description="Render procedural street scenes by day and by night and write them in the Cityscapes, "
        "Dark Zurich and NightCity layouts (see docs/synthetic.md). Same seed, same bytes; rerunning into a "
        "folder only renders what is missing.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default="small", help=f"size and counts: {', '.join(PRESETS)} (default small)")
    p.add_argument("--size", help="image size HxW, e.g. 256x512 (overrides the preset)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    for sp in SPLITS:
        p.add_argument(f"--num-{sp.key.replace('_', '-')}", dest=f"num_{sp.key}", type=int, default=None,
                       metavar="N", help=f"number of {_HELP[sp.key]}")
    p.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="delete and regenerate an existing synthetic set")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """Parse ``HxW`` (e.g. ``256x512``) into (height, width)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"--size {text}: expected HxW, e.g. 256x512")
    return int(m.group(1)), int(m.group(2))


def run(args: argparse.Namespace) -> int:
    """Generate the benchmark and print what was written."""
    counts = {sp.key: getattr(args, f"num_{sp.key}") for sp in SPLITS}
    manifest = generate(args.out, preset=args.preset, size=parse_size(args.size), seed=args.seed, counts=counts,
                        workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    h, w = manifest["size"]
    c = manifest["counts"]
    print(f"wrote {args.out} (seed {manifest['seed']}, {h}x{w}):")
    print(f"  cityscapes/   {c['train']} train + {c['val']} val labelled day scenes")
    print(f"  dark_zurich/  {c['pairs']} day/night train pairs (zurich_dn_pair_train.csv) + {c['night_val']} "
          "labelled night val")
    print(f"  NightCity/    {c['night_train']} train + {c['nightcity_val']} val labelled night scenes")
    return 0
