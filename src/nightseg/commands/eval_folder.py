"""`nightseg eval`: score a folder of prediction PNGs against ground truth (mIoU, per-class IoU, mEF1)."""

from __future__ import annotations

import argparse
import logging

from nightseg.core.classes import NUM_CLASSES

log = logging.getLogger("nightseg")

EPILOG = """\
Files are matched by scene stem, so Cityscapes (*_leftImg8bit / *_gtFine_labelIds /
*_gtFine_labelTrainIds), Dark Zurich and ACDC (*_rgb_anon / *_gt_labelTrainIds / *_gt_labelIds /
*_gt_invIds) and plain names all work; folders are searched recursively.

examples:
  nightseg eval --pred out/pred --gt cityscapes/gtFine/val --gt-format labelIds
  nightseg eval --pred out/pred --gt dark_zurich/gt/val --images dark_zurich/rgb_anon/val \\
      --invalid dark_zurich/gt/val --json results.json
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `eval` command."""
    p = subparsers.add_parser(
        "eval",
        parents=[common],
        help="score a folder of already-written prediction PNGs (no model; see evaluate)",
        description="Score prediction PNGs that are already on disk (e.g. from `nightseg predict` or another\n"
        "toolkit) against ground-truth PNGs; no model runs. To run a checkpoint over a dataset and score it\n"
        "in one go, use `nightseg evaluate`.\n\n"
        "Scores: per-class IoU and accuracy, mIoU,\n"
        "pixel accuracy, frequency-weighted IoU; with --images also the exposure-aware F1 (mEF1)\n"
        "of Tan et al. (NightCity, Sec. 5.1) per HSV-value exposure bin.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of prediction PNGs (single-channel ids)")
    p.add_argument("--gt", required=True, metavar="DIR", help="folder of ground-truth PNGs")
    p.add_argument("--gt-format", choices=("trainIds", "labelIds"), default="trainIds",
                   help="ids in the ground truth: trainIds (0-18, 255 = ignore) or Cityscapes labelIds "
                   "(default: %(default)s)")
    p.add_argument("--pred-format", choices=("trainIds", "labelIds"), default="trainIds",
                   help="ids in the predictions (default: %(default)s); with labelIds, predictions of void "
                   "ids count as misses exactly as in cityscapesscripts")
    p.add_argument("--images", metavar="DIR", help="folder of the input images: adds mEF1 and per-exposure-bin "
                   "EF1 / mIoU (bins of HSV value V = max(R,G,B))")
    p.add_argument("--invalid", metavar="DIR", help="folder of invalid-pixel masks (e.g. *_gt_invIds.png); "
                   "nonzero pixels are excluded from every score")
    p.add_argument("--json", metavar="FILE", help="also write all results (per class, per bin, confusion matrix) "
                   "as JSON")
    p.add_argument("--num-classes", type=int, default=NUM_CLASSES, help="number of classes (default: %(default)s)")
    p.add_argument("--ef1-average", choices=("pixel", "class"), default="pixel",
                   help="how EF1 averages precision / recall over classes: pixel (micro, the default; "
                   "matches the paper's magnitudes) or class (macro)")
    p.add_argument("--workers", type=int, default=None, help="threads reading PNGs (default: up to 4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write the JSON; return 0."""
    from nightseg.core.errors import UserError
    from nightseg.core.io import write_json
    from nightseg.evaluation.folder_eval import evaluate_folder, format_report

    if args.num_classes < 1 or args.num_classes > 254:
        raise UserError(f"--num-classes {args.num_classes}: expected 1..254")
    results = evaluate_folder(
        args.pred,
        args.gt,
        gt_format=args.gt_format,
        pred_format=args.pred_format,
        images_dir=args.images,
        invalid_dir=args.invalid,
        num_classes=args.num_classes,
        average=args.ef1_average,
        workers=args.workers,
    )
    print(format_report(results))
    if args.json:
        path = write_json(args.json, results)
        log.info("wrote %s", path)
    return 0
