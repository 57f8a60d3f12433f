"""What every converter of a published checkpoint shares.

- `SourceTensors`: the source state dict, handed out key by key; `finish()` fails when a tensor was never
  consumed (so a layout we only half understand is refused instead of silently dropping weights), and
  `consumed` records that each source tensor went to exactly one place.
- `read_state_file`: a ``.safetensors`` file, or a pickled ``.pth``/``.bin`` read with
  ``torch.load(weights_only=True)`` only (a pickle that needs arbitrary code is refused, never run).
- `apply_classes`: checks the source's class order against Cityscapes' 19 trainIds, reorders the
  classifier rows when only the order differs, and refuses other class sets unless a class mapping is given.
- `Converted`: the NightSeg tensors plus the checkpoint metadata (``model`` build config and ``pretrained``:
  source, format, licence note, classes, preprocessing).
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from nightseg.core.classes import CLASS_NAMES
from nightseg.core.errors import UserError

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
CLASSIFIER = ("head.classifier.weight", "head.classifier.bias")


@dataclass
class Converted:
    """A converted checkpoint: NightSeg `tensors` and its metadata (``model`` config + ``pretrained`` info)."""

    tensors: dict[str, torch.Tensor]
    model: dict[str, Any]
    pretrained: dict[str, Any] = field(default_factory=dict)
    classifier: tuple[str, str] = CLASSIFIER  # the keys of the final 1x1 conv (weight, bias)

    def metadata(self) -> dict[str, Any]:
        """Return the checkpoint metadata: ``{"model": ..., "pretrained": ...}``."""
        return {"model": dict(self.model), "pretrained": dict(self.pretrained)}


class SourceTensors:
    """The tensors of a source state dict, each of which must be taken exactly once."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: str | Path, fmt: str) -> None:
        self.tensors = dict(tensors)
        self.source = str(source)
        self.format = fmt
        self.consumed: list[str] = []

    def take(self, key: str) -> torch.Tensor:
        """Return the tensor `key` and mark it consumed; a UserError when absent or already consumed."""
        if key in self.consumed:
            raise UserError(f"{self.source}: {self.format} converter read {key} twice (converter bug; please report)")
        if key not in self.tensors:
            raise UserError(f"{self.source}: not a complete {self.format} checkpoint: tensor {key} is missing")
        self.consumed.append(key)
        return self.tensors[key]

    def has(self, key: str) -> bool:
        """Return whether the source holds `key` (consumed or not)."""
        return key in self.tensors

    def drop(self, prefix: str) -> list[str]:
        """Consume (and discard) every tensor whose key starts with `prefix` (training-only parts such as
        mmseg's auxiliary head); return the keys."""
        keys = [k for k in self.tensors if k.startswith(prefix) and k not in self.consumed]
        self.consumed.extend(keys)
        return keys

    def finish(self) -> None:
        """Raise a UserError naming the first unconsumed source tensors, if any remain."""
        left = [k for k in self.tensors if k not in self.consumed]
        if left:
            raise UserError(f"{self.source}: {len(left)} {self.format} tensors have no place in the NightSeg model "
                            f"(e.g. {', '.join(left[:3])}); is it a variant this converter does not know?")


def tensors_of(state: Any, source: str | Path) -> dict[str, torch.Tensor]:
    """Return the flat {key: tensor} of a loaded state dict (only tensors; a UserError if there are none)."""
    if not isinstance(state, dict):
        raise UserError(f"{source}: holds a {type(state).__name__}, not a state dict of tensors")
    out = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise UserError(f"{source}: holds no tensors; not a model checkpoint")
    return out


def read_state_file(path: str | Path) -> dict[str, Any]:
    """Return the top-level dict of a ``.safetensors`` file or a pickled PyTorch file (``weights_only=True``).

    Raises a one-line UserError for a missing, truncated or non-checkpoint file, and for a pickle that
    needs arbitrary code to load (refused, never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file; download it again")
    if path.suffix == ".safetensors":
        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc}); truncated download?") from exc
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise UserError(f"{path}: refused: this pickle needs arbitrary code to load ({found.group(1)}); only "
                            "plain tensor state dicts are read (torch.load weights_only=True)") from exc
        raise UserError(f"{path}: truncated or not a PyTorch checkpoint (unreadable pickle); download it again") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: truncated or not a PyTorch checkpoint ({first}); download it again") from exc
    if isinstance(state, dict):
        return state
    raise UserError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Return the JSON object in `path`; a one-line UserError when it is missing or not JSON."""
    if not path.is_file():
        raise UserError(f"{path}: missing; a {what} folder holds config.json beside the weights")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _norm_name(name: str) -> str:
    return str(name).strip().lower().replace("_", " ").replace("-", " ")


def _placeholder(names: list[str]) -> bool:
    # Hugging Face fills id2label with LABEL_0.. when a model was saved without class names
    return all(_norm_name(n) == f"label {i}" for i, n in enumerate(names))


def load_class_map(class_map: str | Path | list | None, source_names: list[str], source: str) -> list[int] | None:
    """Return the source class index used for each NightSeg class of a class mapping (None: keep the source's
    classes). `class_map` is ``"keep"``, a JSON list, or the path of a JSON file holding one: entry i is the
    source class (name or index) that becomes NightSeg class i."""
    if class_map is None or class_map == "keep":
        return None
    entries = class_map
    if not isinstance(entries, list):
        path = Path(str(class_map))
        try:
            entries = json.loads(path.read_text())
        except OSError as exc:
            raise UserError(f"--class-map {class_map}: cannot read it ({exc.strerror}); give 'keep' or a JSON file") from exc
        except json.JSONDecodeError as exc:
            raise UserError(f"--class-map {class_map}: not valid JSON ({exc})") from exc
    if not isinstance(entries, list) or not entries:
        raise UserError(f"--class-map {class_map}: expected a JSON list (entry i = source class for NightSeg class i)")
    lookup = {_norm_name(n): i for i, n in enumerate(source_names)}
    out = []
    for entry in entries:
        if isinstance(entry, int) and 0 <= entry < len(source_names):
            out.append(entry)
        elif isinstance(entry, str) and _norm_name(entry) in lookup:
            out.append(lookup[_norm_name(entry)])
        else:
            raise UserError(f"--class-map {class_map}: {entry!r} is not a class of {source} "
                            f"({len(source_names)} classes, e.g. {', '.join(source_names[:3])})")
    return out


def apply_classes(converted: Converted, source_names: list[str] | None, class_map: Any, source: str) -> None:
    """Fix the class order of `converted` in place (Eq.-free bookkeeping, see the module docstring).

    19 classes named as Cityscapes' train classes (any order) -> rows reordered to trainId order; 19
    unnamed classes -> taken as trainId order (recorded as assumed); anything else -> a UserError unless
    `class_map` (``"keep"`` or a list/JSON file, see `load_class_map`) says what to do.
    """
    keys = converted.classifier
    weight, bias = (converted.tensors[k] for k in keys)
    count = weight.shape[0]
    names = [str(n) for n in source_names] if source_names else None
    if names is not None and _placeholder(names):
        names = None
    if names is not None and len(names) != count:
        raise UserError(f"{source}: the config names {len(names)} classes but the classifier has {count} outputs")
    info = converted.pretrained
    if class_map is not None:
        mapping = load_class_map(class_map, names or [str(i) for i in range(count)], source)
        if mapping is None:
            info["classes"] = names or [str(i) for i in range(count)]
            info["class_order"] = "source (kept with --class-map keep)"
        else:
            converted.tensors[keys[0]] = weight[mapping].clone()
            converted.tensors[keys[1]] = bias[mapping].clone()
            info["classes"] = [names[i] if names else str(i) for i in mapping]
            info["class_order"] = f"class map: source classes {mapping}"
        converted.model["num_classes"] = len(info["classes"])
        return
    wanted = [_norm_name(n) for n in CLASS_NAMES]
    if count != len(CLASS_NAMES):
        example = f" ({', '.join(names[:3])}, ...)" if names else ""
        raise UserError(f"{source}: {count} classes{example}, not Cityscapes' 19; pass --class-map FILE.json (entry i "
                        "= source class for NightSeg class i) or --class-map keep to keep its classes")
    if names is None:
        info["classes"] = list(CLASS_NAMES)
        info["class_order"] = "Cityscapes trainId (assumed: the source names no classes)"
        return
    given = [_norm_name(n) for n in names]
    if sorted(given) != sorted(wanted):
        odd = [n for n in names if _norm_name(n) not in wanted][:3]
        raise UserError(f"{source}: 19 classes but not Cityscapes' (e.g. {', '.join(odd)}); pass --class-map "
                        "FILE.json or --class-map keep")
    order = [given.index(n) for n in wanted]
    converted.tensors[keys[0]] = weight[order].clone()
    converted.tensors[keys[1]] = bias[order].clone()
    info["classes"] = list(CLASS_NAMES)
    info["class_order"] = "Cityscapes trainId" + ("" if order == list(range(19)) else f" (reordered from source {order})")


def first_keys(keys: Iterable[str], n: int = 3) -> str:
    """Return the first `n` of `keys`, comma-separated (for one-line errors)."""
    keys = list(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")
