"""NightCity (Tan et al., 2021) and NightCity+ (its relabelled val set, from NightLab): 1024x512 night scenes.

Layout under the root::

    images/{train,val}/<stem>.png
    label/{train,val}/<stem>_labelIds.png

Label encoding: the official labels are Cityscapes **labelIds** (0-33, the gtFine id table), mapped to
trainIds on the fly exactly like Cityscapes. Copies that were pre-converted to trainIds
(``<stem>_labelTrainIds.png`` or ``<stem>_trainIds.png``) are read as trainIds. The folder names
``image/`` and ``labels/`` are accepted too. NightCity+ has the same layout; point the root at a copy
whose ``label/val`` holds the relabelled maps, or pass ``label_dir=`` (the folder of the relabelled val
labels, same file names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nightseg.data.common import (
    LABEL_IDS,
    TRAIN_IDS,
    Listing,
    SegmentationDataset,
    files_with_suffix,
    match_files,
    require_dir,
)

IMAGE_SUFFIX = ".png"
LABEL_SUFFIXES = {"_labelIds.png": LABEL_IDS, "_labelTrainIds.png": TRAIN_IDS, "_trainIds.png": TRAIN_IDS}
LAYOUT = "images/<split>/<stem>.png + label/<split>/<stem>_labelIds.png"


def _first_dir(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root / names[0]


def label_suffix(label_dir: Path) -> str:
    """Return the label suffix used in `label_dir` (labelIds preferred), ``_labelIds.png`` if none is found."""
    for suffix in LABEL_SUFFIXES:
        if next(label_dir.rglob(f"*{suffix}"), None) is not None:
            return suffix
    return "_labelIds.png"


class NightCity(SegmentationDataset):
    """NightCity train/val (2998 / 1299 images at 1024x512) with labelIds mapped to trainIds."""

    DATASET = "NightCity"
    SPLITS = ("train", "val")
    EXPECTED_SIZE = (1024, 512)

    @classmethod
    def split_present(cls, root: Path, split: str, **_: Any) -> bool:
        return (_first_dir(root, ("images", "image")) / split).is_dir()

    def __init__(self, root: str | Path, split: str = "train", transform=None, *, label_dir: str | Path | None = None,
                 skip_bad: bool = False) -> None:
        super().__init__(root, split, transform, skip_bad=skip_bad, label_dir=label_dir)

    @classmethod
    def scan(cls, root: Path, split: str, label_dir: str | Path | None = None, **_: Any) -> Listing:
        image_dir = require_dir(_first_dir(root, ("images", "image")) / split, cls.DATASET, LAYOUT)
        labels = Path(label_dir).expanduser() if label_dir else _first_dir(root, ("label", "labels")) / split
        require_dir(labels, cls.DATASET, LAYOUT)
        images = {k: p for k, p in files_with_suffix(image_dir, IMAGE_SUFFIX).items()
                  if not any(p.name.endswith(s) for s in LABEL_SUFFIXES)}
        suffix = label_suffix(labels)
        listing = match_files(images, label=(labels, suffix))
        listing.label_map = LABEL_SUFFIXES[suffix]
        listing.notes.append(f"labels: {labels}/*{suffix} ({listing.label_map.description})")
        return listing


class NightCityPlus(NightCity):
    """NightCity+: NightCity with the val set relabelled (NightLab, NightLab); same layout and encoding."""

    DATASET = "NightCity+"
    SPLITS = ("train", "val")

    def __init__(self, root: str | Path, split: str = "val", transform=None, *, label_dir: str | Path | None = None,
                 skip_bad: bool = False) -> None:
        super().__init__(root, split, transform, label_dir=label_dir, skip_bad=skip_bad)
