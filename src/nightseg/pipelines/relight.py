"""Training Zero-DCE with the zero-reference losses on unlabelled images (`nightseg relight train`, the demo).

Writes W.safetensors (the DCE-Net weights, usable with ``--weights``) and W.train.safetensors (weights +
Adam state, for ``--resume``) atomically after every epoch; a resumed run gives the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nightseg.core.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from nightseg.core.errors import UserError
from nightseg.core.io import read_image
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


def state_path(out: Path) -> Path:
    return out.with_name(out.stem + ".train.safetensors")


def _save_state(out: Path, model: DCENet, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value)
    save_checkpoint(state_path(out), tensors, {"model": model.config, "training": meta})
    save_dce_weights(model, out, {"training": meta})


def _load_state(out: Path, model: DCENet, optimizer: torch.optim.Optimizer, settings: dict) -> dict:
    path = state_path(out)
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
    if resume and state_path(out).is_file():  # resume with no saved state yet: a fresh start
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
