"""What `nightseg serve` computes for one request, as plain Python functions (no Gradio, testable in pytest).

`ModelCache` loads each checkpoint once per set of options (relighting, TTA, sliding window, night->day)
and hands out one lock per model, so two requests never run the same model at once. `run_request` checks
an upload (size, pixel count, decodable image or video frame), runs one or two models on it and writes the
label-id PNG, the colour PNG and the overlay of each model (and, for two models, the disagreement image)
into a fresh folder under the server's temporary folder; it returns a `RequestResult` with the per-class
pixel shares and the per-exposure-bin mean max-softmax confidence (HSV V bins, the mEF1 bins of the EGNet
paper). `restyle` redraws the overlays at another opacity from the files already written.
"""

from __future__ import annotations

import html
import itertools
import math
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from nightseg.core.checkpoint import load_metadata
from nightseg.core.classes import CLASS_NAMES, NUM_CLASSES
from nightseg.core.errors import UserError
from nightseg.core.io import IMAGE_SUFFIXES, read_image
from nightseg.evaluation.exposure import NUM_EXPOSURE_BINS, bin_edges, exposure_bins
from nightseg.inference import Predictor, SlidingWindow, colorize_labels, overlay, palette_for
from nightseg.inference.video import is_video, open_video, read_frames
from nightseg.models.pretrained.reference import is_reference, resolve
from nightseg.pipelines.predict import save_png

DEFAULT_MAX_UPLOAD_MB = 50.0
DEFAULT_MAX_PIXELS = 4096 * 4096
BROWSER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_VIDEO_FRAMES = 1000
CONFIDENCE_PIXELS = 2**17  # the per-bin mean confidence is computed on a grid of at most ~131k pixels  # a "short video": the frame slider covers at most this many frames
DISAGREE_COLOR = np.array([255, 0, 255], dtype=np.uint8)
Progress = Callable[[float, str], None]


# --------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelOptions:
    """How one model runs: its checkpoint and the page's toggles (the key of the model cache).

    `relight`: True relights with Zero-DCE (the checkpoint's bundled net, else `relight_weights`, else
    $NIGHTSEG_RELIGHT_WEIGHTS), False never relights. `night2day`: a translator checkpoint whose night->day
    generator replaces relighting (See Clearer at Night). `tta`: a TTA spec (e.g. ``"flip"``) or None.
    `window`: the sliding window ``"HxW"`` or None for whole-image inference.
    """

    checkpoint: str
    relight: bool = False
    relight_weights: str | None = None
    night2day: str | None = None
    tta: str | None = None
    window: str | None = None
    device: str = "cpu"


def check_checkpoint(ref: str) -> Path:
    """Return the local path of a checkpoint reference from the command line or the page: a NightSeg
    .safetensors, an exported .onnx, a foreign model folder (`nightseg import` formats, converted on load) or
    ``hf:ORG/NAME[@REV]`` (downloaded once into the hub cache); UserError if unusable."""
    ref = (ref or "").strip()
    if not ref:
        raise UserError("no checkpoint chosen: pick one in the page or pass CKPT to `nightseg serve`")
    if is_reference(ref):
        return resolve(ref)  # one line naming the URL and the offline alternative when it cannot be fetched
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.suffix not in (".safetensors", ".onnx"):
        raise UserError(f"{ref}: expected a NightSeg .safetensors checkpoint, an exported .onnx model, a model "
                        "folder or hf:ORG/NAME")
    if not path.is_file():
        raise UserError(f"{ref}: checkpoint not found; give the path of a .safetensors or .onnx file")
    return path


def is_onnx(ref: str) -> bool:
    """Return whether a checkpoint reference is an exported ONNX model (no relighting / night->day toggles)."""
    return str(ref).strip().lower().endswith(".onnx")


class ModelCache:
    """Loaded `Predictor`s, one per (checkpoint file, its modification time, `ModelOptions`), least recently
    used dropped beyond `capacity`; each with its own lock. ``loads`` counts the loads (tests read it)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = max(1, capacity)
        self.loads = 0
        self.models: OrderedDict[tuple, tuple[Predictor, threading.Lock]] = OrderedDict()
        self.guard = threading.Lock()  # held while loading, so one model is never loaded twice at once

    def get(self, options: ModelOptions) -> tuple[Predictor, threading.Lock]:
        """Return (predictor, its lock) for `options`, loading the checkpoint on first use."""
        path = check_checkpoint(options.checkpoint)
        if is_onnx(options.checkpoint) and (options.relight or options.night2day):
            raise UserError(f"{path}: an exported ONNX model already contains its relighting step; "
                            "switch relighting and night->day off")
        key = (str(path.resolve()), path.stat().st_mtime_ns, options)
        with self.guard:
            if key in self.models:
                self.models.move_to_end(key)
                return self.models[key]
            relight: str | bool = False
            if options.relight:
                relight = options.relight_weights or True
            sliding = SlidingWindow.parse(options.window) if options.window else None
            predictor = Predictor.from_checkpoint(path, device=options.device, relight=relight, tta=options.tta,
                                                  sliding=sliding, night2day=options.night2day)
            self.loads += 1
            self.models[key] = (predictor, threading.Lock())
            while len(self.models) > self.capacity:
                self.models.popitem(last=False)
            return self.models[key]


# --------------------------------------------------------------------------------------------- inputs
def check_upload(path: str | os.PathLike, max_bytes: int) -> str:
    """Return ``"image"`` or ``"video"`` for an upload that may be read; UserError (one line) if it is too
    large, of an unknown kind or missing."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path.name}: file not found (the upload did not arrive); upload it again")
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{path.name}: {size / 2**20:.1f} MB is above the upload limit of {max_bytes / 2**20:.0f} MB; "
                        "upload a smaller file or start `nightseg serve` with a larger --max-upload-mb")
    if is_video(path):
        return "video"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"{path.name}: not an image or video ({path.suffix or 'no extension'}); "
                        "upload a PNG or JPEG image or a short MP4 video")
    return "image"


def video_frames(path: str | os.PathLike) -> int:
    """Return how many frames of the video the frame slider offers (at most `MAX_VIDEO_FRAMES`)."""
    cap, info = open_video(path)
    cap.release()
    return max(1, min(info.frames or 1, MAX_VIDEO_FRAMES))


def load_input(path: str | os.PathLike, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS,
               frame: int = 0) -> np.ndarray:
    """Return the uploaded image (or frame `frame` of an uploaded video) as HxWx3 uint8 RGB.

    Raises a one-line UserError naming the file for a file above `max_bytes`, an image above `max_pixels`
    (checked from the header, before decoding), a non-image or a corrupt file.
    """
    path = Path(path)
    kind = check_upload(path, max_bytes)
    if kind == "video":
        first = max(0, min(int(frame), MAX_VIDEO_FRAMES - 1))
        image = next(itertools.islice(read_frames(path), first, None), None)
        if image is None:
            raise UserError(f"{path.name}: the video has no frame {first}; pick an earlier frame")
    else:
        try:
            with Image.open(path) as header:
                width, height = header.size
        except Exception:  # undecodable: read_image below says so in its own words
            width = height = 0
        if width * height > max_pixels:
            raise UserError(f"{path.name}: {width}x{height} pixels is above the limit of {max_pixels / 1e6:.0f} "
                            "megapixels; downscale the image")
        try:
            image = read_image(path)
        except UserError as exc:  # name the file as the user knows it, not by the server's temporary path
            raise UserError(str(exc).replace(str(path), path.name)) from None
    if image.shape[0] * image.shape[1] > max_pixels:
        raise UserError(f"{path.name}: {image.shape[1]}x{image.shape[0]} pixels is above the limit of "
                        f"{max_pixels / 1e6:.0f} megapixels; downscale it")
    return image


# --------------------------------------------------------------------------------------------- statistics
def class_names(num_classes: int) -> list[str]:
    """Return the class names of a model: the Cityscapes names for 19 classes, else ``class N``."""
    return list(CLASS_NAMES) if num_classes == NUM_CLASSES else [f"class {i}" for i in range(num_classes)]


def pixel_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the share of the pixels of each class (float64, length `num_classes`; sums to 1 when every
    label is a class id)."""
    counts = np.bincount(labels.ravel(), minlength=256)[:num_classes]
    return counts / max(1, labels.size)


def exposure_confidence(image: np.ndarray, confidence: np.ndarray,
                        num_bins: int = NUM_EXPOSURE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean max-softmax confidence per exposure bin, share of the pixels per bin) of one image.

    The bins are the HSV V = max(R, G, B) bins of the EGNet paper's mEF1 (`exposure_bins`); a bin with no
    pixel has a NaN mean.
    """
    bins = exposure_bins(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), num_bins).numpy().ravel()
    counts = np.bincount(bins, minlength=num_bins).astype(np.float64)
    sums = np.bincount(bins, weights=confidence.ravel().astype(np.float64), minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return mean, counts / max(1, bins.size)


def disagreement(image: np.ndarray, labels_a: np.ndarray, labels_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (boolean mask of the pixels where two label maps differ, the image dimmed to grey with those
    pixels in magenta)."""
    if labels_a.shape != labels_b.shape:
        raise ValueError(f"label maps of shapes {labels_a.shape} and {labels_b.shape} cannot be compared")
    mask = labels_a != labels_b
    grey = (image.astype(np.uint16).sum(axis=2) // 3 * 2 // 5).astype(np.uint8)  # 40 % grey keeps the scene readable
    shown = np.repeat(grey[..., None], 3, axis=2)
    shown[mask] = DISAGREE_COLOR
    return mask, shown


# --------------------------------------------------------------------------------------------- one request
@dataclass
class ModelOutput:
    """What one model gave for the request: its files, pixel shares and per-bin confidence."""

    name: str
    labels_png: Path
    color_png: Path
    overlay_png: Path
    num_classes: int
    shares: np.ndarray
    bin_confidence: np.ndarray
    seconds: float


@dataclass
class RequestResult:
    """All that one request produced; the paths lie in ``folder`` (under the server's temporary folder)."""

    folder: Path
    input_png: Path
    relit_png: Path | None
    models: list[ModelOutput]
    bin_shares: np.ndarray
    disagreement_png: Path | None = None
    disagreement_share: float | None = None
    seconds: float = 0.0
    downloads: list[Path] = field(default_factory=list)


def model_label(ref: str) -> str:
    """Return a short name for a checkpoint reference: its parent folder and file name."""
    path = Path(ref)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def confidence_step(height: int, width: int, pixels: int = CONFIDENCE_PIXELS) -> int:
    """Return the stride of the pixel grid on which the per-bin confidence is computed: 1 up to `pixels`
    pixels, else the smallest stride that leaves at most about that many (2 for 1024x512, 4 for 1920x1080)."""
    return max(1, math.ceil(math.sqrt(height * width / pixels)))


def predict_labels(predictor: Predictor, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (the label map of `image`, the max-softmax confidence on every `step`-th pixel, `step`).

    The confidence only feeds the per-exposure-bin means, so its softmax runs on a grid of at most
    ~`CONFIDENCE_PIXELS` pixels instead of the full-resolution logits (the full softmax of 19 classes takes
    several times the argmax); with test-time augmentation the averaged probabilities are used as they are.
    """
    step = confidence_step(*image.shape[:2])
    if predictor.tta.enabled:  # the prediction is the argmax of averaged probabilities: use them
        pred = predictor.predict_batch([image], return_probs=False, return_confidence=True)[0]
        return pred.labels, pred.confidence[::step, ::step], step
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(predictor.device)
    with torch.inference_mode():
        logits = predictor.logits(x.float().div_(255.0))
        labels = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        confidence = logits[0, :, ::step, ::step].softmax(dim=0).amax(dim=0).cpu().numpy()
    return labels, confidence, step


def run_model(cache: ModelCache, options: ModelOptions, image: np.ndarray, folder: Path, tag: str,
              opacity: float) -> tuple[ModelOutput, np.ndarray, np.ndarray | None, np.ndarray]:
    """Run one model on `image` (under its lock) and write its label, colour and overlay PNGs into `folder`
    named ``<tag>_labelTrainIds.png``, ``<tag>_color.png``, ``<tag>_overlay.png``; return (its output, its
    label map, the relit image or None when it does not relight, the share of the pixels per exposure bin)."""
    predictor, lock = cache.get(options)
    start = time.perf_counter()
    with lock:
        labels, confidence, step = predict_labels(predictor, image)
        relit = predictor.relit(image) if options.relight or options.night2day else None
    seconds = time.perf_counter() - start
    palette = palette_for(predictor.num_classes)
    bin_confidence, bin_shares = exposure_confidence(image[::step, ::step], confidence)
    # save_png: OpenCV at zlib level 1 and a palette PNG for the colour map (the Pillow default takes ~0.5 s)
    out = ModelOutput(
        model_label(options.checkpoint),
        save_png(folder / f"{tag}_labelTrainIds.png", labels),
        save_png(folder / f"{tag}_color.png", labels, palette),
        save_png(folder / f"{tag}_overlay.png", overlay(image, colorize_labels(labels, predictor.num_classes), opacity)),
        predictor.num_classes,
        pixel_shares(labels, predictor.num_classes),
        bin_confidence,
        seconds,
    )
    return out, labels, relit, bin_shares


def new_request_folder(root: Path, keep: int = 100) -> Path:
    """Return a new empty folder under `root` for one request, removing the oldest beyond `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    folders = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("req-")),
                     key=lambda p: p.stat().st_mtime)
    for old in folders[: max(0, len(folders) - keep + 1)]:
        for f in old.iterdir():
            f.unlink(missing_ok=True)
        old.rmdir()
    folder = root / f"req-{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    return folder


def run_request(cache: ModelCache, source: str | os.PathLike, model_a: ModelOptions,
                model_b: ModelOptions | None, root: Path, opacity: float = 0.5, frame: int = 0,
                max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20), max_pixels: int = DEFAULT_MAX_PIXELS,
                progress: Progress | None = None) -> RequestResult:
    """Return the `RequestResult` of one or two models on the uploaded image or video frame `source`.

    Every file is written into a new folder under `root`: the input, the relit image (when model A relights
    or translates), per model the label-id, colour and overlay PNGs, and for two models the disagreement
    image. Raises a one-line UserError for a bad upload or checkpoint.
    """
    start = time.perf_counter()
    say = progress or (lambda fraction, message: None)
    if not 0.0 <= opacity <= 1.0:
        raise UserError(f"opacity {opacity}: must be between 0 and 1")
    say(0.05, "reading the upload")
    image = load_input(source, max_bytes, max_pixels, frame)
    folder = new_request_folder(root)
    stem = Path(source).stem[:60] or "input"
    # A PNG or JPEG upload is shown as it came; a video frame (or another format) is written once as PNG
    shown_as_is = Path(source).suffix.lower() in BROWSER_SUFFIXES
    input_png = Path(source) if shown_as_is else save_png(folder / f"{stem}_input.png", image)
    say(0.2, "running model A")
    out_a, labels_a, relit, bin_shares = run_model(cache, model_a, image, folder, f"{stem}_A", opacity)
    result = RequestResult(folder, input_png, None, [out_a], bin_shares)
    if relit is not None:
        result.relit_png = save_png(folder / f"{stem}_relit.png", relit)
    if model_b is not None:
        say(0.6, "running model B")
        out_b, labels_b, _, _ = run_model(cache, model_b, image, folder, f"{stem}_B", opacity)
        mask, shown = disagreement(image, labels_a, labels_b)
        result.models.append(out_b)
        result.disagreement_png = save_png(folder / f"{stem}_disagreement.png", shown)
        result.disagreement_share = float(mask.mean())
    result.downloads = [p for m in result.models for p in (m.labels_png, m.color_png, m.overlay_png)]
    result.downloads += [p for p in (result.relit_png, result.disagreement_png) if p is not None]
    result.seconds = time.perf_counter() - start
    say(1.0, "done")
    return result


def restyle(result: RequestResult, opacity: float) -> list[Path]:
    """Rewrite the overlays of `result` at `opacity` from its input and colour PNGs; return their paths."""
    if not 0.0 <= opacity <= 1.0:
        raise UserError(f"opacity {opacity}: must be between 0 and 1")
    image = read_image(result.input_png)
    return [save_png(m.overlay_png, overlay(image, read_image(m.color_png), opacity)) for m in result.models]


def edges_text(num_bins: int = NUM_EXPOSURE_BINS) -> list[str]:
    """Return the tick labels of the exposure bins, e.g. ``"0-.1"``."""
    return [f"{lo:g}-{hi:g}".replace("0.", ".") for lo, hi in bin_edges(num_bins)]


def bundles_relight(ref: str) -> bool:
    """Return whether a NightSeg checkpoint bundles a Zero-DCE relighting net (ULCA exports one); False for
    ONNX models and unreadable references."""
    try:
        path = check_checkpoint(ref)
        return not is_onnx(ref) and "relight" in (load_metadata(path).get("model") or {})
    except (UserError, OSError, ValueError):
        return False


def confidence_figure(result: RequestResult) -> Figure:
    """Return a matplotlib figure: each model's mean max-softmax confidence per exposure bin (bars), with the
    share of the image's pixels in each bin written under the ticks."""
    fig = Figure(figsize=(7.0, 3.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(result.bin_shares))
    width = 0.8 / len(result.models)
    for i, model in enumerate(result.models):
        values = np.nan_to_num(model.bin_confidence, nan=0.0)
        ax.bar(x + (i - (len(result.models) - 1) / 2) * width, values, width, label=f"{'AB'[i]}: {model.name}")
    ticks = [f"{edge}\n{share * 100:.0f}%" for edge, share in zip(edges_text(len(x)), result.bin_shares)]
    ax.set_xticks(x, ticks, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean max-softmax")
    ax.set_xlabel("HSV V exposure bin (share of pixels)", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def shares_html(result: RequestResult) -> str:
    """Return the class legend as an HTML table: colour, class name, share of the pixels per model, the
    classes sorted by model A's share."""
    first = result.models[0]
    names = class_names(first.num_classes)
    colors = palette_for(first.num_classes)
    head = "".join(f"<th>{'AB'[i]} %</th>" for i in range(len(result.models)))
    rows = []
    for c in np.argsort(-first.shares, kind="stable"):
        swatch = "#{:02x}{:02x}{:02x}".format(*colors[c])
        cells = "".join(f"<td>{m.shares[c] * 100:.1f}</td>" if c < len(m.shares) else "<td></td>"
                        for m in result.models)
        rows.append(f'<tr><td><span style="display:inline-block;width:14px;height:14px;background:{swatch};'
                    f'border:1px solid #888"></span></td><td>{html.escape(names[c])}</td>{cells}</tr>')
    return (f'<table class="nightseg-shares" style="font-size:12px;line-height:1.1">'
            f'<tr><th></th><th>class</th>{head}</tr>{"".join(rows)}</table>')


def summary(result: RequestResult) -> str:
    """Return the one-paragraph status line of a finished request (times, disagreement)."""
    parts = [f"{'AB'[i]} `{m.name}`: {m.seconds * 1000:.0f} ms" for i, m in enumerate(result.models)]
    text = f"Done in {result.seconds * 1000:.0f} ms (" + "; ".join(parts) + ")."
    if result.disagreement_share is not None:
        text += f" The models disagree on {result.disagreement_share * 100:.1f} % of the pixels (magenta)."
    return text
