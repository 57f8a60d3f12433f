"""A generic folder dataset for custom data: images, label PNGs and an optional class-mapping file.

Layout under the root::

    images/[<split>/]**/<stem>.{png,jpg,jpeg}
    labels/[<split>/]**/<stem>.png            same sub-folders and stem as the image
    classes.yaml | classes.json               optional: how label values map to the 19 classes

Without a mapping file the labels must already be trainIds (0-18, 255 = ignore). The mapping file::

    mapping:          # stored value -> class name, trainId, or "ignore"
      0: ignore
      1: road
      2: car
    unknown: error    # or "ignore": values not listed become 255 instead of being an error

With no ``images/<split>`` folders, use ``split="all"`` for everything under ``images/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nightseg.core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from nightseg.core.errors import UserError
from nightseg.data.common import (
    TRAIN_IDS,
    LabelMap,
    Listing,
    SegmentationDataset,
    files_with_suffix,
    match_files,
    require_dir,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAPPING_FILES = ("classes.yaml", "classes.yml", "classes.json")
LAYOUT = "images/<split>/**/<stem>.{png,jpg} + labels/<split>/**/<stem>.png (+ optional classes.yaml)"


def _target(value: Any, path: Path) -> int:
    if isinstance(value, str):
        if value.strip().lower() == "ignore":
            return IGNORE_INDEX
        if value in CLASS_NAMES:
            return CLASS_NAMES.index(value)
        raise UserError(f"{path}: unknown class {value!r}; expected one of {', '.join(CLASS_NAMES)} or 'ignore'")
    if isinstance(value, int) and (0 <= value < NUM_CLASSES or value == IGNORE_INDEX):
        return value
    raise UserError(f"{path}: mapping target {value!r} must be a class name, a trainId 0-18, 255 or 'ignore'")


def load_mapping(path: Path) -> LabelMap:
    """Return the LabelMap described by a class-mapping file (see the module docstring)."""
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot parse the class-mapping file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("mapping"), dict):
        raise UserError(f"{path}: expected a 'mapping' table of label value -> class name / trainId / 'ignore'")
    unknown = str(data.get("unknown", "error")).lower()
    if unknown not in ("error", "ignore"):
        raise UserError(f"{path}: 'unknown' must be 'error' or 'ignore', got {unknown!r}")
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    known = np.full(256, unknown == "ignore", dtype=bool)
    for key, value in data["mapping"].items():
        try:
            stored = int(key)
        except (TypeError, ValueError):
            raise UserError(f"{path}: label value {key!r} is not an integer 0-255") from None
        if not 0 <= stored <= 255:
            raise UserError(f"{path}: label value {stored} is outside 0-255")
        lut[stored], known[stored] = _target(value, path), True
    listed = ", ".join(str(v) for v in np.flatnonzero(known)[:12])
    return LabelMap(lut, known, f"the values listed in {path.name} ({listed}{', ...' if known.sum() > 12 else ''})")


def find_mapping(root: Path) -> Path | None:
    """Return the class-mapping file in `root`, or None."""
    return next((root / n for n in MAPPING_FILES if (root / n).is_file()), None)


def folder_splits(root: Path) -> list[str]:
    """Return the split names of a folder dataset: the sub-folders of ``images/``, or ``["all"]``."""
    images = root / "images"
    subdirs = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    return subdirs or ["all"]


class FolderDataset(SegmentationDataset):
    """Custom data in the folder layout above; ``split`` is a sub-folder of ``images/`` or ``"all"``."""

    DATASET = "folder"
    SPLITS = ()

    def __init__(self, root: str | Path, split: str = "all", transform=None, *, labelled: bool = True,
                 skip_bad: bool = False) -> None:
        super().__init__(root, split, transform, skip_bad=skip_bad, labelled=labelled)

    @classmethod
    def split_present(cls, root: Path, split: str, **_: Any) -> bool:
        return (root / "images" / ("" if split == "all" else split)).is_dir()

    @classmethod
    def check_plan(cls, root: Path) -> list[tuple[str, str, dict[str, Any]]]:
        return [(split, split, {}) for split in folder_splits(root)]

    @classmethod
    def check_split(cls, split: str) -> None:
        if not split or "/" in split or split.startswith("."):
            raise UserError(f"folder dataset split {split!r}: expected a sub-folder name of images/ or 'all'")

    @classmethod
    def scan(cls, root: Path, split: str, labelled: bool = True, **_: Any) -> Listing:
        sub = "" if split == "all" else split
        image_dir = require_dir(root / "images" / sub, cls.DATASET, LAYOUT)
        images: dict[str, Path] = {}
        for suffix in IMAGE_SUFFIXES:
            images.update(files_with_suffix(image_dir, suffix))
        label = (require_dir(root / "labels" / sub, cls.DATASET, LAYOUT), ".png") if labelled else None
        listing = match_files(dict(sorted(images.items())), label=label)
        mapping = find_mapping(root)
        listing.label_map = load_mapping(mapping) if mapping else TRAIN_IDS
        listing.notes.append(f"label encoding: {listing.label_map.description}")
        return listing
