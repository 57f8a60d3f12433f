"""`nightseg import`: convert a published checkpoint into a NightSeg checkpoint (safetensors + JSON).

The converters live in `nightseg.models.pretrained`; this writes their result atomically with the
metadata (source, licence note, classes, preprocessing) and returns a one-line summary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nightseg.core.checkpoint import save_checkpoint
from nightseg.core.errors import UserError
from nightseg.core.io import check_output_file
from nightseg.models.pretrained import import_checkpoint


def import_model(ref: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None,
                 class_map: Any = None) -> tuple[Path, dict[str, Any]]:
    """Convert the checkpoint `ref` (file, folder or ``hf:ORG/NAME[@REV]``) and write it to `out`.

    Returns (the written .safetensors path, its metadata). The model is rebuilt and the tensors loaded
    strictly before anything is written, so a written checkpoint always loads.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: NightSeg checkpoints end in .safetensors")
    check_output_file(out)
    converted = import_checkpoint(ref, fmt=fmt, class_map=class_map, verify=True)
    meta = converted.metadata()
    save_checkpoint(out, converted.tensors, meta)
    return out, meta


def summary(path: Path, meta: dict[str, Any]) -> str:
    """Return the one-line report of an import: file, architecture, class order, test-time preprocessing."""
    info, model = meta["pretrained"], meta["model"]
    test = info.get("preprocessing", {}).get("test", {})
    how = "whole image" if test.get("mode") != "slide" else \
        f"sliding window {test['window'][0]}x{test['window'][1]} stride {test['stride'][0]}"
    return (f"wrote {path} ({model['name']}, {info['architecture']}, {model['num_classes']} classes, "
            f"{info.get('class_order', '')}; predicts by {how}; licence: {info['licence']})")
