"""Dark Zurich: night->day training pairs, the labelled night val set, test and unlabelled train images.

Layout under the root (the three archives Dark_Zurich_{train,val,test}_anon extracted into one folder)::

    rgb_anon/train/{night,day,twilight}/<SEQ>/<SEQ>_frame_<N>_rgb_anon.png
    rgb_anon/val/night/<SEQ>/<stem>_rgb_anon.png      gt/val/night/<SEQ>/<stem>_gt_labelTrainIds.png
                                                      gt/val/night/<SEQ>/<stem>_gt_invIds.png
    rgb_anon/test/night/<SEQ>/<stem>_rgb_anon.png

Pairs come from a CSV in DANNet's format (``zurich_dn_pair_train.csv``): one
``train/night/<SEQ>/<stem>,train/day/<SEQ>/<stem>`` row per night image, relative to ``rgb_anon/``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from nightseg.core.errors import UserError
from nightseg.data.common import (
    Listing,
    Record,
    SegmentationDataset,
    files_with_suffix,
    match_files,
    require_dir,
)

IMAGE_SUFFIX = "_rgb_anon.png"
LABEL_SUFFIX = "_gt_labelTrainIds.png"
INVALID_SUFFIX = "_gt_invIds.png"
CONDITIONS = ("night", "day", "twilight")
LAYOUT = "rgb_anon/<split>/<condition>/<SEQ>/*_rgb_anon.png (+ gt/val/night/<SEQ>/*_gt_labelTrainIds.png)"
PAIR_CSV_NAMES = ("zurich_dn_pair_train.csv", "lists/zurich_dn_pair_train.csv")


class DarkZurich(SegmentationDataset):
    """Single Dark Zurich images: ``val`` (night, labelled, with invalid masks), ``test`` (night), or
    ``train`` images of one `condition` (night, day, or the optional twilight), unlabelled."""

    DATASET = "Dark Zurich"
    SPLITS = ("train", "val", "test")
    EXPECTED_SIZE = (1920, 1080)
    IMAGE_DIR = "rgb_anon/{split}/{condition}"

    @classmethod
    def split_present(cls, root: Path, split: str, condition: str = "night", **_: Any) -> bool:
        return (root / "rgb_anon" / split / condition).is_dir()

    @classmethod
    def check_plan(cls, root: Path) -> list[tuple[str, str, dict[str, Any]]]:
        return [(f"train/{c}", "train", {"condition": c}) for c in CONDITIONS] + [
            ("val", "val", {}), ("test", "test", {})]

    def __init__(self, root: str | Path, split: str = "val", transform=None, *, condition: str = "night",
                 skip_bad: bool = False) -> None:
        super().__init__(root, split, transform, skip_bad=skip_bad, condition=condition)

    @classmethod
    def scan(cls, root: Path, split: str, condition: str = "night", **_: Any) -> Listing:
        if condition not in CONDITIONS:
            raise UserError(f"Dark Zurich condition {condition!r}: expected one of {', '.join(CONDITIONS)}")
        image_dir = require_dir(root / "rgb_anon" / split / condition, cls.DATASET, LAYOUT)
        images = files_with_suffix(image_dir, IMAGE_SUFFIX)
        if split != "val":
            return match_files(images, None)
        gt_dir = require_dir(root / "gt" / split / condition, cls.DATASET, LAYOUT)
        return match_files(images, label=(gt_dir, LABEL_SUFFIX), extras={"invalid": (gt_dir, INVALID_SUFFIX)})


def find_pairs_csv(root: Path) -> Path:
    """Return the pair CSV under `root` (``zurich_dn_pair_train.csv``, ``lists/...`` or one ``*pair*.csv``)."""
    candidates = [root / name for name in PAIR_CSV_NAMES] + sorted(root.glob("*pair*.csv"))
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(
        f"{root}: no night->day pair CSV found (looked for {', '.join(PAIR_CSV_NAMES)} and *pair*.csv); "
        "pass pairs_csv= / --pairs with DANNet's zurich_dn_pair_train.csv — see docs/datasets.md"
    )


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """Return the (night, day) entries of a pair CSV, each relative to ``rgb_anon/`` without suffix."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text (UTF-8) pair CSV ({exc.reason} at byte {exc.start}); expected "
                        "'night_path,day_path' lines") from None
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row if c.strip()]
        if not cells or cells[0].startswith("#"):
            continue
        if len(cells) != 2:
            raise UserError(f"{path}:{lineno}: expected 'night_path,day_path', got {','.join(row)!r}")
        rows.append((cells[0].removesuffix(IMAGE_SUFFIX), cells[1].removesuffix(IMAGE_SUFFIX)))
    if not rows:
        raise UserError(f"{path}: the pair CSV has no rows")
    return rows


class DarkZurichPairs(SegmentationDataset):
    """Night->day training pairs: samples ``{"night", "day", "name", "day_name", "path"}``.

    ``pair_geometry="shared"`` (default) crops and flips both images with one geometry, as DANNet's
    pair loader does (the static scene content stays roughly aligned for the day-guided losses);
    ``"independent"`` draws a separate scale/crop/flip for each.
    """

    DATASET = "Dark Zurich pairs"
    SPLITS = ("train",)
    EXPECTED_SIZE = (1920, 1080)
    IMAGE_DIR = "rgb_anon/{split}"
    IMAGE_KEY = "night"
    REFERENCE_KEY = "day"

    def __init__(self, root: str | Path, split: str = "train", transform=None, *, pairs_csv: str | Path | None = None,
                 pair_geometry: str = "shared", skip_bad: bool = False) -> None:
        if pair_geometry not in ("shared", "independent"):
            raise ValueError(f"pair_geometry must be 'shared' or 'independent', got {pair_geometry!r}")
        self.pair_geometry = pair_geometry
        super().__init__(root, split, transform, skip_bad=skip_bad, pairs_csv=pairs_csv)

    @classmethod
    def scan(cls, root: Path, split: str, pairs_csv: str | Path | None = None, **_: Any) -> Listing:
        base = require_dir(root / "rgb_anon" / split, cls.DATASET, LAYOUT)
        csv_path = Path(pairs_csv).expanduser() if pairs_csv else find_pairs_csv(root)
        listing = Listing(records=[], labelled=False, notes=[f"pairs from {csv_path}"])
        root_rgb = base.parent
        for night, day in read_pairs(csv_path):
            night_path, day_path = root_rgb / f"{night}{IMAGE_SUFFIX}", root_rgb / f"{day}{IMAGE_SUFFIX}"
            absent = [p for p in (night_path, day_path) if not p.is_file()]
            if absent:
                listing.missing.extend(f"{p}: listed in {csv_path.name} but not found" for p in absent)
                continue
            listing.records.append(Record(name=Path(night).name, image=night_path, reference=day_path,
                                          meta={"day_name": Path(day).name}))
        return listing

    def apply_transform(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.transform is None or self.pair_geometry == "shared":
            return super().apply_transform(sample)
        night = self.transform({"night": sample.pop("night")})
        day = self.transform({"day": sample.pop("day")})
        return {**sample, **night, **day}
