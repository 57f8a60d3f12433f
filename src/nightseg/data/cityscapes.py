"""Cityscapes (gtFine): ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``; labelIds are mapped to trainIds on the fly."""

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

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIXES = {"labelIds": "_gtFine_labelIds.png", "labelTrainIds": "_gtFine_labelTrainIds.png"}
LAYOUT = "leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png"


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations; `split` train/val/test (test: images only, its gtFine is a placeholder).

    ``label_type="labelIds"`` (default) reads the official ``*_gtFine_labelIds.png`` and maps them to
    trainIds; ``"labelTrainIds"`` reads ``*_gtFine_labelTrainIds.png`` made by cityscapesscripts.
    """

    DATASET = "Cityscapes"
    SPLITS = ("train", "val", "test")
    EXPECTED_SIZE = (2048, 1024)
    IMAGE_DIR = "leftImg8bit/{split}"

    def __init__(self, root: str | Path, split: str = "train", transform=None, *, label_type: str = "labelIds",
                 skip_bad: bool = False) -> None:
        super().__init__(root, split, transform, skip_bad=skip_bad, label_type=label_type)

    @classmethod
    def scan(cls, root: Path, split: str, label_type: str = "labelIds", **_: Any) -> Listing:
        if label_type not in LABEL_SUFFIXES:
            raise ValueError(f"label_type must be one of {sorted(LABEL_SUFFIXES)}, got {label_type!r}")
        image_dir = require_dir(root / "leftImg8bit" / split, cls.DATASET, LAYOUT)
        images = files_with_suffix(image_dir, IMAGE_SUFFIX)
        if split == "test":
            return match_files(images, None)
        label_dir = require_dir(root / "gtFine" / split, cls.DATASET, LAYOUT)
        suffix = LABEL_SUFFIXES[label_type]
        listing = match_files(images, label=(label_dir, suffix))
        listing.label_map = LABEL_IDS if label_type == "labelIds" else TRAIN_IDS
        return listing
