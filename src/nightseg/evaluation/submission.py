"""Benchmark submission archives for Dark Zurich test, ACDC test and Cityscapes test.

Each packer takes a folder of predictions (what ``nightseg predict`` writes: ``<stem>_labelTrainIds.png``,
and with ``--confidence`` also ``<stem>_labelTrainIds_invalid.png`` and ``<stem>_confidence.png``; a
folder already in the benchmark layout works too) and the benchmark's test image names (a list file or
the dataset root), checks every file and writes the zip atomically. Nothing is written unless every test
image has a valid prediction: right name, size and dtype, values in range. Files are re-encoded, so the
archive always holds canonical 8-bit / 16-bit single-channel PNGs whatever the input encoding.

Layouts (what the evaluation servers read):

* **Dark Zurich** (UIoU challenge, CodaLab 23553): ``labelTrainIds/``, ``labelTrainIds_invalid/`` and
  ``confidence/`` at the top, each holding one PNG per test image named as the image
  (``GOPR0364_frame_000001_rgb_anon.png``), 1920x1080; trainIds 0-18 (uint8), the same with 255 where
  the prediction is declared invalid (uint8), confidence as uint16 (65535 = 1.0). 151 images.
* **ACDC**: the same three folders, each mirroring the image tree ``<condition>/test/<sequence>/<image
  name>``, 1920x1080 (``labelTrainIds/`` alone with ``uncertainty=False``). The test split is 500 images
  for each of fog, night, rain and snow (2000). Every condition packed must have its 500 listed test
  images; by default all four must be present, and a subset is packed only when asked for by name
  (``conditions=("night",)``, ``nightseg submit acdc --conditions night``): listed images of the other
  conditions are then left out (counted as ignored). So a condition folder missing from ``--root``
  or a truncated ``--list`` is an error, never a silently partial archive.
* **Cityscapes** (cityscapesscripts' ``getPrediction`` matches ``<city>_<seq>_<frame>*.png``): one labelIds
  PNG per test image, ``<city>_<seq>_<frame>_leftImg8bit.png``, 2048x1024; trainIds are converted with
  `train_ids_to_label_ids` (255 -> 0, unlabeled). The server accepts at most 100 MB.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from nightseg.core.classes import IGNORE_INDEX, NUM_CLASSES, VALID_LABEL_IDS, train_ids_to_label_ids
from nightseg.core.errors import UserError
from nightseg.core.io import atomic_path
from nightseg.evaluation.folder_eval import scene_stem

BENCHMARKS = ("dark_zurich", "acdc", "cityscapes")
UNCERTAINTY_FOLDERS = ("labelTrainIds", "labelTrainIds_invalid", "confidence")
CITYSCAPES_MAX_BYTES = 100 * 1024 * 1024

# file-name suffix (before .png) -> kind of map, longest first
_KINDS = (("_labelTrainIds_invalid", "invalid"), ("_confidence", "confidence"), ("_labelTrainIds", "labels"),
          ("_gt_labelTrainIds", "labels"), ("_trainIds", "labels"), ("_labelIds", "label_ids"))
# folder of the benchmark layout -> kind of the (plainly named) files inside
_FOLDER_KINDS = {"labelTrainIds": "labels", "labelTrainIds_invalid": "invalid", "confidence": "confidence"}


@dataclass(frozen=True)
class Benchmark:
    """How one benchmark names, sizes and lists its test images."""

    name: str
    size: tuple[int, int]  # (height, width)
    image_suffix: str
    image_dir: str  # under the dataset root
    count: int | None  # the number of test images when known (for all of them)
    conditions: tuple[str, ...] = ()  # ACDC: the conditions of the test split, each a top folder
    condition_count: int | None = None  # ACDC: the number of test images of each condition

    def condition(self, image_rel: str) -> str:
        """Return the condition (first folder of the archive path) of an ACDC image path."""
        return self.entry(image_rel).split("/", 1)[0]

    def entry(self, image_rel: str) -> str:
        """Return the archive path (inside each folder) of the prediction for an image path."""
        parts = Path(image_rel).parts
        if self.name == "acdc":
            if "rgb_anon" in parts:
                parts = parts[parts.index("rgb_anon") + 1 :]
            return "/".join(parts)
        if self.name == "cityscapes":
            return f"{scene_stem(parts[-1])[0]}_leftImg8bit.png"
        return parts[-1]


BENCHMARK_SPECS = {
    "dark_zurich": Benchmark("dark_zurich", (1080, 1920), "_rgb_anon.png", "rgb_anon/test/night", 151),
    "acdc": Benchmark("acdc", (1080, 1920), "_rgb_anon.png", "rgb_anon", None,
                      conditions=("fog", "night", "rain", "snow"), condition_count=500),
    "cityscapes": Benchmark("cityscapes", (1024, 2048), "_leftImg8bit.png", "leftImg8bit/test", 1525),
}


# --------------------------------------------------------------------------------------------- expected
def expected_images(benchmark: str, list_file: str | os.PathLike | None = None,
                    root: str | os.PathLike | None = None) -> list[str]:
    """Return the test image paths of `benchmark` from a list file (one path per line) or a dataset root.

    For ACDC from a root, every condition folder ``rgb_anon/<cond>/test`` is listed. Raises a UserError
    when neither is given or nothing is found.
    """
    spec = _spec(benchmark)
    if list_file is not None:
        path = Path(list_file)
        if not path.is_file():
            raise UserError(f"{path}: test list not found")
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        bad = [n for n in names if not n.endswith(spec.image_suffix)]
        if bad:
            raise UserError(f"{path}: line {bad[0]!r} is not a {benchmark} test image (*{spec.image_suffix})")
    elif root is not None:
        base = Path(root) / spec.image_dir
        if not base.is_dir():
            raise UserError(f"{base}: not found; --root must be the {benchmark} dataset root holding {spec.image_dir}/")
        files = sorted(base.rglob(f"*{spec.image_suffix}"))
        if benchmark == "acdc":
            files = [f for f in files if len(f.relative_to(base).parts) >= 3 and f.relative_to(base).parts[1] == "test"]
        names = [f.relative_to(base).as_posix() for f in files]
    else:
        raise UserError(f"{benchmark}: give the test image names with --list FILE or the dataset --root DIR")
    if not names:
        raise UserError(f"{list_file or root}: no {benchmark} test images listed")
    entries = [spec.entry(n) for n in names]
    dupes = {e for e in entries if entries.count(e) > 1} if len(set(entries)) != len(entries) else set()
    if dupes:
        raise UserError(f"{list_file or root}: test images map to the same archive name {sorted(dupes)[0]}")
    return names


def select_conditions(benchmark: str, images: list[str], conditions: Sequence[str] | None = None,
                      source: str | os.PathLike | None = None) -> list[str]:
    """Return the `images` to pack, after checking the per-condition counts (ACDC; others pass through).

    ACDC: every image must lie under one of the test conditions (``<condition>/test/...``). With
    `conditions` None all of them must be present; otherwise only the named ones are kept (each must be
    present). Every kept condition must have ``condition_count`` images. `source` (the list file or
    root) starts the error messages.
    """
    spec = _spec(benchmark)
    where = f"{source}" if source is not None else benchmark
    if not spec.conditions:
        if conditions:
            raise UserError(f"--conditions {' '.join(conditions)}: only ACDC test sets have conditions, not {benchmark}")
        return images
    by: dict[str, list[str]] = {}
    for image in images:
        cond = spec.condition(image)
        if cond not in spec.conditions:
            raise UserError(f"{where}: {image} is not under a {benchmark} condition folder "
                            f"({', '.join(spec.conditions)}); expected <condition>/test/<sequence>/<name>")
        by.setdefault(cond, []).append(image)
    present = [c for c in spec.conditions if c in by]
    if conditions is None:
        absent = [c for c in spec.conditions if c not in by]
        if absent:
            raise UserError(f"{where}: the {benchmark} test images listed cover {', '.join(present)} but not "
                            f"{', '.join(absent)}; give all {len(spec.conditions)} conditions, or pass "
                            f"--conditions {' '.join(present)} to pack only those")
        chosen = list(spec.conditions)
    else:
        chosen = list(dict.fromkeys(conditions))
        unknown = [c for c in chosen if c not in spec.conditions]
        if unknown or not chosen:
            raise UserError(f"--conditions {' '.join(conditions)}: expected some of {', '.join(spec.conditions)}")
        absent = [c for c in chosen if c not in by]
        if absent:
            raise UserError(f"{where}: no {benchmark} {', '.join(absent)} test images listed (found "
                            f"{', '.join(present)}); check --list/--root or --conditions")
    for cond in chosen:
        if spec.condition_count is not None and len(by[cond]) != spec.condition_count:
            raise UserError(f"{where}: {benchmark} {cond} test has {spec.condition_count} images but "
                            f"{len(by[cond])} were listed; check --list/--root")
    return [i for i in images if spec.condition(i) in chosen]


def _spec(benchmark: str) -> Benchmark:
    if benchmark not in BENCHMARK_SPECS:
        raise UserError(f"{benchmark}: unknown benchmark; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARK_SPECS[benchmark]


# --------------------------------------------------------------------------------------------- finding
def _classify(path: Path, root: Path) -> tuple[str, str] | None:
    """Return (scene stem, kind) of a prediction file, or None if it is not one."""
    name = path.name[: -len(".png")]
    for suffix, kind in _KINDS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return scene_stem(name[: -len(suffix)])[0], kind
    for part in path.relative_to(root).parts[:-1]:
        if part in _FOLDER_KINDS:
            return scene_stem(name)[0], _FOLDER_KINDS[part]
    return None


def index_predictions(pred_dir: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """Return ``{scene stem: {kind: path}}`` for the prediction PNGs under `pred_dir` (recursively).

    kinds: ``labels`` (trainIds), ``invalid``, ``confidence``, ``label_ids`` (Cityscapes labelIds).
    Raises a UserError if a scene has two files of one kind.
    """
    root = Path(pred_dir)
    if not root.is_dir():
        raise UserError(f"{root}: prediction folder not found")
    out: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*.png")):
        if path.name.startswith("."):
            continue
        found = _classify(path, root)
        if found is None:
            continue
        stem, kind = found
        if kind in out.setdefault(stem, {}):
            raise UserError(f"{path}: second {kind} map for scene {stem} (first: {out[stem][kind]}); keep one")
        out[stem][kind] = path
    return out


# --------------------------------------------------------------------------------------------- checking
def _read_raw(path: Path) -> tuple[np.ndarray, str]:
    """Return (array, PIL mode) without conversions, raising a UserError for unreadable files."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: cannot decode ({exc})") from exc
    return array, mode


def _check_size(path: Path, array: np.ndarray, size: tuple[int, int]) -> None:
    if array.shape[:2] != size:
        raise UserError(f"{path}: is {array.shape[1]}x{array.shape[0]}, the benchmark expects {size[1]}x{size[0]} "
                        "(predict at the test images' full resolution)")


def read_ids(path: Path, size: tuple[int, int], allowed: np.ndarray, what: str) -> np.ndarray:
    """Return an 8-bit single-channel id map after checking size, dtype and that its values are `allowed`."""
    array, mode = _read_raw(path)
    if mode not in ("L", "P") or array.dtype != np.uint8 or array.ndim != 2:
        raise UserError(f"{path}: is a {mode} image; {what} must be an 8-bit single-channel PNG")
    _check_size(path, array, size)
    present = np.flatnonzero(np.bincount(array.reshape(-1), minlength=256))
    bad = [int(v) for v in present if not allowed[v]]
    if bad:
        raise UserError(f"{path}: contains values {', '.join(map(str, bad[:5]))}; {what} allows only "
                        f"{_describe(allowed)}")
    return array


def read_confidence(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Return a uint16 confidence map after checking its size and 16-bit depth."""
    array, mode = _read_raw(path)
    if mode not in ("I;16", "I;16B", "I;16L", "I") or array.ndim != 2:
        raise UserError(f"{path}: is a {mode} image; confidence maps must be 16-bit single-channel PNGs "
                        "(0..65535 for 0..1; `nightseg predict --confidence` writes them)")
    _check_size(path, array, size)
    if array.dtype != np.uint16:
        if array.min() < 0 or array.max() > 65535:
            raise UserError(f"{path}: confidence values outside 0..65535")
        array = array.astype(np.uint16)
    return array


def _describe(allowed: np.ndarray) -> str:
    values = np.flatnonzero(allowed)
    runs, start = [], values[0]
    for a, b in zip(values, [*values[1:], None]):
        if b is None or b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(runs)


def _allowed(values: Any) -> np.ndarray:
    mask = np.zeros(256, dtype=bool)
    mask[list(values)] = True
    return mask


TRAIN_IDS_ALLOWED = _allowed(range(NUM_CLASSES))
INVALID_ALLOWED = _allowed([*range(NUM_CLASSES), IGNORE_INDEX])
PRED_TRAIN_IDS_ALLOWED = INVALID_ALLOWED  # Cityscapes: trainId predictions may leave pixels at 255
LABEL_IDS_ALLOWED = _allowed(sorted(VALID_LABEL_IDS))


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- packing
def scene_arrays(spec: Benchmark, found: dict[str, Path], uncertainty: bool) -> dict[str, np.ndarray]:
    """Return one scene's checked maps as ``{archive folder: array}`` ("" for Cityscapes' flat layout).

    Without an invalid map the labels are used (nothing invalid); without a confidence map, 65535 (1.0).
    """
    size = spec.size
    if spec.name == "cityscapes":
        if "labels" in found:
            train = read_ids(found["labels"], size, PRED_TRAIN_IDS_ALLOWED, "a trainId prediction")
            return {"": train_ids_to_label_ids(train)}
        return {"": read_ids(found["label_ids"], size, LABEL_IDS_ALLOWED, "a Cityscapes labelIds prediction")}
    labels = read_ids(found["labels"], size, TRAIN_IDS_ALLOWED, "labelTrainIds (255 belongs in labelTrainIds_invalid)")
    out = {"labelTrainIds": labels}
    if not uncertainty:
        return out
    invalid = labels
    if "invalid" in found:
        invalid = read_ids(found["invalid"], size, INVALID_ALLOWED, "labelTrainIds_invalid")
        differs = (invalid != IGNORE_INDEX) & (invalid != labels)
        if differs.any():
            raise UserError(f"{found['invalid']}: {int(differs.sum())} valid pixels differ from {found['labels'].name}; "
                            "labelTrainIds_invalid must be labelTrainIds with 255 where invalid")
    out["labelTrainIds_invalid"] = invalid
    out["confidence"] = read_confidence(found["confidence"], size) if "confidence" in found else np.full(size, 65535, np.uint16)
    return out


def pack_submission(
    benchmark: str,
    pred_dir: str | os.PathLike,
    out: str | os.PathLike,
    images: list[str],
    uncertainty: bool = True,
    fill_uncertainty: bool = False,
    progress: bool = True,
    conditions: Sequence[str] | None = None,
    source: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Check the predictions in `pred_dir` for the test `images` and write the zip `out` atomically.

    `uncertainty` (Dark Zurich always, ACDC optional) packs ``labelTrainIds_invalid`` and ``confidence``
    too; `fill_uncertainty` lets scenes without them pass (no invalid pixel, confidence 1.0: UIoU then
    equals IoU). ACDC: `conditions` packs only the named conditions (default: all four, each required);
    see `select_conditions`. `source` (the list file or dataset root) names where `images` came from in
    count errors. Returns ``{"archive", "benchmark", "images", "entries", "bytes", "ignored",
    "conditions"}``; raises a UserError naming the first problem and writes nothing when any prediction
    is missing or invalid or the image count is not the benchmark's.
    """
    spec = _spec(benchmark)
    if benchmark == "dark_zurich":
        uncertainty = True
    if benchmark == "cityscapes":
        uncertainty = False
    out = Path(out)
    if out.suffix != ".zip":
        raise UserError(f"--out {out}: the archive name must end in .zip")
    pred_dir = Path(pred_dir)
    images = select_conditions(benchmark, images, conditions, source)
    if spec.count is not None and len(images) != spec.count:
        raise UserError(f"{source if source is not None else benchmark}: {benchmark} test has {spec.count} images but "
                        f"{len(images)} were listed; check --list/--root")
    preds = index_predictions(pred_dir)
    need = {"labels"} | ({"confidence", "invalid"} if uncertainty and not fill_uncertainty else set())
    missing: list[str] = []
    plan: list[tuple[str, dict[str, Path]]] = []
    for image in images:
        stem = scene_stem(Path(image).name)[0]
        found = preds.get(stem, {})
        have = set(found) | ({"labels"} if "label_ids" in found and benchmark == "cityscapes" else set())
        lacking = sorted(need - have)
        if lacking:
            missing.append(f"{stem} ({', '.join(lacking)})")
            continue
        plan.append((image, found))
    if missing:
        hint = " (write them with `nightseg predict --confidence`, or pass --fill-uncertainty)" if uncertainty else ""
        raise UserError(f"{pred_dir}: {len(missing)} of {len(images)} {benchmark} test images lack predictions, first: "
                        f"{missing[0]}{hint}; nothing written")
    wanted = {scene_stem(Path(i).name)[0] for i in images}
    ignored = sorted(set(preds) - wanted)
    entries = 0
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for image, found in tqdm(plan, desc=f"pack {benchmark}", unit="img", disable=None if progress else True):
                for folder, array in scene_arrays(spec, found, uncertainty).items():
                    arcname = f"{folder}/{spec.entry(image)}" if folder else spec.entry(image)
                    zf.writestr(arcname, _png_bytes(array))
                    entries += 1
        size = tmp.stat().st_size
        if benchmark == "cityscapes" and size > CITYSCAPES_MAX_BYTES:
            raise UserError(f"{out}: the archive is {size / 2**20:.0f} MB; the Cityscapes server accepts at most 100 MB")
        verify_archive(tmp, benchmark, images, uncertainty)
    packed = sorted({spec.condition(i) for i in images}) if spec.conditions else []
    return {"archive": str(out), "benchmark": benchmark, "images": len(images), "entries": entries, "bytes": size,
            "ignored": len(ignored), "conditions": packed}


def archive_names(benchmark: str, images: list[str], uncertainty: bool = True) -> list[str]:
    """Return the sorted archive entry names a complete submission holds."""
    spec = _spec(benchmark)
    if benchmark == "cityscapes":
        return sorted(spec.entry(i) for i in images)
    folders = UNCERTAINTY_FOLDERS if uncertainty or benchmark == "dark_zurich" else UNCERTAINTY_FOLDERS[:1]
    return sorted(f"{f}/{spec.entry(i)}" for f in folders for i in images)


def verify_archive(path: str | os.PathLike, benchmark: str, images: list[str], uncertainty: bool = True) -> None:
    """Raise a UserError unless the zip at `path` holds exactly the expected entries as valid PNGs.

    Checks names, and for each entry the PNG's size and bit depth (8-bit maps, 16-bit confidence).
    """
    spec = _spec(benchmark)
    expected = archive_names(benchmark, images, uncertainty)
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
        if names != expected:
            extra = sorted(set(names) - set(expected))
            lacking = sorted(set(expected) - set(names))
            raise UserError(f"{path}: archive entries do not match the {benchmark} test set "
                            f"({len(lacking)} missing, e.g. {lacking[:1]}; {len(extra)} unexpected, e.g. {extra[:1]})")
        for name in names:
            with zf.open(name) as fh, Image.open(fh) as img:
                depth16 = name.startswith("confidence/")
                ok_mode = img.mode in ("I;16", "I;16B", "I;16L") if depth16 else img.mode == "L"
                if not ok_mode or (img.height, img.width) != spec.size:
                    raise UserError(f"{path}: entry {name} is {img.mode} {img.width}x{img.height}; expected "
                                    f"{'16-bit' if depth16 else '8-bit'} {spec.size[1]}x{spec.size[0]}")
