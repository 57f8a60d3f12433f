"""What every dataset loader shares: listing and matching files, validating a copy, reading a sample.

A loader is a `SegmentationDataset` subclass that only says where its files are: a classmethod
``scan(root, split, **kw) -> Listing`` that lists the records of one split (raising a `UserError` that
names the expected layout when the root is wrong). Everything else lives here, once: matching images to
labels, reading and validating a sample (decode, size agreement, label values), the label-id -> trainId
mapping, the `skip_bad` policy, the joint transform and the conversion to the data contract:

* ``image``/``night``/``day``/``reference``: ``float32 [3,H,W]`` RGB in [0,1];
* ``label``: ``int64 [H,W]`` trainIds, 255 = ignore;  ``invalid``: ``bool [H,W]``;
* ``name``: the scene stem (e.g. ``frankfurt_000000_000294``); ``path``: the image path as a string.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from nightseg.core.classes import (
    CLASS_NAMES,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    NUM_CLASSES,
    VALID_LABEL_IDS,
)
from nightseg.core.errors import UserError
from nightseg.core.io import read_image, read_label

log = logging.getLogger("nightseg.data")

DOCS = "see docs/datasets.md"


# --------------------------------------------------------------------------------------------- label maps
@dataclass(frozen=True)
class LabelMap:
    """How the pixel values of a label file map to trainIds.

    `lut` (256 uint8) maps a stored value to its trainId; `known` (256 bool) marks the values that may
    appear at all: any other value is an "unknown label value" error naming the file.
    """

    lut: np.ndarray
    known: np.ndarray
    description: str

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Return the trainId map of a stored label map."""
        return self.lut[values]


def _train_ids_map() -> LabelMap:
    lut = np.arange(256, dtype=np.uint8)
    lut[NUM_CLASSES:] = IGNORE_INDEX
    known = np.zeros(256, dtype=bool)
    known[:NUM_CLASSES] = True
    known[IGNORE_INDEX] = True
    return LabelMap(lut, known, f"trainIds 0-{NUM_CLASSES - 1} and {IGNORE_INDEX} (ignore)")


def _label_ids_map() -> LabelMap:
    known = np.zeros(256, dtype=bool)
    known[sorted(VALID_LABEL_IDS)] = True
    return LabelMap(LABEL_ID_TO_TRAIN_ID.copy(), known, "Cityscapes labelIds 0-33")


TRAIN_IDS = _train_ids_map()
"""Labels stored as trainIds (``*_labelTrainIds.png``, BDD100K masks, Dark Zurich/ACDC ``_gt_labelTrainIds``)."""
LABEL_IDS = _label_ids_map()
"""Labels stored as Cityscapes labelIds (``*_gtFine_labelIds.png``, NightCity ``*_labelIds.png``)."""


# --------------------------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class Record:
    """The files of one sample. `reference` is the paired day image (Dark Zurich pairs, ACDC refs)."""

    name: str
    image: Path
    label: Path | None = None
    invalid: Path | None = None
    reference: Path | None = None
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Listing:
    """What `scan` found for one split.

    `records` are the complete samples; `missing` describes samples dropped because a file they need is
    absent (an image without its label, a pair whose day image is missing: one line each, naming the
    file); `orphans` are label/mask files whose image is absent; `notes` are informational lines;
    `label_map`, when set, is the encoding `scan` detected in this copy.
    """

    records: list[Record]
    missing: list[str] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    labelled: bool = True
    label_map: LabelMap | None = None


def require_dir(path: Path, dataset: str, layout: str) -> Path:
    """Return `path` if it is a folder, else raise a UserError saying which layout was expected there."""
    if not path.is_dir():
        raise UserError(f"{path} not found; expected the {dataset} layout {layout} — {DOCS}")
    return path


def files_with_suffix(folder: Path, suffix: str) -> dict[str, Path]:
    """Return ``{path relative to folder without suffix: path}`` for the files under `folder` ending in `suffix`."""
    out: dict[str, Path] = {}
    for path in sorted(folder.rglob(f"*{suffix}")):
        if path.is_file() and not path.name.startswith("."):
            rel = path.relative_to(folder).as_posix()
            out[rel[: -len(suffix)]] = path
    return out


def match_files(
    images: dict[str, Path],
    label: tuple[Path, str] | None = None,
    extras: dict[str, tuple[Path, str]] | None = None,
    name: Callable[[str], str] = lambda key: Path(key).name,
) -> Listing:
    """Pair images with their label and extra files (invalid masks, references) by their shared key.

    `images` comes from `files_with_suffix`: keys are paths relative to the split folder without the
    dataset's suffix, so sequence/city sub-folders must agree. `label` and each extra are
    ``(folder, suffix)``; every one is required: an image lacking one is reported in `missing` (naming
    the expected path) and left out. ``label=None`` means an unlabelled split.
    """
    wanted = ({"label": label} if label is not None else {}) | (extras or {})
    found = {field_name: files_with_suffix(folder, suffix) for field_name, (folder, suffix) in wanted.items()}
    listing = Listing(records=[], labelled=label is not None)
    for key, image in images.items():
        fields = {field_name: files.get(key) for field_name, files in found.items()}
        absent = [f for f, path in fields.items() if path is None]
        if absent:
            listing.missing.extend(
                f"{image}: no {f.replace('_', ' ')} (expected {wanted[f][0] / (key + wanted[f][1])})" for f in absent
            )
            continue
        listing.records.append(Record(name=name(key), image=image, **fields))
    for files in found.values():
        listing.orphans.extend(path for key, path in files.items() if key not in images)
    return listing


# --------------------------------------------------------------------------------------------- reading
def check_label(values: np.ndarray, path: Path, label_map: LabelMap) -> np.ndarray:
    """Return the 256-bin histogram of a stored label map; raise a UserError on values `label_map` does not know."""
    counts = np.bincount(values.ravel(), minlength=256)
    unknown = np.flatnonzero((counts > 0) & ~label_map.known)
    if unknown.size:
        shown = ", ".join(str(v) for v in unknown[:8]) + (", ..." if unknown.size > 8 else "")
        raise UserError(f"{path}: unknown label values [{shown}]; expected {label_map.description}")
    return counts


def _same_size(path: Path, shape: Sequence[int], image: Path, image_shape: Sequence[int], what: str) -> None:
    if tuple(shape[:2]) != tuple(image_shape[:2]):
        raise UserError(
            f"{path}: {what} is {shape[1]}x{shape[0]} but its image {image.name} is "
            f"{image_shape[1]}x{image_shape[0]} (WxH); they must have the same size"
        )


def read_record(record: Record, label_map: LabelMap) -> dict[str, Any]:
    """Read and validate the files of `record`.

    Returns numpy arrays: ``image`` (HxWx3 uint8), ``label`` (HxW uint8 trainIds) with ``label_counts``
    (256-bin histogram of the *stored* values), ``invalid`` (HxW bool), ``reference`` (HxWx3 uint8), for
    the files the record has. Raises a UserError naming the file for a corrupt file, a size mismatch or
    unknown label values.
    """
    out: dict[str, Any] = {"image": read_image(record.image)}
    shape = out["image"].shape
    if record.label is not None:
        stored = read_label(record.label)
        _same_size(record.label, stored.shape, record.image, shape, "label")
        out["label_counts"] = check_label(stored, record.label, label_map)
        out["label"] = label_map.apply(stored)
    if record.invalid is not None:
        mask = read_label(record.invalid)
        _same_size(record.invalid, mask.shape, record.image, shape, "invalid mask")
        out["invalid"] = mask != 0
    if record.reference is not None:
        ref = read_image(record.reference)
        _same_size(record.reference, ref.shape, record.image, shape, "reference image")
        out["reference"] = ref
    return out


def to_contract(sample: dict[str, Any]) -> dict[str, Any]:
    """Turn a (transformed) sample of tv_tensors into plain tensors with the contract's dtypes."""
    out: dict[str, Any] = {}
    for key, value in sample.items():
        if isinstance(value, tv_tensors.Image):
            value = value.as_subclass(torch.Tensor)
            value = value.float().div_(255.0) if value.dtype == torch.uint8 else value.float()
        elif isinstance(value, tv_tensors.Mask):
            value = value.as_subclass(torch.Tensor)
            value = value.to(torch.bool) if key == "invalid" else value.to(torch.int64)
        out[key] = value
    return out


def _image(arr: np.ndarray) -> tv_tensors.Image:
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))


def _mask(arr: np.ndarray) -> tv_tensors.Mask:
    return tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8)))


# --------------------------------------------------------------------------------------------- dataset
class SegmentationDataset(Dataset):
    """Base class of every NightSeg dataset; subclasses implement `scan` and set the class attributes.

    ``transform`` is a joint transform (see `nightseg.data.transforms`) called on a dict of tv_tensors
    (``Image`` uint8 for images, ``Mask`` uint8 for label/invalid), so every image and mask of a sample
    gets the same geometry. With ``skip_bad=True`` samples with missing files are dropped at construction
    and unreadable ones are skipped when loaded (each logged once); otherwise both raise a UserError.
    """

    DATASET: ClassVar[str] = "dataset"
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    LABEL_MAP: ClassVar[LabelMap] = TRAIN_IDS
    EXPECTED_SIZE: ClassVar[tuple[int, int] | None] = None  # (W, H) the dataset is distributed at
    IMAGE_DIR: ClassVar[str] = ""  # the split's image folder, e.g. "leftImg8bit/{split}" (for `split_present`)
    IMAGE_KEY: ClassVar[str] = "image"
    REFERENCE_KEY: ClassVar[str] = "reference"

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        *,
        skip_bad: bool = False,
        label_map: LabelMap | None = None,
        **scan_kw: Any,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        self.skip_bad = skip_bad
        self.check_split(split)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: dataset root not found; expected a {self.DATASET} copy — {DOCS}")
        self.listing = self.scan(self.root, split, **scan_kw)
        self.label_map = label_map or self.listing.label_map or self.LABEL_MAP
        if self.listing.missing:
            if not skip_bad:
                more = f" (and {len(self.listing.missing) - 1} more)" if len(self.listing.missing) > 1 else ""
                raise UserError(f"{self.listing.missing[0]}{more}; fix the copy or pass skip_bad/--skip-bad")
            log.warning("%s %s: skipping %d incomplete samples, first: %s", self.DATASET, split,
                        len(self.listing.missing), self.listing.missing[0])
        self.records = self.listing.records
        if not self.records:
            raise UserError(f"{self.root}: no usable {self.DATASET} {split} samples found — {DOCS}")
        self._bad: set[int] = set()

    @classmethod
    def check_split(cls, split: str) -> None:
        """Raise a UserError if `split` is not one of the dataset's splits."""
        if split not in cls.SPLITS:
            raise UserError(f"{cls.DATASET} has no split {split!r}; expected one of {', '.join(cls.SPLITS)}")

    @classmethod
    def split_present(cls, root: Path, split: str, **kw: Any) -> bool:
        """Return whether the image folder of `split` exists under `root` (the split was downloaded)."""
        return (root / cls.IMAGE_DIR.format(split=split, **kw)).is_dir()

    @classmethod
    def check_plan(cls, root: Path) -> list[tuple[str, str, dict[str, Any]]]:
        """Return what `nightseg data check` scans: ``(label, split, scan kwargs)`` per part of the copy."""
        return [(split, split, {}) for split in cls.SPLITS]

    @classmethod
    def scan(cls, root: Path, split: str, **kw: Any) -> Listing:  # pragma: no cover - abstract
        """Return the `Listing` of `split` under `root`; raise a UserError naming the expected layout."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> dict[str, Any]:
        """Return sample `index` before the transform (tv_tensors), raising a UserError if it is bad."""
        record = self.records[index]
        arrays = read_record(record, self.label_map)
        sample: dict[str, Any] = {self.IMAGE_KEY: _image(arrays["image"])}
        if "label" in arrays:
            sample["label"] = _mask(arrays["label"])
        if "invalid" in arrays:
            sample["invalid"] = _mask(arrays["invalid"])
        if "reference" in arrays:
            sample[self.REFERENCE_KEY] = _image(arrays["reference"])
        sample["name"] = record.name
        sample["path"] = str(record.image)
        sample.update(record.meta)
        return sample

    def apply_transform(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Apply the joint transform to the whole sample (one geometry for all its images and masks)."""
        return self.transform(sample) if self.transform is not None else sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.records)
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                sample = self.load(i)
            except UserError as exc:
                if not self.skip_bad:
                    raise
                self._bad.add(i)
                log.warning("skipping bad sample: %s", exc)
                continue
            return to_contract(self.apply_transform(sample))
        raise UserError(f"{self.root}: every {self.DATASET} {self.split} sample is unreadable")


def read_lines(path: Path) -> list[str]:
    """Return the non-empty, non-comment lines of a text file (a name list), stripped."""
    if not path.is_file():
        raise UserError(f"{path}: list file not found")
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def class_share_summary(counts: np.ndarray, top: int = 5) -> str:
    """Return a one-line summary of a trainId histogram: the `top` classes by share, ignore share, absent classes."""
    total = int(counts.sum())
    if total == 0:
        return "no labelled pixels"
    shares = counts[:NUM_CLASSES] / total
    order = np.argsort(-shares)[:top]
    parts = [f"{CLASS_NAMES[i]} {100 * shares[i]:.1f}%" for i in order if shares[i] > 0]
    absent = [CLASS_NAMES[i] for i in range(NUM_CLASSES) if counts[i] == 0]
    text = ", ".join(parts) + f"; ignore {100 * counts[IGNORE_INDEX] / total:.1f}%"
    if absent:
        text += f"; absent: {', '.join(absent)}" if len(absent) < 10 else f"; {len(absent)} classes absent"
    return text

