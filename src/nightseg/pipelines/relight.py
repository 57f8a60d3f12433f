"""Training Zero-DCE with the zero-reference losses on unlabelled images (`nightseg relight train`, the demo).

Writes W.safetensors (the DCE-Net weights, usable with ``--weights``) and the training state ``W.train/``
(weights + Adam state + loss history, `nightseg.core.loop_state`, for ``--resume``) atomically after every
epoch; a resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nightseg.core.errors import UserError
from nightseg.core.io import read_image
from nightseg.core.loop_state import load_loop_state, save_loop_state, state_step
from nightseg.losses.zero_reference import zero_reference_loss
from nightseg.models.relight import DCENet, save_dce_weights

log = logging.getLogger("nightseg")

# Official Zero-DCE training settings (lr, weight decay, gradient clipping, batch size).
LR, WEIGHT_DECAY, GRAD_CLIP = 1e-4, 1e-4, 0.1


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


def state_dir(out: Path) -> Path:
    """Return the training-state folder of the weights file `out` (``W.safetensors`` -> ``W.train/``)."""
    return out.with_name(out.stem + ".train")


def state_path(out: Path) -> Path:
    """Return the file that marks a complete training state of `out`: ``W.train/state.json``."""
    return state_dir(out) / "state.json"


def train_relight(
    images: list[Path], out: Path, epochs: int, size: int, batch_size: int, seed: int, resume: bool = False
) -> DCENet:
    """Train DCE-Net with the zero-reference losses on `images`; return the trained model (in eval mode).

    Writes `out` and the training state ``state_dir(out)`` after each epoch; with `resume`, continues after
    the last finished epoch of that state (a fresh start when there is none yet).
    """
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
    if resume and state_step(state_dir(out)) is not None:  # resume with no saved state yet: a fresh start
        start, extra = load_loop_state(state_dir(out), {"model": model}, {"optimizer": optimizer}, settings=settings)
        history = list(extra["history"])
        if start >= epochs:  # a finished stage: say so instead of "resuming"
            log.info("%s: already trained (%d epoch(s))", out, start)
        else:
            log.info("resuming %s after epoch %d of %d", out, start, epochs)
    steps = math.ceil(len(images) / batch_size)
    bar = tqdm(total=max(0, epochs - start) * steps, desc="relight train", unit="step", dynamic_ncols=True,
               disable=True if start >= epochs else None)
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
        save_loop_state(state_dir(out), epoch + 1, {"model": model}, {"optimizer": optimizer}, settings=settings,
                        extra={"history": history})
        save_dce_weights(model, out, {"training": {**settings, "epochs_done": epoch + 1, "history": history}})
    bar.close()
    return model.eval()
