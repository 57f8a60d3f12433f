"""Checkpoints: weights in safetensors plus a small JSON file of metadata beside them.

A checkpoint ``model.safetensors`` always comes with ``model.json`` holding at least
``{"format": "nightseg-checkpoint", "version": 1, "model": {...build kwargs...}}``. Nothing is ever
unpickled: safetensors holds plain tensors, JSON holds the rest. Both files are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nightseg.core.errors import UserError
from nightseg.core.io import atomic_path, read_format_json, write_json

FORMAT = "nightseg-checkpoint"
VERSION = 1


def metadata_path(path: str | os.PathLike) -> Path:
    """Return the JSON metadata path that belongs to a ``.safetensors`` checkpoint path."""
    return Path(path).with_suffix(".json")


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Atomically write `tensors` to `path` (.safetensors) and `metadata` to the .json beside it.

    Returns the safetensors path. Tensors are made contiguous and moved to the CPU first.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: checkpoint files must end in .safetensors")
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "version": VERSION, **metadata}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp))
    write_json(metadata_path(path), meta)
    return path


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the metadata dict of the checkpoint at `path`; raise a UserError if absent or foreign."""
    path = Path(path)
    return read_format_json(metadata_path(path), FORMAT, VERSION, "checkpoint",
                            "metadata file missing; a NightSeg checkpoint is a .safetensors file plus a .json beside it")


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(tensors, metadata)`` of the checkpoint at `path` (CPU tensors).

    Raises a UserError naming the file when it is missing, not safetensors (e.g. a pickled ``.pth``),
    or has no NightSeg metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: expected a .safetensors checkpoint written by NightSeg (pickled .pth/.ckpt files are not loaded)")
    meta = load_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: corrupt safetensors file ({exc})") from exc
    return tensors, meta


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load `tensors` into `module` strictly; on a mismatch raise a UserError that says what differs.

    `source` names the checkpoint in the message (wrong architecture, wrong class count, ...).
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise UserError(f"{source}: weights do not fit this architecture: {', '.join(detail)} keys; was it saved for a different model?")
    for key in own:
        value = tensors[key]
        if own[key].shape != value.shape:
            raise UserError(
                f"{source}: tensor {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)} "
                "(different class count or architecture?)"
            )
    module.load_state_dict(tensors, strict=True)


def load_segmenter_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load the segmenter tensors of the NightSeg checkpoint at `path` into `model` (a plain segmenter or a
    `CrossAttentionSegmenter`); relighting tensors are ignored, and a plain checkpoint loaded into a
    cross-attention model leaves the attention at its initialisation (alpha = 0)."""
    tensors, _ = load_checkpoint(Path(path).expanduser())
    tensors = {k: v for k, v in tensors.items() if not k.startswith("relight.")}
    wrapped = any(k.startswith("segmenter.") for k in tensors)
    if hasattr(model, "attention"):
        if wrapped:
            load_state_into(model, tensors, path)
        else:
            load_state_into(model.segmenter, tensors, path)
    else:
        if wrapped:
            tensors = {k.removeprefix("segmenter."): v for k, v in tensors.items() if k.startswith("segmenter.")}
        load_state_into(model, tensors, path)
