"""ACDC (Adverse Conditions Dataset with Correspondences): night, fog, rain and snow.

Layout under the root (rgb_anon_trainvaltest + gt_trainval extracted into one folder)::

    rgb_anon/<cond>/<split>/<SEQ>/<stem>_rgb_anon.png
    rgb_anon/<cond>/<split>_ref/<SEQ>/<stem>_rgb_ref_anon.png     (normal-condition reference of <stem>)
    gt/<cond>/<split>/<SEQ>/<stem>_gt_labelTrainIds.png  and  <stem>_gt_invIds.png   (train, val)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nightseg.core.errors import UserError
from nightseg.data.common import Listing, SegmentationDataset, files_with_suffix, match_files, require_dir

CONDITIONS = ("fog", "night", "rain", "snow")
IMAGE_SUFFIX = "_rgb_anon.png"
REF_SUFFIX = "_rgb_ref_anon.png"
LABEL_SUFFIX = "_gt_labelTrainIds.png"
INVALID_SUFFIX = "_gt_invIds.png"
LAYOUT = "rgb_anon/<cond>/<split>/<SEQ>/*_rgb_anon.png + gt/<cond>/<split>/<SEQ>/*_gt_labelTrainIds.png"
REF_LAYOUT = "rgb_anon/<cond>/<split>_ref/<SEQ>/*_rgb_ref_anon.png"


def resolve_conditions(root: Path, conditions: str | Sequence[str]) -> tuple[str, ...]:
    """Return the condition names; ``"all"`` means every condition folder present under ``rgb_anon/``."""
    if conditions == "all":
        found = tuple(c for c in CONDITIONS if (root / "rgb_anon" / c).is_dir())
        return found or CONDITIONS
    names = (conditions,) if isinstance(conditions, str) else tuple(conditions)
    bad = [c for c in names if c not in CONDITIONS]
    if bad or not names:
        raise UserError(f"ACDC conditions {bad or names}: expected some of {', '.join(CONDITIONS)} or 'all'")
    return names


class ACDC(SegmentationDataset):
    """ACDC images of the given `conditions` (default night); labels and invalid masks for train/val.

    With ``with_reference=True`` each sample also holds ``reference``: the ``_rgb_ref_anon`` image of the
    same place in normal (daytime, clear) conditions, so samples are ``{"image", "label", "invalid",
    "reference", "name", "condition", "path"}``.
    """

    DATASET = "ACDC"
    SPLITS = ("train", "val", "test")
    EXPECTED_SIZE = (1920, 1080)

    @classmethod
    def split_present(cls, root: Path, split: str, conditions: str | Sequence[str] = "night", **_: Any) -> bool:
        return any((root / "rgb_anon" / c / split).is_dir() for c in resolve_conditions(root, conditions))

    @classmethod
    def check_plan(cls, root: Path) -> list[tuple[str, str, dict[str, Any]]]:
        plan = []
        for split in cls.SPLITS:
            refs = any((root / "rgb_anon" / c / f"{split}_ref").is_dir() for c in CONDITIONS)
            plan.append((split, split, {"conditions": "all", "with_reference": refs}))
        return plan

    def __init__(self, root: str | Path, split: str = "train", transform=None, *,
                 conditions: str | Sequence[str] = "night", with_reference: bool = False,
                 skip_bad: bool = False) -> None:
        super().__init__(root, split, transform, skip_bad=skip_bad, conditions=conditions,
                         with_reference=with_reference)

    @classmethod
    def scan(cls, root: Path, split: str, conditions: str | Sequence[str] = "night",
             with_reference: bool = False, **_: Any) -> Listing:
        total = Listing(records=[], labelled=split != "test")
        for cond in resolve_conditions(root, conditions):
            image_dir = require_dir(root / "rgb_anon" / cond / split, cls.DATASET, LAYOUT)
            label, extras = None, {}
            if split != "test":
                gt_dir = require_dir(root / "gt" / cond / split, cls.DATASET, LAYOUT)
                label, extras["invalid"] = (gt_dir, LABEL_SUFFIX), (gt_dir, INVALID_SUFFIX)
            if with_reference:
                ref_dir = require_dir(root / "rgb_anon" / cond / f"{split}_ref", cls.DATASET, REF_LAYOUT)
                extras["reference"] = (ref_dir, REF_SUFFIX)
            listing = match_files(files_with_suffix(image_dir, IMAGE_SUFFIX), label=label, extras=extras)
            for record in listing.records:
                record.meta["condition"] = cond
            total.records += listing.records
            total.notes.append(f"{cond}: {len(listing.records)} samples" + (" with references" if with_reference else ""))
            total.missing += listing.missing
            total.orphans += listing.orphans
        return total
