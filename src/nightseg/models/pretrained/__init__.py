"""Published checkpoints -> NightSeg checkpoints: one converter module per source format.

| format | module | what it reads |
|---|---|---|
| ``hf`` | `hf_segformer` | a Hugging Face ``transformers`` SegFormer folder (config.json + weights) |
| ``smp`` | `smp_hub` | a segmentation_models_pytorch hub folder (``smp.from_pretrained`` layout) |
| ``mmseg`` | `mmseg` | an OpenMMLab mmsegmentation ``.pth`` (``state_dict`` + ``meta``), or NVlabs SegFormer |
| ``dannet`` | `dannet` | DANNet's PSPNet / DeepLab-v2 / RefineNet ``.pth`` (+ ``NAME_light.pth``: adapted release) |

`import_checkpoint(ref)` detects the format (or takes ``fmt``), converts, fixes the class order and
returns a `Converted` (tensors + metadata with the source, licence note, classes and preprocessing).
`read_checkpoint(ref)` returns ``(tensors, metadata)`` for any reference: a NightSeg ``.safetensors`` as
it is, anything else converted on the fly; importing this package lets `nightseg.core.checkpoint.
load_segmenter_weights` (``method.init_checkpoint``) accept the same references.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nightseg.core.checkpoint import load_checkpoint, load_state_into, metadata_path, set_reference_reader
from nightseg.core.errors import UserError
from nightseg.core.factory import import_factory
from nightseg.models.pretrained import dannet, hf_segformer, mmseg, smp_hub
from nightseg.models.pretrained.common import Converted, apply_classes, first_keys, read_state_file
from nightseg.models.pretrained.reference import is_reference, parse_hf, resolve
from nightseg.models.segmenters import build_segmenter

FORMATS = ("hf", "smp", "mmseg", "dannet")
FOLDER_FORMATS = {"hf": hf_segformer, "smp": smp_hub}
FILE_FORMATS = {"mmseg": mmseg, "dannet": dannet}


def is_nightseg_checkpoint(path: Path) -> bool:
    """Return whether `path` is a NightSeg checkpoint (a .safetensors file with its .json beside it)."""
    return path.is_file() and path.suffix == ".safetensors" and metadata_path(path).is_file()


def _convert_folder(path: Path, fmt: str | None, source: str) -> tuple[Converted, list[str] | None]:
    if fmt in (None, "dannet") and dannet.detect_folder(path):
        return dannet.convert_folder(path, source)
    if fmt is not None and fmt not in FOLDER_FORMATS:
        raise UserError(f"{path}: a folder; --format {fmt} reads a file (folders: {', '.join(FOLDER_FORMATS)}, dannet)")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: missing config.json; a Hugging Face / smp model folder holds config.json "
                        "beside model.safetensors (download both)")
    for name, module in FOLDER_FORMATS.items():
        if fmt in (None, name) and module.detect(path):
            return module.convert(path, source)
    raise UserError(f"{path / 'config.json'}: not a {fmt or 'known'} model config (tried: hf = model_type "
                    "segformer, smp = _model_class)")


def _convert_file(path: Path, fmt: str | None, source: str) -> tuple[Converted, list[str] | None]:
    if fmt is not None and fmt not in FILE_FORMATS:
        raise UserError(f"{path}: a file; --format {fmt} reads a folder with config.json")
    checkpoint = read_state_file(path)
    tried = []
    for name, module in FILE_FORMATS.items():
        if fmt == name or (fmt is None and module.detect(checkpoint)):
            return module.convert(checkpoint, source)
        tried.append(name)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint.get("state_dict"), dict) else checkpoint
    raise UserError(f"{path}: unknown checkpoint layout; tried {', '.join(tried)} (folders: hf, smp, dannet); first keys: "
                    f"{first_keys(sorted(map(str, state)))}; pass --format if you know it")


def import_checkpoint(ref: str | os.PathLike, fmt: str | None = None, class_map: Any = None,
                      verify: bool = True) -> Converted:
    """Return the NightSeg form of the published checkpoint `ref` (a file, a folder or ``hf:ORG/NAME[@REV]``).

    `fmt`: one of `FORMATS` (None: detected). `class_map`: see `common.apply_classes`. With `verify`, the
    model is built and the tensors loaded strictly (every NightSeg tensor present, shapes equal). Raises a
    one-line UserError for anything that cannot be converted exactly.
    """
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    source = str(ref)
    path = resolve(ref)
    if is_nightseg_checkpoint(path):
        raise UserError(f"{path}: already a NightSeg checkpoint; use it directly")
    converted, names = (_convert_folder if path.is_dir() else _convert_file)(path, fmt, source)
    apply_classes(converted, names, class_map, source)
    parsed = parse_hf(ref)
    converted.pretrained["source"] = source
    if parsed is not None:
        converted.pretrained["url"] = f"https://huggingface.co/{parsed[0]}"
    if verify:
        config = dict(converted.model)
        name = config.pop("name")
        # a ``module:factory`` name (DANNet's networks) or a build_segmenter name
        model = import_factory(name, "model")(**config) if ":" in name else build_segmenter(name, **config)
        load_state_into(model, converted.tensors, source)
    return converted


def read_checkpoint(ref: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(tensors, metadata)`` of any model reference: a NightSeg checkpoint as stored, a published
    checkpoint (file, folder, ``hf:...``) converted with its detected format and Cityscapes class order."""
    if not is_reference(ref):
        path = Path(ref).expanduser()
        if path.suffix == ".safetensors" and (metadata_path(path).is_file() or not path.exists()):
            return load_checkpoint(path)
    converted = import_checkpoint(ref, verify=False)
    return converted.tensors, converted.metadata()


set_reference_reader(read_checkpoint)

__all__ = ["FORMATS", "Converted", "import_checkpoint", "read_checkpoint", "resolve"]
