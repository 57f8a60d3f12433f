"""`nightseg relight train|apply`: train Zero-DCE on unlabeled images, or relight images with it.

    nightseg relight train --images DIR [--out W.safetensors] [--epochs N] [--size S] [--seed N] [--resume]
    nightseg relight apply INPUT... --out DIR [--weights W]

Training writes W.safetensors (the DCE-Net weights, usable with ``--weights``) and the training state
W.train/ (weights + Adam state, for ``--resume``) atomically after every epoch; a resumed run gives the
same weights as an uninterrupted one. INPUTs of ``apply`` are image files, folders (searched recursively,
sub-folders kept in the output) or glob patterns; outputs are PNGs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nightseg.core.errors import UserError
from nightseg.core.io import (
    IMAGE_SUFFIXES,
    check_output_dir,
    check_output_file,
    expand_image_inputs,
    list_images,
    read_image,
    write_png,
)
from nightseg.models.relight import load_dce_weights, relight, resolve_weights
from nightseg.pipelines.relight import state_path, train_relight


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add `relight` with its `train` and `apply` subcommands."""
    parser = subparsers.add_parser(
        "relight", parents=[common], help="train or apply the Zero-DCE relighting network"
    )
    sub = parser.add_subparsers(dest="relight_command", metavar="{train,apply}", required=True)

    train = sub.add_parser(
        "train", parents=[common], help="train DCE-Net on a folder of unlabeled (night) images"
    )
    train.add_argument(
        "--images", required=True, type=Path, help="folder of unlabeled images (searched recursively)"
    )
    train.add_argument("--out", type=Path, default=Path("zero_dce.safetensors"), help="weights file to write")
    train.add_argument("--epochs", type=int, default=100, help="passes over the images (default 100)")
    train.add_argument(
        "--size", type=int, default=256, help="square training crop after resizing the short side"
    )
    train.add_argument("--batch-size", type=int, default=8, help="images per step (default 8, as the paper)")
    train.add_argument("--seed", type=int, default=0, help="random seed (training is deterministic by seed)")
    train.add_argument("--resume", action="store_true", help="continue from the training state beside OUT (W.safetensors -> W.train/)")
    train.set_defaults(relight_func=run_train)

    apply = sub.add_parser("apply", parents=[common], help="relight images with trained or official weights")
    apply.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    apply.add_argument("--out", required=True, type=Path, help="output folder for the relit PNGs")
    apply.add_argument(
        "--weights", type=Path,
        help="Epoch99.pth, .safetensors, or 'official' (downloads the official Zero-DCE weights once; "
        "default $NIGHTSEG_RELIGHT_WEIGHTS)",
    )
    apply.set_defaults(relight_func=run_apply)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen subcommand."""
    return args.relight_func(args)


def run_train(args: argparse.Namespace) -> int:
    """`nightseg relight train`: train and write the weights; print the last epoch's losses."""
    images = list_images(args.images)
    if not images:
        raise UserError(f"{args.images}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    if args.out.suffix != ".safetensors":
        raise UserError(f"--out {args.out}: must end in .safetensors")
    check_output_file(args.out)
    if args.resume and not state_path(args.out).is_file():
        raise UserError(
            f"{state_path(args.out)}: no training state to resume from; run without --resume first"
        )
    train_relight(images, args.out, args.epochs, args.size, args.batch_size, args.seed, args.resume)
    print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------- apply


def run_apply(args: argparse.Namespace) -> int:
    """`nightseg relight apply`: write one relit PNG per input image under --out."""
    pairs = expand_image_inputs(args.inputs)
    check_output_dir(args.out)
    model = load_dce_weights(resolve_weights(args.weights))
    for src, rel in tqdm(pairs, desc="relight", unit="img", dynamic_ncols=True, disable=len(pairs) < 2):
        write_png(args.out / rel, relight(model, read_image(src)))
    print(f"relit {len(pairs)} image(s) into {args.out}")
    return 0
