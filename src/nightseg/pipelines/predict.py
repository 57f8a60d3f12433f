"""Predicting a checkpoint over images, folders, globs and videos into a folder of label maps (`nightseg predict`).

For each image ``<stem>`` it writes ``<stem>_labelTrainIds.png`` (trainIds, 255 = none),
``<stem>_color.png`` (Cityscapes colours) and ``<stem>_overlay.png`` (colours blended over the image);
``--confidence`` adds ``<stem>_confidence.png`` (uint16, 65535 = 1.0) and ``<stem>_labelTrainIds_invalid.png``
(255 where the confidence is below ``--invalid-threshold``), the extra maps of the Dark Zurich / ACDC
benchmarks (`nightseg submit`). Folders are searched recursively and their sub-folders kept under --out.

Videos are read frame by frame (OpenCV): ``<stem>/<stem>_<frame>_labelTrainIds.png`` per frame and, with
``--video-overlay``, ``<stem>_overlay.mp4``. Memory stays constant: decoding runs ahead by a few images in
threads, writing happens in threads behind the model with a bounded queue.

Every file is written atomically; a rerun skips inputs whose outputs all exist (a video's finished frames
are read back instead of recomputed), so an interrupted run resumes. ``--overwrite`` redoes everything.
Unreadable inputs stop the run with a one-line error (exit 2), or are skipped and counted with --skip-bad.
Single-channel inputs (grayscale, 16-bit, palette: often a label map given by mistake) are read as gray RGB
with a warning; a log line says when the checkpoint's bundled Zero-DCE relights every input first.
"""

from __future__ import annotations

import glob
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nightseg.core.errors import UserError
from nightseg.core.io import (
    IMAGE_SUFFIXES,
    SINGLE_CHANNEL_MODES,
    atomic_path,
    prefetch,
    read_image_with_info,
    read_label,
)
from nightseg.inference import (
    Prediction,
    Predictor,
    colorize_labels,
    overlay,
    palette_for,
)
from nightseg.inference.video import VideoWriter, is_video, open_video, read_frames
from nightseg.models.relight import DCENet

log = logging.getLogger("nightseg")

SUFFIXES = {
    "labels": "_labelTrainIds.png",
    "color": "_color.png",
    "overlay": "_overlay.png",
    "confidence": "_confidence.png",
    "invalid": "_labelTrainIds_invalid.png",
}
DEFAULT_OUTPUTS = ("labels", "color", "overlay")


# --------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Item:
    """One input: its path, the output stem relative to --out, and whether it is a video."""

    src: Path
    rel: Path
    video: bool = False


def _is_input(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES) or is_video(path)


def expand_inputs(inputs: list[str]) -> list[Item]:
    """Return the images and videos named by files, folders (recursive) and glob patterns, in order."""
    items: list[Item] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".") and _is_input(p)]
            if not found:
                raise UserError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) or videos found in this folder")
            items += [Item(p, p.relative_to(path).with_suffix(""), is_video(p)) for p in found]
        elif path.is_file():
            items.append(Item(path, Path(path.stem), is_video(path)))
        elif glob.has_magic(text):
            files = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
            files = [p for p in files if p.is_file() and _is_input(p)]
            if not files:
                raise UserError(f"{text}: pattern matches no image or video files")
            items += [Item(p, Path(p.stem), is_video(p)) for p in files]
        else:
            raise UserError(f"{text}: no such file or folder")
    seen: dict[Path, Path] = {}
    unique = []
    for item in items:
        if item.rel in seen:
            if seen[item.rel] != item.src:
                raise UserError(f"{item.src}: has the same output name {item.rel} as {seen[item.rel]}; predict them into different --out folders")
            continue
        seen[item.rel] = item.src
        unique.append(item)
    return unique


def parse_outputs(spec: str, confidence: bool) -> tuple[str, ...]:
    """Return the output kinds of ``--outputs`` (plus confidence + invalid with ``--confidence``)."""
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    bad = [k for k in kinds if k not in SUFFIXES]
    if bad or not kinds:
        raise UserError(f"--outputs {spec}: unknown kind(s) {', '.join(bad) or '(none)'}; expected some of {', '.join(SUFFIXES)}")
    if confidence:
        kinds += ["confidence", "invalid"]
    return tuple(dict.fromkeys(kinds))


# --------------------------------------------------------------------------------------------- writing
def save_png(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Atomically write a uint8 (HxW, HxWx3 RGB) or uint16 (HxW) array as PNG, favouring speed over size.

    With `palette` an HxW uint8 map becomes a palette PNG (Pillow); other maps are encoded by OpenCV
    (zlib level 1; run-length strategy for id maps, Huffman-only for images: 1.5x faster than Pillow at
    level 1 and smaller, and OpenCV releases the GIL so writer threads overlap with the model).
    """
    if palette is not None:
        img = Image.fromarray(np.ascontiguousarray(array)).convert("P")
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: len(palette)] = palette
        img.putpalette(flat.reshape(-1).tolist())
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG", compress_level=1)
        return path
    strategy = cv2.IMWRITE_PNG_STRATEGY_RLE if array.ndim == 2 else cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY
    data = array if array.ndim == 2 else array[..., ::-1]  # OpenCV wants BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(data),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, strategy])
    if not ok:
        raise UserError(f"{path}: OpenCV could not encode a {array.dtype} array of shape {array.shape} as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


@dataclass
class OutputWriter:
    """Writes the requested maps of each prediction in background threads, at most `max_pending` queued."""

    out: Path
    kinds: tuple[str, ...]
    num_classes: int
    invalid_threshold: float = 0.5
    workers: int = 2
    max_pending: int = 8
    _pool: ThreadPoolExecutor | None = None
    _pending: deque[Future[None]] = field(default_factory=deque)

    def paths(self, rel: Path) -> dict[str, Path]:
        """Return ``{kind: path}`` of the outputs of the input with relative stem `rel`."""
        return {k: self.out / rel.parent / f"{rel.name}{SUFFIXES[k]}" for k in self.kinds}

    def done(self, rel: Path) -> bool:
        """Return whether every output of `rel` exists (they are written atomically: existing = complete)."""
        return all(p.is_file() for p in self.paths(rel).values())

    def write_now(self, rel: Path, image: np.ndarray, pred: Prediction) -> None:
        """Write the outputs of one prediction (in the calling thread)."""
        paths = self.paths(rel)
        color = None
        for kind, path in paths.items():
            if kind == "labels":
                save_png(path, pred.labels)
            elif kind == "color":
                save_png(path, pred.labels, palette=palette_for(self.num_classes))
            elif kind == "overlay":
                color = colorize_labels(pred.labels, self.num_classes) if color is None else color
                save_png(path, overlay(image, color))
            elif kind == "confidence":
                save_png(path, pred.confidence_uint16())
            elif kind == "invalid":
                save_png(path, pred.labels_invalid(self.invalid_threshold))

    def submit(self, rel: Path, image: np.ndarray, pred: Prediction) -> None:
        """Queue the outputs of one prediction; blocks while `max_pending` writes are queued."""
        if self.workers < 1:
            self.write_now(rel, image, pred)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="nightseg-write")
        self._pending.append(self._pool.submit(self.write_now, rel, image, pred))
        while len(self._pending) > self.max_pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Wait for every queued write (re-raising the first error) and stop the threads."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- running
@dataclass
class Stats:
    """What a run did."""

    images: int = 0
    frames: int = 0
    videos: int = 0
    skipped_done: int = 0
    skipped_bad: list[str] = field(default_factory=list)
    single_channel: list[str] = field(default_factory=list)
    seconds: float = 0.0


WARN_SINGLE_CHANNEL = 3
"""Single-channel inputs named one by one in the log; the rest are only counted (`Stats.single_channel`)."""


def describe_preprocessing(segmenter: Predictor) -> str | None:
    """Return the log line that says what runs on each input before the segmenter (None when nothing does)."""
    step = getattr(segmenter.net, "relight", None)
    if step is None:
        return None
    if isinstance(step, DCENet):
        return ("relighting every input with Zero-DCE before segmenting (the checkpoint bundles it, or --relight "
                "asked for it; --no-relight turns it off)")
    return "translating every input night->day (--night2day) before segmenting"


def _read(item: Item) -> tuple[Item, np.ndarray | None, torch.Tensor | None, UserError | str]:
    """Decode one image and convert it to the model's float input (in a reader thread, off the main one);
    the last element is the error, or the Pillow mode the image was stored in."""
    try:
        array, mode = read_image_with_info(item.src)
    except UserError as exc:
        return item, None, None, exc
    return item, array, torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0), mode


def _single_channel(stats: Stats, item: Item, mode: str) -> None:
    """Count (and for the first few, name) an input stored with one channel: a label map or a grayscale photo."""
    stats.single_channel.append(str(item.src))
    if len(stats.single_channel) <= WARN_SINGLE_CHANNEL:
        log.warning("%s: single-channel (%s) image, read as gray RGB; the model expects colour camera images "
                    "(is this a label map?)", item.src, mode)


def _bad(stats: Stats, exc: UserError, skip_bad: bool) -> None:
    if not skip_bad:
        raise UserError(f"{exc} (--skip-bad skips unreadable inputs and continues)") from exc
    stats.skipped_bad.append(str(exc))
    log.warning("skipping: %s", exc)


def predict_images(
    segmenter: Predictor, items: list[Item], writer: OutputWriter, batch_size: int = 1, skip_bad: bool = False,
    workers: int = 2, progress: bool = True, stats: Stats | None = None,
) -> Stats:
    """Predict `items` (images) and write their outputs; decoding runs ahead in `workers` threads."""
    stats = stats or Stats()
    need_conf = any(k in writer.kinds for k in ("confidence", "invalid"))
    bar = tqdm(total=len(items), desc="predict", unit="img", disable=None if progress else True, dynamic_ncols=True)
    batch: list[tuple[Item, np.ndarray, torch.Tensor]] = []

    def flush() -> None:
        preds = segmenter.predict_batch([t for _, _, t in batch], return_confidence=need_conf)
        for (item, array, _), pred in zip(batch, preds):
            writer.submit(item.rel, array, pred)
        stats.images += len(batch)
        bar.update(len(batch))
        batch.clear()

    for item, array, tensor, status in prefetch(_read, items, workers):
        if isinstance(status, UserError):
            _bad(stats, status, skip_bad)
            bar.update(1)
            continue
        assert array is not None and tensor is not None
        if status in SINGLE_CHANNEL_MODES:
            _single_channel(stats, item, status)
        if batch and (len(batch) >= batch_size or batch[0][1].shape != array.shape):
            flush()
        batch.append((item, array, tensor))
    if batch:
        flush()
    bar.close()
    return stats


def _frame_batches(frames: Iterator[np.ndarray], size: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    batch: list[tuple[int, np.ndarray]] = []
    for index, frame in enumerate(frames):
        batch.append((index, frame))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_video(
    segmenter: Predictor, item: Item, writer: OutputWriter, video_overlay: bool, batch_size: int = 1,
    progress: bool = True, stats: Stats | None = None,
) -> Stats:
    """Predict every frame of a video: per-frame label PNGs and, with `video_overlay`, an overlay .mp4.

    Frames whose label PNG exists are read back instead of recomputed. Memory: one batch of frames plus
    the writer's bounded queue.
    """
    stats = stats or Stats()
    final = writer.out / item.rel.parent / f"{item.rel.name}_overlay.mp4"
    _, info = open_video(item.src)  # fails early, naming the file, if it cannot be decoded
    frame_writer = OutputWriter(writer.out / item.rel, tuple(k for k in writer.kinds if k != "overlay") or ("labels",),
                                writer.num_classes, writer.invalid_threshold, writer.workers, writer.max_pending)
    video = VideoWriter(final, info.fps, (info.width, info.height)) if video_overlay else None
    need_conf = any(k in frame_writer.kinds for k in ("confidence", "invalid"))
    bar = tqdm(total=info.frames or None, desc=item.src.name, unit="frame", disable=None if progress else True,
               dynamic_ncols=True)
    try:
        with frame_writer:
            for batch in _frame_batches(read_frames(item.src), batch_size):
                rels = [Path(f"{item.rel.name}_{index:06d}") for index, _ in batch]
                todo = [k for k, rel in enumerate(rels) if not frame_writer.done(rel)]
                preds = segmenter.predict_batch([batch[k][1] for k in todo], return_confidence=need_conf) if todo else []
                by_index = dict(zip(todo, preds))
                for k, (_, frame) in enumerate(batch):
                    if k in by_index:
                        frame_writer.submit(rels[k], frame, by_index[k])
                        labels = by_index[k].labels
                    else:
                        stats.skipped_done += 1
                        labels = read_label(frame_writer.paths(rels[k])["labels"]) if video is not None else None
                    if video is not None:
                        video.write(overlay(frame, colorize_labels(labels, writer.num_classes)))
                stats.frames += len(batch)
                bar.update(len(batch))
        if video is not None:
            video.close()
    except BaseException:
        if video is not None:
            video.abort()
        raise
    finally:
        bar.close()
    return stats


def predict_inputs(segmenter: Predictor, inputs: list[str], out: Path, kinds: tuple[str, ...],
                   invalid_threshold: float = 0.5, batch_size: int = 1, skip_bad: bool = False, workers: int = 2,
                   overwrite: bool = False, video_overlay: bool = False) -> Stats:
    """Predict every image and video of `inputs` (files, folders, globs) into `out`; return the counts.

    Inputs whose outputs all exist are skipped unless `overwrite` (so a rerun resumes); see the module docstring.
    """
    items = expand_inputs(inputs)
    start = time.perf_counter()
    stats = Stats()
    what = describe_preprocessing(segmenter)
    if what:
        log.info("%s", what)
    images = [it for it in items if not it.video]
    videos = [it for it in items if it.video]
    with OutputWriter(out, kinds, segmenter.num_classes, invalid_threshold, workers) as writer:
        todo = images if overwrite else [it for it in images if not writer.done(it.rel)]
        stats.skipped_done = len(images) - len(todo)
        predict_images(segmenter, todo, writer, batch_size, skip_bad, workers, stats=stats)
    for item in videos:
        if not overwrite and video_overlay and (out / item.rel.parent / f"{item.rel.name}_overlay.mp4").is_file():
            stats.skipped_done += 1
            continue
        try:
            writer = OutputWriter(out, kinds, segmenter.num_classes, invalid_threshold, workers)
            if overwrite:
                for p in (out / item.rel).glob("*.png"):
                    p.unlink()
            predict_video(segmenter, item, writer, video_overlay, batch_size, stats=stats)
        except UserError as exc:
            _bad(stats, exc, skip_bad)
    stats.seconds = time.perf_counter() - start
    stats.videos = len(videos)
    return stats


__all__ = ["SUFFIXES", "Item", "OutputWriter", "Stats", "expand_inputs", "parse_outputs", "predict_images", "predict_inputs", "predict_video", "save_png"]
