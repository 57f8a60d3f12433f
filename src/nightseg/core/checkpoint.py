"""Checkpoints: weights in safetensors plus a small JSON file of metadata beside them.

A checkpoint ``model.safetensors`` always comes with ``model.json`` holding at least
``{"format": "nightseg-checkpoint", "version": 1, "model": {...build kwargs...}}``. Nothing is ever
unpickled: safetensors holds plain tensors, JSON holds the rest. Both files are written atomically, and
the JSON holds the safetensors file's ``sha256`` so that a file copied in part is refused at load time
(checkpoints written before the digest was stored load as before).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nightseg.core.errors import UserError
from nightseg.core.io import atomic_path, read_format_json

FORMAT = "nightseg-checkpoint"
VERSION = 1
DIGEST_KEY = "sha256"
"""Metadata key of the safetensors file's digest (`file_digest`), checked by `load_checkpoint`."""


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
    # both files go to temporaries first and are renamed only once both are written (JSON first), so a
    # failed write (disk full, permission lost) leaves the previous pair whole and matching its digest
    with atomic_path(path) as tmp, atomic_path(metadata_path(path)) as tmp_meta:
        save_file(flat, str(tmp))
        meta[DIGEST_KEY] = file_digest(tmp)
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def file_digest(path: str | os.PathLike) -> str:
    """Return ``"sha256:<hex>"`` of the file at `path` (the digest stored in checkpoint metadata)."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def verify_digest(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Raise a UserError when the checkpoint file at `path` does not match the digest in its metadata `meta`
    (a file copied in part, or replaced without its .json). Checkpoints written before digests were stored
    (no ``sha256`` key) are accepted as they are."""
    expected = meta.get(DIGEST_KEY)
    if expected is None:
        return
    if not isinstance(expected, str) or file_digest(path) != expected:
        raise UserError(f"{path}: contents do not match the sha256 digest in {metadata_path(path).name} "
                        "(copied in part, or replaced without its .json); copy both files again")


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the metadata dict of the checkpoint at `path`; raise a UserError if absent or foreign."""
    path = Path(path)
    meta = read_format_json(metadata_path(path), FORMAT, VERSION, "checkpoint",
                            "metadata file missing; a NightSeg checkpoint is a .safetensors file plus a .json beside it")
    check_metadata(metadata_path(path), meta)
    return meta


# the types the readers of checkpoint metadata rely on (key -> allowed JSON types); other keys are free
_SHAPES: dict[str, tuple[type, ...]] = {"model": (dict,), "config": (dict,), "metrics": (dict, type(None)),
                                        "step": (int,), DIGEST_KEY: (str,)}
_MODEL_SHAPES: dict[str, tuple[type, ...]] = {"name": (str,), "num_classes": (int,), "relight": (dict,)}


def check_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Raise a one-line UserError naming `path` when a key that NightSeg reads has the wrong JSON type
    (e.g. ``"model"`` not an object, ``model.num_classes`` not a positive whole number): a damaged file."""
    def bad(key: str, value: Any, shapes: tuple[type, ...]) -> bool:
        return (isinstance(value, bool) and bool not in shapes) or not isinstance(value, shapes)

    for key, shapes in _SHAPES.items():
        if key in meta and bad(key, meta[key], shapes):
            raise UserError(f"{path}: {key!r} is {meta[key]!r}, which is not what a NightSeg checkpoint holds there; "
                            "the metadata is damaged")
    model = meta.get("model", {})
    for key, shapes in _MODEL_SHAPES.items():
        if key in model and (bad(key, model[key], shapes) or (key == "num_classes" and model[key] < 1)):
            raise UserError(f"{path}: model.{key} is {model[key]!r}, which is not what a NightSeg checkpoint holds "
                            "there; the metadata is damaged")


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
    verify_digest(path, meta)
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


ReferenceReader = Callable[[str | os.PathLike], tuple[dict[str, torch.Tensor], dict[str, Any]]]
_reference_reader: list[ReferenceReader] = []


def set_reference_reader(reader: ReferenceReader) -> None:
    """Install the function that reads any model reference (a published checkpoint file or folder,
    ``hf:ORG/NAME``) as ``(tensors, metadata)``. `nightseg.models.pretrained` installs its converter when
    imported: core cannot import the models layer, yet ``method.init_checkpoint`` takes the same references."""
    _reference_reader[:] = [reader]


def read_model_reference(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(tensors, metadata)`` of a NightSeg checkpoint, or of any reference the installed reader
    (`set_reference_reader`) converts; without one, NightSeg checkpoints only."""
    if _reference_reader:
        return _reference_reader[0](path)
    return load_checkpoint(Path(path).expanduser())


def load_segmenter_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load the segmenter tensors of the NightSeg checkpoint at `path` into `model` (a plain segmenter or a
    `CrossAttentionSegmenter`); relighting tensors are ignored, and a plain checkpoint loaded into a
    cross-attention model leaves the attention at its initialisation (alpha = 0). `path` may also be a
    published checkpoint or ``hf:ORG/NAME`` (`read_model_reference`), converted on the fly."""
    tensors, _ = read_model_reference(path)
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
