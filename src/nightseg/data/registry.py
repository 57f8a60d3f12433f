"""Every dataset by name: `build_dataset(name, root, split)`. A new dataset is one module in `nightseg.data`
plus one line in `DATASETS`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nightseg.core.errors import UserError
from nightseg.data.acdc import ACDC
from nightseg.data.bdd100k import BDD100K
from nightseg.data.cityscapes import Cityscapes
from nightseg.data.common import SegmentationDataset
from nightseg.data.dark_zurich import DarkZurich, DarkZurichPairs
from nightseg.data.folder import FolderDataset
from nightseg.data.nightcity import NightCity, NightCityPlus
from nightseg.data.nighttime_driving import NighttimeDriving

DATASETS: dict[str, type[SegmentationDataset]] = {
    "cityscapes": Cityscapes,
    "dark_zurich": DarkZurich,
    "dark_zurich_pairs": DarkZurichPairs,
    "acdc": ACDC,
    "nighttime_driving": NighttimeDriving,
    "nightcity": NightCity,
    "nightcity+": NightCityPlus,
    "bdd100k": BDD100K,
    "folder": FolderDataset,
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def dataset_class(name: str) -> type[SegmentationDataset]:
    """Return the dataset class registered as `name` (case-insensitive, '-' = '_'); UserError if unknown."""
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    return DATASETS[key]


def build_dataset(name: str, root: str | Path, split: str | None = None, **kw: Any) -> SegmentationDataset:
    """Return dataset `name` at `root` for `split` (its default split when None); `kw` go to the class."""
    cls = dataset_class(name)
    return cls(root, split, **kw) if split is not None else cls(root, **kw)
