"""Nighttime Driving test set (Dai & Van Gool, 2018): 50 night images with coarse trainId labels.

Layout under the root (NighttimeDrivingTest)::

    leftImg8bit/test/night/<stem>_leftImg8bit.png
    gtCoarse_daytime_trainvaltest/test/night/<stem>_gtCoarse_labelTrainIds.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nightseg.data.common import Listing, SegmentationDataset, files_with_suffix, match_files, require_dir

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtCoarse_labelTrainIds.png"
LAYOUT = ("leftImg8bit/test/night/*_leftImg8bit.png + "
          "gtCoarse_daytime_trainvaltest/test/night/*_gtCoarse_labelTrainIds.png")


class NighttimeDriving(SegmentationDataset):
    """The Nighttime Driving test images with their coarse labels (trainIds; unlabelled regions are 255)."""

    DATASET = "Nighttime Driving"
    SPLITS = ("test",)
    IMAGE_DIR = "leftImg8bit/{split}/night"

    def __init__(self, root: str | Path, split: str = "test", transform=None, *, skip_bad: bool = False) -> None:
        super().__init__(root, split, transform, skip_bad=skip_bad)

    @classmethod
    def scan(cls, root: Path, split: str, **_: Any) -> Listing:
        image_dir = require_dir(root / "leftImg8bit" / split / "night", cls.DATASET, LAYOUT)
        label_dir = require_dir(root / "gtCoarse_daytime_trainvaltest" / split / "night", cls.DATASET, LAYOUT)
        return match_files(files_with_suffix(image_dir, IMAGE_SUFFIX), label=(label_dir, LABEL_SUFFIX))
