"""Inference with a trained checkpoint: ``Predictor.from_checkpoint(path).predict(image)``.

A `Predictor` wraps a network that maps RGB images in [0, 1] to logits (the checkpoint's segmenter,
with the Zero-DCE relighting net in front when the checkpoint bundles one or one is asked for) and adds
what inference needs around it:

* **whole-image** inference (default) or **sliding-window** inference: windows of ``window`` pixels every
  ``stride`` pixels, the last window flush with the border, their logits blended with a Gaussian
  (sigma = window / 8, as nnU-Net) or uniform weight and normalised by the summed weights;
* **test-time augmentation**: horizontal flip and multiple scales; the class probabilities of the
  variants (logits resized back to the input size, then softmax) are averaged;
* **batched** inference (`predict_batch`), ``channels_last`` memory format, ``torch.inference_mode``
  and BatchNorm folded into the convolutions;
* an **onnxruntime** backend (``backend="onnx"`` or a ``.onnx`` file from ``nightseg export``) that runs
  the same network through onnxruntime instead of PyTorch.

`predict` returns a `Prediction`: the trainId label map, the per-pixel confidence (probability of the
predicted class) and, on request, the class probabilities.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nightseg.core.classes import IGNORE_INDEX
from nightseg.core.errors import UserError
from nightseg.core.io import read_image
from nightseg.inference.network import load_inference_net
from nightseg.inference.onnx import OnnxNet, export_onnx
from nightseg.models.relight import relight
from nightseg.models.segmenters import fuse_batchnorm

log = logging.getLogger("nightseg")

BACKENDS = ("torch", "onnx")
BLENDS = ("gaussian", "uniform")


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: ``flip`` adds the horizontally flipped image; ``scales`` resizes the input."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @property
    def enabled(self) -> bool:
        return self.flip or tuple(self.scales) != (1.0,)

    @classmethod
    def parse(cls, spec: str | None) -> TTA:
        """Return the TTA of a spec like ``"flip"``, ``"0.75,1,1.25"`` or ``"flip,0.5,1.0"`` (None: off)."""
        if not spec:
            return cls()
        flip, scales = False, []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if part == "flip":
                flip = True
                continue
            try:
                scale = float(part)
            except ValueError:
                raise UserError(f"--tta {spec}: {part!r} is neither 'flip' nor a scale factor") from None
            if not 0.1 <= scale <= 4.0:
                raise UserError(f"--tta {spec}: scale {scale} is outside 0.1..4")
            scales.append(scale)
        return cls(flip, tuple(scales) or (1.0,))


@dataclass(frozen=True)
class SlidingWindow:
    """Sliding-window inference: ``window`` and ``stride`` as (height, width) in pixels."""

    window: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    blend: str = "gaussian"
    batch_size: int = 4

    def __post_init__(self) -> None:
        if min(self.window) < 8 or min(self.stride) < 1:
            raise UserError(f"sliding window {self.window} / stride {self.stride}: window >= 8 and stride >= 1 pixels")
        if any(s > w for s, w in zip(self.stride, self.window)):
            raise UserError(f"sliding window stride {self.stride} is larger than the window {self.window}: pixels would be skipped")
        if self.blend not in BLENDS:
            raise UserError(f"sliding window blend {self.blend!r}: expected one of {', '.join(BLENDS)}")

    @classmethod
    def parse(cls, window: str | None = None, stride: str | None = None, blend: str = "gaussian") -> SlidingWindow:
        """Return the settings for ``--window HxW`` (or one number) and ``--stride HxW`` (default 2/3 window)."""
        win = parse_size(window, "--window") if window else cls.window
        st = parse_size(stride, "--stride") if stride else (max(1, win[0] * 2 // 3), max(1, win[1] * 2 // 3))
        return cls(win, st, blend)


def sliding_from_metadata(meta: dict[str, Any]) -> SlidingWindow | None:
    """Return the sliding window an imported checkpoint was scored with (``pretrained.preprocessing.test``,
    e.g. SegFormer's 1024x1024 windows every 768 pixels, uniform blending as mmseg), None for whole-image."""
    test = ((meta.get("pretrained") or {}).get("preprocessing") or {}).get("test") or {}
    if test.get("mode") != "slide":
        return None
    window, stride = tuple(test["window"]), tuple(test["stride"])
    return SlidingWindow((int(window[0]), int(window[1])), (int(stride[0]), int(stride[1])), test.get("blend", "uniform"))


def parse_size(text: str, option: str) -> tuple[int, int]:
    """Return (height, width) of ``"HxW"`` or ``"N"`` (square)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"{option} {text}: expected HEIGHTxWIDTH (e.g. 512x1024) or one number") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise UserError(f"{option} {text}: expected HEIGHTxWIDTH with positive numbers")
    return values[0], values[1]


# --------------------------------------------------------------------------------------------- result
@dataclass
class Prediction:
    """The result of `Predictor.predict` for one image.

    ``labels``: HxW uint8 trainIds (argmax); ``confidence``: HxW float32, probability of the predicted
    class; ``probs``: CxHxW float32 class probabilities (a torch tensor on the CPU), None unless asked for.
    """

    labels: np.ndarray
    confidence: np.ndarray | None = None
    probs: torch.Tensor | None = None

    def labels_invalid(self, threshold: float) -> np.ndarray:
        """Return ``labels`` with 255 (invalid) where the confidence is below `threshold` (MGCDA's rule)."""
        if self.confidence is None:
            raise ValueError("this prediction was made without confidence")
        out = self.labels.copy()
        out[self.confidence < threshold] = IGNORE_INDEX
        return out

    def confidence_uint16(self) -> np.ndarray:
        """Return the confidence as uint16 (0..65535 for 0..1), the Dark Zurich submission format."""
        if self.confidence is None:
            raise ValueError("this prediction was made without confidence")
        return np.clip(self.confidence * 65535.0 + 0.5, 0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------------------------- segmenter
def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Return the start offsets of windows of `window` every `stride` over `length`, the last flush with the end."""
    if window >= length:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def blend_weight(height: int, width: int, blend: str = "gaussian") -> torch.Tensor:
    """Return the [H,W] weight of one window: Gaussian with sigma = size/8 (peak 1) or all ones."""
    if blend == "uniform":
        return torch.ones(height, width)

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (x / (n / 8.0)) ** 2)

    weight = axis(height)[:, None] * axis(width)[None, :]
    return (weight / weight.max()).clamp_(min=1e-6).float()


def _to_tensor(image: Any) -> torch.Tensor:
    """Return an image (path, HxWx3 uint8 array, or [3,H,W] tensor in [0,1] / uint8) as float [3,H,W] in [0,1]."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB array, got shape {image.shape}")
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        t = image
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"expected a [3,H,W] image tensor, got shape {tuple(t.shape)}")
    else:
        raise TypeError(f"cannot predict on a {type(image).__name__}; give a path, an HxWx3 uint8 array or a [3,H,W] tensor")
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


class Predictor:
    """Predicts label maps and class probabilities with a trained network; see the module docstring.

    Build it with `Predictor.from_checkpoint`. ``net`` is any callable mapping RGB images [B,3,H,W] in
    [0,1] to logits [B,C,H,W] (an `InferenceNet` or an `OnnxNet`).
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        device: torch.device | str = "cpu",
        *,
        sliding: SlidingWindow | None = None,
        tta: TTA | None = None,
        channels_last: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.net = net
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.sliding = sliding
        self.tta = tta or TTA()
        self.channels_last = channels_last and isinstance(net, nn.Module)
        self.metadata = metadata or {}
        self.backend = "torch" if isinstance(net, nn.Module) else "onnx"

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        relight: str | os.PathLike | bool | None = None,
        tta: TTA | str | None = None,
        sliding: SlidingWindow | bool | None = None,
        backend: str = "torch",
        fuse: bool = True,
        channels_last: bool = True,
        night2day: str | os.PathLike | None = None,
    ) -> Predictor:
        """Return a Predictor for a NightSeg checkpoint (``.safetensors`` + ``.json``) or an exported ``.onnx``.

        `device`: ``"cpu"``, ``"cuda"``, ``"auto"``. `relight`: see `load_inference_net` (None: the
        checkpoint's own relighting net if it has one). `tta`: a `TTA` or a spec like ``"flip,0.75,1,1.25"``.
        `sliding`: sliding-window settings; None: the window an imported checkpoint was scored with (its
        ``pretrained.preprocessing`` metadata), else whole image; False: whole image. `backend`: ``"torch"`` or ``"onnx"`` (a
        ``.safetensors`` checkpoint is then exported to a temporary ONNX file first). `fuse` folds
        BatchNorm into the convolutions (torch backend). `night2day`: a ``nightseg translate train`` checkpoint
        whose night->day generator runs before the segmenter (See Clearer at Night, method 1; see `load_inference_net`).
        """
        if backend not in BACKENDS:
            raise UserError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if str(device) == "auto" else torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        tta = TTA.parse(tta) if isinstance(tta, str) or tta is None else tta
        path = Path(path)
        if path.suffix == ".onnx":
            if relight not in (None, False) or night2day is not None:
                raise UserError(f"{path}: an exported ONNX model already contains its relighting step; drop --relight/--night2day")
            onnx_net = OnnxNet(path, dev)
            return cls(onnx_net, onnx_net.num_classes, dev, sliding=sliding, tta=tta, metadata=onnx_net.meta)
        net, meta = load_inference_net(path, relight, night2day)
        if sliding is None:
            sliding = sliding_from_metadata(meta)
            if sliding is not None:
                log.info("%s: sliding window %dx%d, stride %dx%d, as the source scored it (--whole: whole image)",
                         path, *sliding.window, *sliding.stride)
        sliding = sliding or None
        if backend == "onnx":
            with tempfile.TemporaryDirectory(prefix="nightseg-onnx-") as folder:  # onnxruntime keeps it in memory
                onnx_path = Path(folder) / (path.stem + ".onnx")
                export_onnx(net, onnx_path, metadata={"checkpoint": str(path)}, check=False)
                onnx_net = OnnxNet(onnx_path, dev)
            return cls(onnx_net, net.num_classes, dev, sliding=sliding, tta=tta, metadata=meta)
        if fuse:
            net = fuse_batchnorm(net)
        net = net.to(dev)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        return cls(net, net.num_classes, dev, sliding=sliding, tta=tta, channels_last=channels_last, metadata=meta)

    # ---- core
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.net(x)
        if logits.shape[1] != self.num_classes:
            raise UserError(f"the model returned {logits.shape[1]} classes, its checkpoint says {self.num_classes}")
        return logits.float()

    def _sliding_logits(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.sliding
        assert cfg is not None
        b, _, h, w = x.shape
        wh, ww = min(cfg.window[0], h), min(cfg.window[1], w)
        boxes = [(y, x0) for y in window_starts(h, wh, cfg.stride[0]) for x0 in window_starts(w, ww, cfg.stride[1])]
        weight = blend_weight(wh, ww, cfg.blend).to(x.device)
        out = torch.zeros(b, self.num_classes, h, w, device=x.device)
        norm = torch.zeros(1, 1, h, w, device=x.device)
        for i in range(0, len(boxes), max(1, cfg.batch_size)):
            chunk = boxes[i : i + max(1, cfg.batch_size)]
            crops = torch.cat([x[:, :, y : y + wh, x0 : x0 + ww] for y, x0 in chunk])
            logits = self._forward(crops)
            for j, (y, x0) in enumerate(chunk):
                out[:, :, y : y + wh, x0 : x0 + ww] += logits[j * b : (j + 1) * b] * weight
                norm[:, :, y : y + wh, x0 : x0 + ww] += weight
        return out / norm

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits [B,C,H,W] of images [B,3,H,W] in [0,1] (whole image or sliding window, no TTA)."""
        if self.sliding is not None:
            return self._sliding_logits(x)
        return self._forward(x)

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Return class probabilities [B,C,H,W] of images [B,3,H,W] in [0,1], averaged over the TTA variants."""
        x = x.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        total: torch.Tensor | None = None
        count = 0
        for scale in self.tta.scales:
            xs = x
            if scale != 1.0:
                size = (max(1, round(h * scale)), max(1, round(w * scale)))
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for flip in (False, True) if self.tta.flip else (False,):
                inp = xs.flip(-1) if flip else xs
                logits = self.logits(inp)
                if flip:
                    logits = logits.flip(-1)
                if tuple(logits.shape[-2:]) != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                probs = logits.softmax(dim=1)
                total = probs if total is None else total.add_(probs)
                count += 1
        assert total is not None
        return total.div_(count)

    @torch.inference_mode()
    def predict_batch(
        self, images: Sequence[Any], return_probs: bool = False, return_confidence: bool = True
    ) -> list[Prediction]:
        """Return one `Prediction` per image (paths, HxWx3 uint8 arrays or [3,H,W] tensors in [0,1]).

        Consecutive images of the same size run as one batch.
        """
        tensors = [_to_tensor(im) for im in images]
        results: list[Prediction] = []
        i = 0
        while i < len(tensors):
            j = i + 1
            while j < len(tensors) and tensors[j].shape == tensors[i].shape:
                j += 1
            batch = torch.stack(tensors[i:j]).to(self.device)
            results.extend(self._predict_tensor(batch, return_probs, return_confidence))
            i = j
        return results

    def _predict_tensor(self, batch: torch.Tensor, return_probs: bool, return_confidence: bool) -> list[Prediction]:
        if not (return_probs or return_confidence or self.tta.enabled):
            labels = self.logits(batch).argmax(dim=1).to(torch.uint8).cpu().numpy()
            return [Prediction(lab) for lab in labels]
        probs = self.probabilities(batch)
        conf, labels = probs.max(dim=1)
        labels_np = labels.to(torch.uint8).cpu().numpy()
        conf_np = conf.cpu().numpy() if return_confidence else [None] * len(labels_np)
        probs_cpu = probs.cpu() if return_probs else None
        return [
            Prediction(labels_np[k], conf_np[k], probs_cpu[k] if probs_cpu is not None else None)
            for k in range(len(labels_np))
        ]

    def predict(self, image: Any, return_probs: bool = True) -> Prediction:
        """Return the `Prediction` (labels, confidence, class probabilities) for one image."""
        return self.predict_batch([image], return_probs=return_probs)[0]

    def relit(self, image: Any) -> np.ndarray:
        """Return the image after the network's relighting step as HxWx3 uint8 (the input if it has none)."""
        x = _to_tensor(image)[None].to(self.device)
        with torch.inference_mode():
            y = relight(getattr(self.net, "relight", None), x, getattr(self.net, "curve_scale", 1.0))
        return (y[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


__all__ = [
    "BACKENDS",
    "BLENDS",
    "TTA",
    "Prediction",
    "Predictor",
    "SlidingWindow",
    "blend_weight",
    "parse_size",
    "sliding_from_metadata",
    "window_starts",
]
