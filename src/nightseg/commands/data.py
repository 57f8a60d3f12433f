"""`nightseg data check NAME ROOT`: validate a copy of a dataset (counts, unmatched files, label values, sizes).

The selection options (``--timeofday``, ``--night-list``, ``--condition``, ...) pass the keyword arguments
the dataset's loader takes to choose its data (see `nightseg.data.check.SELECTION_FLAGS`), so the check
reads what `build_dataset(NAME, ROOT, split, **those)` reads; one that the loader does not take is an
error naming the datasets it applies to.
"""

from __future__ import annotations

import argparse
from typing import Any

from nightseg.data import DATASET_NAMES
from nightseg.data.bdd100k import TIMES_OF_DAY
from nightseg.data.cityscapes import LABEL_SUFFIXES as CITYSCAPES_LABEL_TYPES


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``data`` command and its ``check`` subcommand."""
    parser = subparsers.add_parser("data", parents=[common], help="check a dataset copy",
                                   description="Inspect datasets on disk.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    check = actions.add_parser(
        "check", parents=[common], help="validate a dataset copy and print a summary",
        description="Validate a copy of a dataset: counts per split, unmatched files, label values, image "
        "sizes and every defect (naming the file). Exit 0 clean, 1 defects found, 2 wrong layout or an option the dataset does not take.",
    )
    check.add_argument("name", choices=DATASET_NAMES, metavar="NAME", help=f"one of {', '.join(DATASET_NAMES)}")
    check.add_argument("root", help="the dataset root folder (layouts: docs/datasets.md)")
    check.add_argument("--split", default=None, help="check only this split (default: every split present)")
    check.add_argument("--skip-bad", action="store_true",
                       help="report defects but exit 0 if the rest is usable (what loading with skip_bad does)")
    select = check.add_argument_group(
        "data selection", "which data the loader reads; each option applies only to the datasets it names")
    select.add_argument("--timeofday", choices=TIMES_OF_DAY, default=None,
                        help="bdd100k: only images with this attributes.timeofday in the labels JSON (e.g. night)")
    select.add_argument("--night-list", metavar="FILE", default=None,
                        help="bdd100k: only the images named in FILE (one name, id or path per line)")
    select.add_argument("--attributes-json", metavar="FILE", default=None,
                        help="bdd100k: the labels JSON read by --timeofday (default "
                        "labels/bdd100k_labels_images_<split>.json; one file serves one split: add --split)")
    select.add_argument("--condition", action="append", metavar="COND", default=None,
                        help="acdc: conditions to check (fog, night, rain, snow, all; default all); dark_zurich: "
                        "parts to check by condition (night = train/night, val, test; day; twilight); "
                        "repeat or separate with commas")
    select.add_argument("--references", action=argparse.BooleanOptionalAction, default=None,
                        help="acdc: check the *_rgb_ref_anon reference images (default: where *_ref folders exist)")
    select.add_argument("--pairs", metavar="CSV", default=None,
                        help="dark_zurich_pairs: the night->day pair CSV (default: zurich_dn_pair_train.csv in ROOT)")
    select.add_argument("--label-dir", metavar="DIR", default=None,
                        help="nightcity, nightcity+: the folder of the labels (e.g. the relabelled NightCity+ val maps; "
                        "one folder serves one split: add --split)")
    select.add_argument("--label-type", choices=tuple(CITYSCAPES_LABEL_TYPES), default=None,
                        help="cityscapes: read *_gtFine_labelIds.png (default) or *_gtFine_labelTrainIds.png")
    select.add_argument("--unlabelled", dest="labelled", action="store_false", default=None,
                        help="folder: images only, no labels/ folder")
    check.set_defaults(func=run)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def selection(args: argparse.Namespace) -> dict[str, Any]:
    """Return the loader keywords the selection options of `args` set (options not given are left out)."""
    from nightseg.data import dataset_class
    from nightseg.data.check import selection_options

    chosen: dict[str, Any] = {
        "timeofday": args.timeofday, "night_list": args.night_list, "attributes_json": args.attributes_json,
        "with_reference": args.references, "pairs_csv": args.pairs, "label_dir": args.label_dir,
        "label_type": args.label_type, "labelled": args.labelled,
    }
    if args.condition:
        conditions = [c.strip() for item in args.condition for c in item.split(",") if c.strip()]
        key = "condition" if "condition" in selection_options(dataset_class(args.name)) else "conditions"
        chosen[key] = "all" if conditions == ["all"] else conditions
    return {k: v for k, v in chosen.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    """Run ``nightseg data check`` and return its exit code."""
    from nightseg.data.check import run_check

    return run_check(args.name, args.root, split=args.split, skip_bad=args.skip_bad, **selection(args))
