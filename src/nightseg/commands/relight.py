"""`nightseg relight train|apply`: train Zero-DCE on unlabeled images, or relight images with it.

    nightseg relight train --images DIR [--out W.safetensors] [--epochs N] [--size S] [--seed N] [--resume]
    nightseg relight apply INPUT... --out DIR [--weights W]

Training writes W.safetensors (the DCE-Net weights, usable with ``--weights``) and W.train.safetensors
(weights + Adam state, for ``--resume``) atomically after every epoch; a resumed run gives the same
weights as an uninterrupted one. INPUTs of ``apply`` are image files, folders (searched recursively,
sub-folders kept in the output) or glob patterns; outputs are PNGs.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nightseg.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from nightseg.errors import UserError
from nightseg.io import IMAGE_SUFFIXES, list_images, read_image, write_png
from nightseg.models.relight import DCENet, load_dce_weights, relight_image, resolve_weights, save_dce_weights
from nightseg.models.relight_losses import zero_reference_loss

log = logging.getLogger("nightseg")

# Official Zero-DCE training settings (lr, weight decay, gradient clipping, batch size).
LR, WEIGHT_DECAY, GRAD_CLIP = 1e-4, 1e-4, 0.1


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
    train.add_argument("--resume", action="store_true", help="continue from OUT's .train.safetensors state")
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


# ---------------------------------------------------------------- train


def _load_crop(path: Path, size: int, generator: torch.Generator) -> torch.Tensor:
    """Return a random `size` x `size` crop (after resizing the short side to `size`, random flip)."""
    img = Image.fromarray(read_image(path))
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.BILINEAR)
    x0 = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    y0 = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    arr = np.asarray(img)[y0 : y0 + size, x0 : x0 + size]
    if torch.rand(1, generator=generator).item() < 0.5:
        arr = arr[:, ::-1]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def _state_path(out: Path) -> Path:
    return out.with_name(out.stem + ".train.safetensors")


def _save_state(out: Path, model: DCENet, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value)
    save_checkpoint(_state_path(out), tensors, {"model": model.config, "training": meta})
    save_dce_weights(model, out, {"training": meta})


def _load_state(out: Path, model: DCENet, optimizer: torch.optim.Optimizer, settings: dict) -> dict:
    path = _state_path(out)
    tensors, meta = load_checkpoint(path)
    training = meta.get("training", {})
    for key, value in settings.items():
        if training.get(key) != value:
            raise UserError(
                f"{path}: was trained with {key}={training.get(key)!r}, this run asks for {value!r}; use the same settings to resume"
            )
    load_state_into(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    return training


def train_relight(
    images: list[Path], out: Path, epochs: int, size: int, batch_size: int, seed: int, resume: bool = False
) -> DCENet:
    """Train DCE-Net with the zero-reference losses on `images`; write `out` after each epoch; return it."""
    if size < 16 or size % 16:
        raise UserError(
            f"--size {size}: must be a positive multiple of 16 (the exposure loss uses 16x16 patches)"
        )
    if epochs < 1 or batch_size < 1:
        raise UserError(f"--epochs {epochs} / --batch-size {batch_size}: must be at least 1")
    model = DCENet(generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    settings = {"seed": seed, "size": size, "batch_size": batch_size, "images": len(images)}
    start, history = 0, []
    if resume and _state_path(out).is_file():  # resume with no saved state yet: a fresh start
        training = _load_state(out, model, optimizer, settings)
        start, history = int(training["epochs_done"]), list(training.get("history", []))
        log.info("resuming %s after epoch %d", out, start)
    steps = math.ceil(len(images) / batch_size)
    bar = tqdm(total=(epochs - start) * steps, desc="relight train", unit="step", dynamic_ncols=True)
    model.train()
    for epoch in range(start, epochs):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(images), generator=generator).tolist()
        total, parts_sum = 0.0, dict.fromkeys(("spa", "exp", "col", "tvA"), 0.0)
        for step in range(steps):
            batch = torch.stack(
                [
                    _load_crop(images[i], size, generator)
                    for i in order[step * batch_size : (step + 1) * batch_size]
                ]
            )
            enhanced, curves = model.enhance(batch)
            loss, parts = zero_reference_loss(enhanced, batch, curves)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            value = float(loss.detach())
            total += value
            for k, v in parts.items():
                parts_sum[k] += v
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}")
        history.append(
            {"epoch": epoch + 1, "loss": total / steps, **{k: v / steps for k, v in parts_sum.items()}}
        )
        _save_state(out, model, optimizer, {**settings, "epochs_done": epoch + 1, "history": history})
    bar.close()
    return model.eval()


def run_train(args: argparse.Namespace) -> int:
    """`nightseg relight train`: train and write the weights; print the last epoch's losses."""
    images = list_images(args.images)
    if not images:
        raise UserError(f"{args.images}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    if args.out.suffix != ".safetensors":
        raise UserError(f"--out {args.out}: must end in .safetensors")
    if args.resume and not _state_path(args.out).is_file():
        raise UserError(
            f"{_state_path(args.out)}: no training state to resume from; run without --resume first"
        )
    train_relight(images, args.out, args.epochs, args.size, args.batch_size, args.seed, args.resume)
    print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------- apply


def expand_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """Return (image path, output path relative to --out) for files, folders and glob patterns."""
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pairs += [(p, p.relative_to(path).with_suffix(".png")) for p in list_images(path)]
        elif path.is_file():
            pairs.append((path, Path(path.stem + ".png")))
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            files = [p for p in matches if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)]
            if not files:
                raise UserError(f"{item}: pattern matches no image files")
            pairs += [(p, Path(p.stem + ".png")) for p in files]
        else:
            raise UserError(f"{item}: no such file or folder")
    if not pairs:
        raise UserError(f"{' '.join(inputs)}: no images found")
    seen: dict[Path, Path] = {}
    for src, rel in pairs:
        if rel in seen and seen[rel] != src:
            raise UserError(
                f"{src}: would overwrite the output of {seen[rel]} ({rel}); relight them into different --out folders"
            )
        seen[rel] = src
    return list(dict.fromkeys(pairs))


def run_apply(args: argparse.Namespace) -> int:
    """`nightseg relight apply`: write one relit PNG per input image under --out."""
    pairs = expand_inputs(args.inputs)
    model = load_dce_weights(resolve_weights(args.weights))
    for src, rel in tqdm(pairs, desc="relight", unit="img", dynamic_ncols=True, disable=len(pairs) < 2):
        write_png(args.out / rel, relight_image(model, read_image(src)))
    print(f"relit {len(pairs)} image(s) into {args.out}")
    return 0
