"""Reading and writing images and label maps safely.

Every reader converts what is safe to convert (grayscale, RGBA, 16-bit, palette images) and raises a
`UserError` naming the file for what is not (corrupt files, RGB label maps). Every writer is atomic:
it writes a temporary file in the destination folder and renames it, so a kill never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from nightseg.core.errors import UserError

T = TypeVar("T")
R = TypeVar("R")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _open(path: Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: cannot decode image ({exc}); re-export it as PNG or JPEG") from exc
    return img


SINGLE_CHANNEL_MODES = ("1", "L", "LA", "P", "I;16", "I;16B", "I;16L", "I", "F")
"""Pillow modes of images with one channel of content (grayscale, 16-bit, palette): a label map given as an
input image usually has one of these."""


def read_image_with_info(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Return the image at `path` as an HxWx3 uint8 RGB array and the Pillow mode it was stored in.

    Grayscale is replicated to 3 channels, alpha is dropped, 16-bit images are scaled to 8 bits; the mode
    (e.g. ``"L"``, ``"P"``, ``"RGB"``) tells a caller what was converted (see `SINGLE_CHANNEL_MODES`).
    """
    img = _open(Path(path))
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2), mode
    try:
        if mode != "RGB":
            img = img.convert("RGB")
    except (ValueError, OSError) as exc:  # modes Pillow cannot convert (e.g. some float or CMYK variants)
        raise UserError(f"{path}: cannot convert a {mode!r} image to RGB ({exc}); re-export it as 8-bit PNG") from exc
    return np.asarray(img, dtype=np.uint8).copy(), mode


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Return the image at `path` as an HxWx3 uint8 RGB array.

    Grayscale is replicated to 3 channels, alpha is dropped, 16-bit images are scaled to 8 bits.
    """
    return read_image_with_info(path)[0]


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Return the single-channel label map at `path` as an HxW uint8 array.

    Palette ("P") PNGs give their indices. RGB label maps are refused: NightSeg expects id maps
    (trainIds or labelIds), not colour visualisations.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        if arr.max() > 255:
            raise UserError(f"{path}: label ids up to {int(arr.max())} do not fit the 8-bit id maps NightSeg expects")
        return arr.astype(np.uint8)
    if img.mode in ("RGB", "RGBA"):
        arr = np.asarray(img)
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return arr[..., 0].copy()
        raise UserError(
            f"{path}: label map is a colour ({img.mode}) image; expected a single-channel id map "
            "(e.g. *_labelTrainIds.png), not a colour visualisation"
        )
    raise UserError(f"{path}: unsupported label image mode {img.mode!r}; expected an 8-bit single-channel PNG")


_UMASK = os.umask(0)  # read the process umask once (os.umask can only read it by setting it)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on failure remove it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as exc:
        raise _about(exc, path) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600: give the file the usual umask-based mode
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and str(exc.filename or "").startswith(str(tmp_path.parent / f".{path.name}.")):
            raise _about(exc, path) from exc  # name the user's file, not our hidden temporary one
        raise


def _about(exc: OSError, path: Path) -> OSError:
    """Return `exc` re-addressed to `path` (same errno and reason) for the CLI's one-line message."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check, before any work starts, that the folder `path` can be created and written; return it.

    Creates the folder (as the work would) and a probe file inside it; raises a UserError naming `option`
    and the user's path when `path` is an existing file or cannot be written (permissions, read-only disk).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is an existing file, not a folder; give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write here ({exc.strerror or exc}); "
                        "choose a folder you can write to") from exc
    return path


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check, before any work starts, that the file `path` can be written (its folder is writable and it is
    not an existing folder); return it. Raises a UserError naming `option` and the user's path."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is an existing folder; give a file path")
    check_output_dir(path.parent if str(path.parent) else Path("."), option=f"{option} {path}: folder")
    return path


def write_png(path: str | os.PathLike, array: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Atomically write a uint8 (HxW or HxWx3) or uint16 (HxW) array as PNG and return the path.

    With `palette` (Nx3 uint8), an HxW array is written as a palette PNG.
    """
    array = np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError("uint16 PNGs must be single-channel")
        img = Image.fromarray(array)  # Pillow infers 16-bit grayscale ("I;16")
    else:
        img = Image.fromarray(array.astype(np.uint8, copy=False))
    if palette is not None and array.ndim == 2:
        img = img.convert("P")
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: len(palette)] = palette
        img.putpalette(flat.reshape(-1).tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write `data` as indented JSON and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(path)


def list_images(folder: str | os.PathLike, suffix: str | None = None) -> list[Path]:
    """Return the image files under `folder` (recursively), sorted; raise a UserError if it is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder; give the folder that holds it" if folder.exists() else "folder not found"
        raise UserError(f"{folder}: {what}")
    suffixes = (suffix,) if suffix else IMAGE_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))


def json_safe(obj: Any) -> Any:
    """Return `obj` with NaN / inf floats replaced by None, recursively (strict JSON for metrics files)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def prefetch(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """Yield ``fn(item)`` in order, computing up to ``2 * workers`` items ahead in threads (reading files
    while the caller computes)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def expand_image_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """Return (image path, output path relative to --out) for files, folders and glob patterns."""
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pairs += [(p, p.relative_to(path).with_suffix(".png")) for p in list_images(path)]
        elif path.is_file():
            pairs.append((path, Path(path.stem + ".png")))
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            files = [p for p in matches if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)]
            if not files:
                raise UserError(f"{item}: pattern matches no image files")
            pairs += [(p, Path(p.stem + ".png")) for p in files]
        else:
            raise UserError(f"{item}: no such file or folder")
    if not pairs:
        raise UserError(f"{' '.join(inputs)}: no images found")
    seen: dict[Path, Path] = {}
    for src, rel in pairs:
        if rel in seen and seen[rel] != src:
            raise UserError(
                f"{src}: would overwrite the output of {seen[rel]} ({rel}); write them into different --out folders"
            )
        seen[rel] = src
    return list(dict.fromkeys(pairs))


def read_format_json(path: Path, fmt: str, version: int, kind: str, missing: str) -> dict[str, Any]:
    """Return the JSON object at `path` that declares ``"format": fmt`` and a version up to `version`.

    One-line UserErrors name `path`: `missing` when there is no file, and for invalid JSON, another
    format (`kind` says what was expected, e.g. "checkpoint") or a newer version.
    """
    if not path.is_file():
        raise UserError(f"{path}: {missing}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); the {kind} is damaged") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UserError(f"{path}: not a NightSeg {kind} (missing \"format\": \"{fmt}\")")
    found = data.get("version", 0)
    if isinstance(found, bool) or not isinstance(found, int):
        raise UserError(f"{path}: \"version\" is {found!r}, not a whole number; the {kind} is damaged")
    if found > version:
        raise UserError(f"{path}: {kind} version {data['version']} is newer than this NightSeg supports ({version}); "
                        "upgrade nightseg")
    return data
