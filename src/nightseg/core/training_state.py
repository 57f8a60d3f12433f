"""The training-state file format: a nested dict as one safetensors file + ``state.json`` (no pickle).

`save_state` stores every tensor of the dict in a safetensors file (keyed by its path in the dict) and the
rest of the tree in ``state.json`` (tuples, non-string dict keys, tensors, numpy arrays, dtypes and
non-finite floats are tagged). Nothing is pickled, so loading a state never executes code.
``state.json`` is the commit point: the tensors go to a new ``tensors-<step>-<random>.safetensors`` first,
then ``state.json`` is atomically replaced to point at it, then older tensor files are deleted. A kill at
any moment leaves the previous complete state.

The Lightning engine stores its checkpoints in this format (`nightseg.engine.state.SafeCheckpointIO`);
the plain training loops use it through `nightseg.core.loop_state`.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nightseg.core.errors import UserError
from nightseg.core.io import atomic_path, read_format_json, write_json

STATE_FORMAT = "nightseg-training-state"
STATE_VERSION = 1
STATE_FILE = "state.json"


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Return `obj` as JSON data, moving every tensor into `tensors` under a key derived from `path`."""
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        while key in tensors:
            key += "_"
        value = obj.detach()
        # copy so that tensors sharing storage (aliased parameters) become independent safetensors entries
        tensors[key] = value.to("cpu", copy=True).contiguous() if value.device.type == "cpu" else value.cpu().contiguous()
        return {"$tensor": key}
    if isinstance(obj, np.ndarray):
        return {"$ndarray": _encode(torch.from_numpy(np.ascontiguousarray(obj)), tensors, path)["$tensor"]}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors, path)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors, f"{path}/{k}" if path else k) for k, v in obj.items()}
        return {"$dict": [[_encode(k, tensors, path), _encode(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, torch.dtype):
        return {"$dtype": str(obj).removeprefix("torch.")}
    raise TypeError(f"training state entry {path!r} has type {type(obj).__name__}, which safetensors/JSON cannot hold")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Invert `_encode`."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        return tensors[obj["$tensor"]]
    if "$ndarray" in obj:
        return tensors[obj["$ndarray"]].numpy()
    if "$float" in obj:
        return float(obj["$float"])
    if "$tuple" in obj:
        return tuple(_decode(v, tensors) for v in obj["$tuple"])
    if "$dict" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["$dict"]}
    if "$dtype" in obj:
        return getattr(torch, obj["$dtype"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_state(state: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Atomically write the nested dict `state` into `folder` (tensors + ``state.json``); return the JSON path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, "")
    step = int(state.get("global_step", 0))
    name = f"tensors-{step:09d}-{uuid.uuid4().hex[:8]}.safetensors"  # never overwrite the committed file
    with atomic_path(folder / name) as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / STATE_FILE, {"format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
                                     "tensors": name, "state": tree})
    for old in folder.glob("tensors-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / STATE_FILE


def state_step(folder: str | os.PathLike) -> int | None:
    """Return the step of the training state in `folder`, or None if there is none."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable training state ({exc}); delete the folder to start over") from exc


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Return the nested dict written by `save_state` (`path` is the folder or its ``state.json``).

    Only safetensors and JSON are read: no pickle, no code execution. Raises a UserError naming the file
    when it is missing, foreign or corrupt.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    meta = read_format_json(path, STATE_FORMAT, STATE_VERSION, "training state", "training state not found")
    tensor_file = path.parent / meta["tensors"]
    try:
        tensors = load_file(str(tensor_file), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{tensor_file}: cannot read the training state tensors ({exc})") from exc
    return _decode(meta["state"], tensors)
