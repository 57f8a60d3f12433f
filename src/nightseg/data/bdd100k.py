"""BDD100K semantic segmentation (the 10K subset), optionally restricted to its night images.

Layout under the root (the ``bdd100k/`` folder, or its parent)::

    images/10k/{train,val,test}/<id>.jpg
    labels/sem_seg/masks/{train,val}/<id>.png              trainIds 0-18, 255 = ignore
    labels/bdd100k_labels_images_{train,val}.json          optional: attributes.timeofday per image

The older segmentation release (``seg/images/<split>/<id>.jpg`` + ``seg/labels/<split>/<id>_train_id.png``)
is read too. The night subset is chosen by a name list (``night_list=``: one image name or id per line)
or by ``timeofday="night"``, which reads the labels JSON (``attributes_json=`` or the default path above).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nightseg.core.errors import UserError
from nightseg.data.common import (
    Listing,
    SegmentationDataset,
    files_with_suffix,
    match_files,
    read_lines,
    require_dir,
)

LAYOUTS = {  # name: (image folder, image suffix, label folder, label suffix)
    "10k": ("images/10k", ".jpg", "labels/sem_seg/masks", ".png"),
    "seg": ("seg/images", ".jpg", "seg/labels", "_train_id.png"),
}
LAYOUT = "images/10k/<split>/*.jpg + labels/sem_seg/masks/<split>/*.png"
TIMES_OF_DAY = ("daytime", "night", "dawn/dusk", "undefined")


def bdd_root(root: Path) -> Path:
    """Return the folder holding the BDD100K layout: `root` itself or ``root/bdd100k``."""
    if not any((root / img).is_dir() for img, *_ in LAYOUTS.values()) and (root / "bdd100k").is_dir():
        return root / "bdd100k"
    return root


def image_id(name: str) -> str:
    """Return the BDD100K id of an image/label name or path (``.../0a0a0b1a-7c39d841.jpg`` -> ``0a0a0b1a-7c39d841``)."""
    base = Path(name.strip()).name
    for suffix in ("_train_id.png", ".jpg", ".png", ".jpeg"):
        base = base.removesuffix(suffix)
    return base


def timeofday_ids(path: Path, timeofday: str) -> set[str]:
    """Return the ids of the images whose ``attributes.timeofday`` equals `timeofday` in a BDD100K labels JSON."""
    if not path.is_file():
        raise UserError(f"{path}: BDD100K labels JSON not found (needed for timeofday={timeofday!r}); "
                        "pass attributes_json= or use a night name list")
    try:
        frames = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(frames, dict):  # the newer det_20 files wrap frames in {"frames": [...]}
        frames = frames.get("frames", [])
    return {image_id(f["name"]) for f in frames
            if isinstance(f, dict) and "name" in f and (f.get("attributes") or {}).get("timeofday") == timeofday}


class BDD100K(SegmentationDataset):
    """BDD100K 10K semantic segmentation; with `night_list` or `timeofday` only the selected images."""

    DATASET = "BDD100K"
    SPLITS = ("train", "val", "test")
    EXPECTED_SIZE = (1280, 720)

    @classmethod
    def split_present(cls, root: Path, split: str, **_: Any) -> bool:
        return any((bdd_root(root) / img / split).is_dir() for img, *_ in LAYOUTS.values())

    def __init__(self, root: str | Path, split: str = "train", transform=None, *,
                 night_list: str | Path | None = None, timeofday: str | None = None,
                 attributes_json: str | Path | None = None, skip_bad: bool = False) -> None:
        super().__init__(root, split, transform, skip_bad=skip_bad, night_list=night_list, timeofday=timeofday,
                         attributes_json=attributes_json)

    @classmethod
    def scan(cls, root: Path, split: str, night_list: str | Path | None = None, timeofday: str | None = None,
             attributes_json: str | Path | None = None, **_: Any) -> Listing:
        base = bdd_root(root)
        kind = next((k for k, (img, *_) in LAYOUTS.items() if (base / img).is_dir()), "10k")
        img_dir, img_suffix, label_dir, label_suffix = LAYOUTS[kind]
        image_dir = require_dir(base / img_dir / split, cls.DATASET, LAYOUT)
        images = files_with_suffix(image_dir, img_suffix)
        label = None
        if split != "test":
            label = (require_dir(base / label_dir / split, cls.DATASET, LAYOUT), label_suffix)
        listing = match_files(images, label=label)
        selected: set[str] | None = None
        if night_list is not None:
            selected = {image_id(line) for line in read_lines(Path(night_list).expanduser())}
            listing.notes.append(f"{len(selected)} names in {night_list}")
        if timeofday is not None:
            if timeofday not in TIMES_OF_DAY:
                raise UserError(f"timeofday {timeofday!r}: expected one of {', '.join(TIMES_OF_DAY)}")
            json_path = Path(attributes_json).expanduser() if attributes_json else (
                base / "labels" / f"bdd100k_labels_images_{split}.json")
            ids = timeofday_ids(json_path, timeofday)
            listing.notes.append(f"{len(ids)} images with timeofday={timeofday} in {json_path.name}")
            selected = ids if selected is None else selected & ids
        if selected is not None:
            keep = {image_id(str(p)) for p in images.values()} & selected
            listing.records = [r for r in listing.records if r.name in keep]
            listing.missing = [m for m in listing.missing if image_id(m.split(":", 1)[0]) in keep]
            listing.orphans = [p for p in listing.orphans if image_id(p.name) in selected]
            listing.notes.append(f"selected {len(keep)} of {len(images)} {split} images")
        return listing
