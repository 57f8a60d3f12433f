"""`nightseg translate train|apply|dataset`: day <-> night translation with CycleGAN (See Clearer at Night).

    nightseg translate train --day DIR --night DIR --out RUN [--steps N] [--size HxW] [--crop HxW] [--channels C]
                             [--blocks B] [--seed N] [--resume]
    nightseg translate apply --checkpoint RUN/translator.safetensors --direction night2day INPUT... --out DIR
    nightseg translate dataset --checkpoint CKPT --src DATA/cityscapes --out MIX/cityscapes --ratio 0.5
    nightseg translate dataset --layout dark_zurich --checkpoint CKPT --src DATA/dark_zurich \
                               --out DAY/dark_zurich --ratio 1 [--split val] [--condition night]

``train`` writes RUN/translator.safetensors (both generators; what ``apply``, ``dataset`` and
``nightseg predict --night2day`` read), RUN/state/ (the full training state, for ``--resume``) and
sample grids RUN/samples/step_*.png. ``apply`` translates image files, folders (recursive, sub-folders
kept) or glob patterns into PNGs, skipping finished ones. ``dataset`` copies one split of a dataset
with a share ``--ratio`` of its images translated and the labels unchanged, same names, so the layout's
loader reads the copy: ``--layout cityscapes`` (default; day->night, split train: See Clearer at Night, method 2) or
``--layout dark_zurich`` (night->day of ``rgb_anon/<split>/<condition>``, split val, ``gt/`` copied).
A rerun writes only the missing files (an interrupted run's rest, or deleted outputs). See
`nightseg.pipelines.translation`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nightseg.core.errors import UserError
from nightseg.core.io import (
    IMAGE_SUFFIXES,
    check_output_dir,
    expand_image_inputs,
    list_images,
    read_image,
    write_png,
)
from nightseg.inference import parse_size
from nightseg.models.translator import DIRECTIONS, load_translator
from nightseg.pipelines.translation import (
    LAYOUTS,
    TranslatorSettings,
    train_translator,
    translate_array,
    translate_dataset,
    translator_path,
)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add `translate` with its `train`, `apply` and `dataset` subcommands."""
    parser = subparsers.add_parser("translate", parents=[common], help="train or apply a day<->night CycleGAN translator")
    sub = parser.add_subparsers(dest="translate_command", metavar="{train,apply,dataset}", required=True)
    d = TranslatorSettings()

    train = sub.add_parser("train", parents=[common], help="train a CycleGAN on unpaired day and night images")
    train.add_argument("--day", required=True, type=Path, help="folder of day images (searched recursively)")
    train.add_argument("--night", required=True, type=Path, help="folder of night images (searched recursively)")
    train.add_argument("--out", type=Path, default=Path("translator"), help="run folder (default ./translator)")
    train.add_argument("--steps", type=int, default=d.steps, help=f"training steps (default {d.steps})")
    train.add_argument("--size", default="x".join(map(str, d.size)), help="training size HxW (images are resized)")
    train.add_argument("--crop", help="train on random HxW crops of the resized images (CycleGAN's resize_and_crop; "
                       "default: whole images)")
    train.add_argument("--batch-size", type=int, default=d.batch_size, help="images per domain per step (default 1)")
    train.add_argument("--channels", type=int, default=d.channels, help=f"generator base width (CycleGAN: 64; default {d.channels})")
    train.add_argument("--blocks", type=int, default=d.blocks, help=f"generator residual blocks (CycleGAN: 9; default {d.blocks})")
    train.add_argument("--disc-channels", type=int, default=d.disc_channels, help="PatchGAN base width (CycleGAN: 64)")
    train.add_argument("--pool-size", type=int, default=d.pool_size, help="image pool size (default 50, 0 = off)")
    train.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default 2e-4)")
    train.add_argument("--seed", type=int, default=0, help="random seed (training is deterministic by seed on CPU)")
    train.add_argument("--sample-every", type=int, default=100, help="write a sample grid every N steps (0 = never)")
    train.add_argument("--save-every", type=int, default=100, help="save the training state every N steps")
    train.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    train.add_argument("--resume", action="store_true", help="continue the training state in --out")
    train.set_defaults(translate_func=run_train)

    apply = sub.add_parser("apply", parents=[common], help="translate images with a trained generator")
    apply.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    apply.add_argument("--checkpoint", required=True, type=Path, help="translator.safetensors from `translate train`")
    apply.add_argument("--direction", required=True, choices=DIRECTIONS, help="which generator to run")
    apply.add_argument("--out", required=True, type=Path, help="output folder for the PNGs")
    apply.add_argument("--overwrite", action="store_true", help="redo images whose output exists")
    apply.set_defaults(translate_func=run_apply)

    dataset = sub.add_parser("dataset", parents=[common], help="copy a dataset split in a loader's layout, part of it "
                             "translated")
    dataset.add_argument("--checkpoint", required=True, type=Path, help="translator.safetensors from `translate train`")
    dataset.add_argument("--layout", choices=tuple(LAYOUTS), default="cityscapes",
                         help="cityscapes (leftImg8bit/, gtFine/; default) or dark_zurich (rgb_anon/, gt/)")
    dataset.add_argument("--src", required=True, type=Path, help="dataset root in the --layout")
    dataset.add_argument("--out", required=True, type=Path, help="root of the translated copy (same layout)")
    dataset.add_argument("--ratio", type=float, required=True, help="share of the images to translate, in [0, 1]")
    dataset.add_argument("--split", help="split to copy (default: train for cityscapes, val for dark_zurich)")
    dataset.add_argument("--condition", default="night", help="dark_zurich: condition folder to copy (default night)")
    dataset.add_argument("--direction", choices=DIRECTIONS,
                         help="default: day2night for cityscapes, night2day for dark_zurich")
    dataset.add_argument("--seed", type=int, default=0, help="seed of the choice of translated images")
    dataset.set_defaults(translate_func=run_dataset)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen subcommand."""
    return args.translate_func(args)


def _images(folder: Path, option: str) -> list[Path]:
    images = list_images(folder)
    if not images:
        raise UserError(f"{option} {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return images


def run_train(args: argparse.Namespace) -> int:
    """`nightseg translate train`: train (or resume) and print where the generators are."""
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TranslatorSettings(
        steps=args.steps, size=parse_size(args.size, "--size"),
        crop=parse_size(args.crop, "--crop") if args.crop else None, batch_size=args.batch_size, channels=args.channels,
        blocks=args.blocks, disc_channels=args.disc_channels, pool_size=args.pool_size, lr=args.lr, seed=args.seed,
    )
    result = train_translator(_images(args.day, "--day"), _images(args.night, "--night"), args.out, settings,
                              resume=args.resume, sample_every=args.sample_every, save_every=max(1, args.save_every))
    last = result["history"][-1] if result["history"] else {}
    print(f"wrote {translator_path(args.out)} ({result['steps']} steps; last losses "
          + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k != "step") + ")")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    """`nightseg translate apply`: one translated PNG per input image under --out."""
    pairs = expand_image_inputs(args.inputs)
    check_output_dir(args.out)
    net = load_translator(args.checkpoint, args.direction)
    todo = [(s, r) for s, r in pairs if args.overwrite or not (args.out / r).is_file()]
    for src, rel in tqdm(todo, desc=args.direction, unit="img", dynamic_ncols=True, disable=len(todo) < 2):
        write_png(args.out / rel, translate_array(net, read_image(src)))
    skipped = len(pairs) - len(todo)
    print(f"translated {len(todo)} image(s) {args.direction} into {args.out}"
          + (f"; {skipped} already done (skipped)" if skipped else ""))
    return 0


def run_dataset(args: argparse.Namespace) -> int:
    """`nightseg translate dataset`: write the partly translated copy and print what it holds."""
    manifest = translate_dataset(args.checkpoint, args.src, args.out, args.ratio, args.seed, args.split,
                                 args.direction, args.layout, args.condition)
    done = manifest["written"]
    print(f"wrote {args.out} ({args.layout} layout): {len(manifest['translated'])} of {manifest['images']} "
          f"{manifest['split']} images translated {manifest['direction']}, labels copied; "
          + (f"{done} file(s) written this run" if done else "nothing missing, nothing written"))
    return 0
