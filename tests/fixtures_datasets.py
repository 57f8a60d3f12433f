"""Tiny dataset trees with the real on-disk layouts and, where a real list exists, the real file names.

Names come from the real lists in ``../shared/realdata/dataset_lists/`` (Cityscapes train, Dark Zurich
pairs/val/test, Nighttime Driving), from the real BDD100K night label maps, and from ACDC names seen in
public code (``night/train/GOPR0351/GOPR0351_frame_000159`` etc.). NightCity has no public name list:
its names here are illustrative. The Cityscapes val sample is the real 128x256 image with its real
gtFine labels. Everything else is written small (36x64) so that the tests stay fast.

Each ``make_*`` returns a `Tree`: the root plus, per labelled sample, its image and label paths (and,
where the dataset has them, its invalid mask, its reference image and the night/day pairs), which `plant`
uses to put one defect of a given kind into the copy. `CHECK_DEFECTS` lists, per `nightseg data check`
name, the defects its fixture can carry.
"""

from __future__ import annotations

import csv
import json
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from nightseg.core.io import write_png

H, W = 36, 64
DEFECTS = ("missing_label", "size_mismatch", "unknown_value", "corrupt_image")
"""Defects of a labelled sample, planted in every labelled fixture."""
INVALID_DEFECTS = ("missing_invalid", "invalid_size_mismatch")
"""Defects of the ``_gt_invIds`` invalid mask (Dark Zurich val, ACDC)."""
REFERENCE_DEFECTS = ("missing_reference", "reference_size_mismatch", "corrupt_reference")
"""Defects of the ACDC ``_rgb_ref_anon`` reference image."""
PAIR_DEFECTS = ("corrupt_night", "corrupt_day")
"""Defects of a Dark Zurich night->day pair."""


@dataclass
class Tree:
    """A fixture copy: `root`, the dataset `name`, and ``(image, label)`` of its labelled samples."""

    name: str
    root: Path
    labelled: list[tuple[Path, Path]] = field(default_factory=list)
    unknown_value: int = 200
    invalid: dict[Path, Path] = field(default_factory=dict)  # image -> its invalid mask
    references: dict[Path, Path] = field(default_factory=dict)  # image -> its reference (day) image
    pairs: list[tuple[Path, Path]] = field(default_factory=list)  # (night, day) images of the pair CSV rows


def _rng(path: Path) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(path.name.encode()))


def image(path: Path, h: int = H, w: int = W, value: np.ndarray | None = None) -> Path:
    """Write a textured RGB image (PNG or JPEG by suffix) and return its path."""
    arr = value if value is not None else _rng(path).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(arr).save(path, quality=90)
    else:
        write_png(path, arr)
    return path


def label(path: Path, values: tuple[int, ...], h: int = H, w: int = W) -> Path:
    """Write a label map made of horizontal bands of `values` and return its path."""
    rows = np.array(values, dtype=np.uint8)[np.arange(h) * len(values) // h]
    write_png(path, np.repeat(rows[:, None], w, axis=1))
    return path


def lines(realdata: Path, name: str) -> list[str]:
    return [s.strip() for s in (realdata / "dataset_lists" / name).read_text().splitlines() if s.strip()]


TRAIN_VALUES = (0, 1, 2, 8, 13, 255)
LABEL_ID_VALUES = (0, 4, 7, 8, 21, 23, 26)  # void ids and road, sidewalk, vegetation, sky, car


# ----------------------------------------------------------------------------------------------- builders
def make_cityscapes(root: Path, realdata: Path) -> Tree:
    tree = Tree("cityscapes", root)
    train = lines(realdata, "cityscapes_train.txt")
    for rel in (train[0], train[1], train[-1]):
        stem = rel.removesuffix("_leftImg8bit.png")
        img = image(root / "leftImg8bit/train" / f"{stem}_leftImg8bit.png")
        tree.labelled.append((img, label(root / "gtFine/train" / f"{stem}_gtFine_labelIds.png", LABEL_ID_VALUES)))
    real = realdata / "cityscapes_samples/tiny_128x256_with_gt"
    val_img = root / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    val_lab = root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    val_img.parent.mkdir(parents=True)
    val_lab.parent.mkdir(parents=True)
    shutil.copy(real / "leftImg8bit/frankfurt_000000_000294_leftImg8bit.png", val_img)
    shutil.copy(real / "gtFine/frankfurt_000000_000294_gtFine_labelIds.png", val_lab)
    tree.labelled.append((val_img, val_lab))
    image(root / "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png")
    return tree


def dark_zurich_rows(realdata: Path) -> list[tuple[str, str]]:
    rows = [tuple(r) for r in csv.reader((realdata / "dataset_lists/zurich_dn_pair_train.csv").open())]
    return [rows[0], rows[1], rows[-1]]


def make_dark_zurich(root: Path, realdata: Path, twilight: bool = False) -> Tree:
    tree = Tree("dark_zurich", root)
    rows = dark_zurich_rows(realdata)
    for night, day in rows:
        night_img = image(root / "rgb_anon" / f"{night}_rgb_anon.png")
        day_img = root / "rgb_anon" / f"{day}_rgb_anon.png"
        if not day_img.exists():
            image(day_img)
        tree.pairs.append((night_img, day_img))
    with (root / "zurich_dn_pair_train.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    val = lines(realdata, "zurich_val.txt")[:3]
    gts = lines(realdata, "label_zurich.txt")[:3]
    for rel, gt in zip(val, gts):
        img = image(root / "rgb_anon/val" / rel)
        stem = gt.removesuffix("_gt_labelIds.png")
        lab = label(root / f"{stem}_gt_labelTrainIds.png", TRAIN_VALUES)
        inv = np.zeros((H, W), dtype=np.uint8)
        inv[:, : W // 4] = 255
        write_png(root / f"{stem}_gt_invIds.png", inv)
        tree.labelled.append((img, lab))
        tree.invalid[img] = root / f"{stem}_gt_invIds.png"
    for rel in lines(realdata, "zurich_test.txt")[:2]:
        image(root / "rgb_anon" / rel)
    if twilight:  # no public twilight list: an illustrative sequence name
        image(root / "rgb_anon/train/twilight/GOPR0348/GOPR0348_frame_000001_rgb_anon.png")
    return tree


ACDC_NAMES = ("night/train/GOPR0351/GOPR0351_frame_000159", "fog/train/GOPR0475/GOPR0475_frame_000041",
              "rain/train/GOPR0400/GOPR0400_frame_000216")


def make_acdc(root: Path, realdata: Path | None = None) -> Tree:
    tree = Tree("acdc", root)
    for rel in ACDC_NAMES:
        cond, split, seq, stem = rel.split("/")
        img = image(root / "rgb_anon" / cond / split / seq / f"{stem}_rgb_anon.png")
        tree.references[img] = image(root / "rgb_anon" / cond / f"{split}_ref" / seq / f"{stem}_rgb_ref_anon.png")
        lab = label(root / "gt" / cond / split / seq / f"{stem}_gt_labelTrainIds.png", TRAIN_VALUES)
        inv = np.zeros((H, W), dtype=np.uint8)
        inv[: H // 3] = 1
        tree.invalid[img] = root / "gt" / cond / split / seq / f"{stem}_gt_invIds.png"
        write_png(tree.invalid[img], inv)
        tree.labelled.append((img, lab))
    return tree


ND_VALUES = ((0, 1, 255), (2, 8, 255), (10, 13, 255))  # trainIds of the i-th Nighttime Driving label (distinct per sample)


def make_nighttime_driving(root: Path, realdata: Path) -> Tree:
    tree = Tree("nighttime_driving", root)
    pairs = list(zip(lines(realdata, "leftImg8bit_filenames.txt"), lines(realdata, "gt_filenames.txt")))[:3]
    for (img_rel, gt_rel), values in zip(pairs, ND_VALUES):
        tree.labelled.append((image(root / img_rel), label(root / gt_rel, values)))
    return tree


NIGHTCITY_NAMES = {"train": ("Chicago_0001", "Tokyo_0042"), "val": ("LosAngeles_0007",)}  # illustrative


def make_nightcity(root: Path, realdata: Path | None = None, suffix: str = "_labelIds.png") -> Tree:
    tree = Tree("nightcity", root)
    values = LABEL_ID_VALUES if suffix == "_labelIds.png" else TRAIN_VALUES
    for split, names in NIGHTCITY_NAMES.items():
        for name in names:
            img = image(root / "images" / split / f"{name}.png", 32, 64)
            tree.labelled.append((img, label(root / "label" / split / f"{name}{suffix}", values, 32, 64)))
    return tree


NIGHTCITY_PLUS_VALUES = (7, 11, 26)  # labelIds road, building, car: the relabelled val map differs from NightCity's


def make_nightcity_plus(root: Path, realdata: Path | None = None) -> Tree:
    """NightCity with its val labels replaced by relabelled maps (as in a NightCity+ copy); val sample first."""
    tree = make_nightcity(root)
    tree.name = "nightcity+"
    val = [(img, lab) for img, lab in tree.labelled if img.parent.name == "val"]
    for _img, lab in val:
        label(lab, NIGHTCITY_PLUS_VALUES, 32, 64)
    tree.labelled = val + [pair for pair in tree.labelled if pair not in val]
    return tree


def bdd_night_ids(realdata: Path) -> dict[str, list[str]]:
    base = realdata / "bdd100k_night/night_labels_train_id"
    return {split: sorted(p.name.removesuffix("_train_id.png") for p in (base / split).glob("*.png"))[:n]
            for split, n in (("train", 2), ("val", 1))}


BDD_DAY_ID = "0000f77c-6257be58"  # a BDD100K image id; marked daytime in the fixture JSON


def make_bdd100k(root: Path, realdata: Path, legacy: bool = False) -> Tree:
    """Real night label maps (720x1280 trainIds) with stand-in JPEG images, plus one day image."""
    tree = Tree("bdd100k", root)
    img_dir, lab_dir, lab_suffix = ("seg/images", "seg/labels", "_train_id.png") if legacy else (
        "images/10k", "labels/sem_seg/masks", ".png")
    base = root / "bdd100k"
    frames = {"train": [], "val": []}
    for split, ids in bdd_night_ids(realdata).items():
        for i in ids:
            lab = base / lab_dir / split / f"{i}{lab_suffix}"
            lab.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(realdata / "bdd100k_night/night_labels_train_id" / split / f"{i}_train_id.png", lab)
            tree.labelled.append((image(base / img_dir / split / f"{i}.jpg", 720, 1280), lab))
            frames[split].append({"name": f"{i}.jpg", "attributes": {"timeofday": "night", "weather": "clear"}})
    day_img = image(base / img_dir / "train" / f"{BDD_DAY_ID}.jpg", 720, 1280)
    day_lab = label(base / lab_dir / "train" / f"{BDD_DAY_ID}{lab_suffix}", TRAIN_VALUES, 720, 1280)
    tree.labelled.append((day_img, day_lab))
    frames["train"].append({"name": f"{BDD_DAY_ID}.jpg", "attributes": {"timeofday": "daytime"}})
    for split, entries in frames.items():
        path = base / "labels" / f"bdd100k_labels_images_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries))
    return tree


def make_folder(root: Path, realdata: Path | None = None) -> Tree:
    tree = Tree("folder", root, unknown_value=9)
    for name, suffix in (("street_a", ".jpg"), ("street_b", ".png"), ("sub/street_c", ".png")):
        img = image(root / "images/train" / f"{name}{suffix}")
        tree.labelled.append((img, label(root / "labels/train" / f"{name}.png", (0, 1, 2, 3))))
    (root / "classes.yaml").write_text("mapping:\n  0: ignore\n  1: road\n  2: car\n  3: 10\n")
    return tree


BUILDERS = {
    "cityscapes": make_cityscapes,
    "dark_zurich": make_dark_zurich,
    "acdc": make_acdc,
    "nighttime_driving": make_nighttime_driving,
    "nightcity": make_nightcity,
    "nightcity+": make_nightcity_plus,
    "bdd100k": make_bdd100k,
    "folder": make_folder,
    "dark_zurich_pairs": make_dark_zurich,
}
"""`nightseg data check` name -> the builder of its fixture."""

CHECK_DEFECTS: dict[str, tuple[str, ...]] = {name: DEFECTS for name in BUILDERS} | {
    "dark_zurich": DEFECTS + INVALID_DEFECTS,
    "acdc": DEFECTS + INVALID_DEFECTS + REFERENCE_DEFECTS,
    "dark_zurich_pairs": PAIR_DEFECTS,  # the pairs are unlabelled: only their images can be bad
}
"""`nightseg data check` name -> the defects `plant` can put into its fixture."""


def _resize(path: Path, mask: bool) -> None:
    arr = np.asarray(Image.open(path))
    h, w = arr.shape[:2]
    if mask:
        label(path, (0,), h + 2, w)
    else:
        image(path, h + 2, w)


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return path


def plant(tree: Tree, kind: str, index: int = 0) -> Path:
    """Put one defect of `kind` (see `CHECK_DEFECTS`) into sample `index`; return the file it concerns.

    The sample is labelled sample `index` (its invalid mask or reference for those kinds), or for the pair
    kinds pair `index`; ``corrupt_day`` counts only pairs whose day image no other pair lists, so that the
    defect concerns one sample.
    """
    if kind in PAIR_DEFECTS:
        if kind == "corrupt_night":
            return _corrupt(tree.pairs[index][0])
        days = [day for _night, day in tree.pairs]
        return _corrupt([day for day in days if days.count(day) == 1][index])
    img, lab = tree.labelled[index]
    if kind == "missing_label":
        lab.unlink()
        return img
    if kind == "size_mismatch":
        _resize(lab, mask=True)
        return lab
    if kind == "unknown_value":
        arr = np.asarray(Image.open(lab)).copy()
        arr[0, 0] = tree.unknown_value
        write_png(lab, arr)
        return lab
    if kind == "corrupt_image":
        return _corrupt(img)
    if kind == "missing_invalid":
        tree.invalid[img].unlink()
        return img
    if kind == "invalid_size_mismatch":
        _resize(tree.invalid[img], mask=True)
        return tree.invalid[img]
    if kind == "missing_reference":
        tree.references[img].unlink()
        return img
    if kind == "reference_size_mismatch":
        _resize(tree.references[img], mask=False)
        return tree.references[img]
    if kind == "corrupt_reference":
        return _corrupt(tree.references[img])
    raise ValueError(kind)
