"""ONNX: export a checkpoint's inference network (relighting + segmenter), checked against PyTorch, and run
an exported file with onnxruntime (`OnnxNet`).

``export_onnx(net, out)`` writes ``out`` (opset >= 17) with input ``image`` [B,3,H,W] (RGB in [0,1])
and output ``logits`` [B,C,H,W], batch, height and width dynamic. PyTorch's ONNX exporter cannot write
``AdaptiveAvgPool2d`` with an output larger than 1x1 (PSPNet's pyramid pooling) for a dynamic input
size, so for the export those layers are swapped for `ExportableAdaptiveAvgPool2d`, which computes the
same bins from an integral image (in float64) with shape arithmetic ONNX can express. If an architecture
still fails to export with dynamic sizes, it is exported for the fixed ``size`` instead (the metadata
says so and `OnnxNet` resizes inputs to it).

The file carries ``{"nightseg": {...}}`` metadata (model config, classes, size, dynamic) so that
``nightseg predict model.onnx`` needs nothing else. After writing, the ONNX output is compared with
PyTorch's on random images (`check_parity`); NightSeg requires a max abs difference <= 1e-4.

A network with a module that sets ``onnx_unsupported`` (a reason; e.g. `nightseg.models.nightlab.NightLab`,
whose proposals are data-dependent) is refused with a one-line UserError before anything is written.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nightseg.core.errors import UserError
from nightseg.core.io import atomic_path
from nightseg.inference.network import InferenceNet

log = logging.getLogger("nightseg")

DEFAULT_OPSET = 17
ONNX_METADATA_KEY = "nightseg"
PARITY_TOLERANCE = 1e-4


class ExportableAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(k)`` for ONNX with dynamic input sizes (same bins as PyTorch).

    Bin i along an axis of length n covers ``[floor(i n / k), ceil((i + 1) n / k))``; each bin's sum is
    read from a float64 integral image, so the result equals PyTorch's up to float32 rounding.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        kh, kw = (output_size, output_size) if isinstance(output_size, int) else output_size
        self.kh, self.kw = int(kh), int(kw)

    @staticmethod
    def _edges(n: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.arange(k, dtype=torch.int64)
        return (i * n) // k, ((i + 1) * n + k - 1) // k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = torch._shape_as_tensor(x)
        y0, y1 = self._edges(shape[2], self.kh)
        x0, x1 = self._edges(shape[3], self.kw)
        integral = torch.nn.functional.pad(x.double().cumsum(2).cumsum(3), (1, 0, 1, 0))
        rows = integral.index_select(2, y1) - integral.index_select(2, y0)
        sums = rows.index_select(3, x1) - rows.index_select(3, x0)
        area = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).double()
        return (sums / area).to(x.dtype)


def make_exportable(net: nn.Module) -> nn.Module:
    """Return an eval-mode copy of `net` with every ``AdaptiveAvgPool2d`` (output > 1) made ONNX-exportable."""
    net = copy.deepcopy(net).eval()
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size not in (1, (1, 1)):
                setattr(module, name, ExportableAdaptiveAvgPool2d(child.output_size))
    return net


def check_exportable(net: nn.Module, source: str | os.PathLike) -> None:
    """Raise a UserError naming `source` if a module of `net` declares ``onnx_unsupported`` (its reason)."""
    for module in net.modules():
        reason = getattr(type(module), "onnx_unsupported", None)
        if reason:
            raise UserError(f"{source}: {type(module).__name__} models cannot be exported to ONNX ({reason}); "
                            "run it with PyTorch: `nightseg predict` without --backend onnx")


def _export(net: nn.Module, path: Path, size: tuple[int, int], opset: int, dynamic: bool) -> None:
    dummy = torch.rand(1, 3, *size)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (dummy,), str(path), input_names=["image"], output_names=["logits"],
            dynamic_axes=axes if dynamic else {"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def check_parity(net: nn.Module, onnx_path: str | os.PathLike, shapes: list[tuple[int, int, int]], seed: int = 0) -> float:
    """Return the max abs difference between PyTorch's and onnxruntime's logits on random images.

    `shapes` are (batch, height, width) triples.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    # channels_last: same function, but dilated convolutions run far faster on CPU than in NCHW
    net = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)
    for batch, h, w in shapes:
        x = torch.rand(batch, 3, h, w, generator=generator)
        with torch.inference_mode():
            expected = net(x.contiguous(memory_format=torch.channels_last)).contiguous().numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"{onnx_path}: ONNX output shape {got.shape} != PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_onnx(
    net: InferenceNet,
    out: str | os.PathLike,
    size: tuple[int, int] = (256, 512),
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    metadata: dict[str, Any] | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Write `net` to the ONNX file `out` (atomically) and return what was written.

    Returns ``{"path", "opset", "dynamic", "size", "max_abs_diff"}``; ``max_abs_diff`` (PyTorch vs
    onnxruntime on random images at `size` and, when dynamic, at a second size with batch 2) is None
    without `check`. Raises a UserError if the export fails or exceeds `PARITY_TOLERANCE`, or if `net`
    cannot be exported at all (`check_exportable`; the error names ``metadata["checkpoint"]`` or `out`).
    """
    import onnx

    if opset < DEFAULT_OPSET:
        raise UserError(f"--opset {opset}: NightSeg exports with opset >= {DEFAULT_OPSET}")
    out = Path(out)
    check_exportable(net, (metadata or {}).get("checkpoint") or out)
    net = net.eval()
    exportable = make_exportable(net)
    with atomic_path(out) as tmp:
        try:
            _export(exportable, tmp, size, opset, dynamic)
        except Exception as exc:  # the exporter raises many unrelated types
            if not dynamic:
                raise UserError(f"{out}: ONNX export failed ({type(exc).__name__}: {str(exc)[:200]})") from exc
            log.warning("dynamic-size ONNX export failed (%s); exporting for the fixed size %dx%d", type(exc).__name__, *size)
            dynamic = False
            _export(exportable, tmp, size, opset, dynamic)
        model = onnx.load(str(tmp))
        info = {"model": dict(net.config), "num_classes": net.num_classes, "relight": net.relight is not None,
                "size": list(size), "dynamic": dynamic, "opset": opset, **(metadata or {})}
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(info)
        onnx.save(model, str(tmp))
        diff = None
        if check:
            shapes = [(1, *size)] + ([(2, size[0] // 2 + 8, size[1] // 2 + 24)] if dynamic else [])
            diff = check_parity(net, tmp, shapes)
            if not diff <= PARITY_TOLERANCE:
                raise UserError(f"{out}: ONNX outputs differ from PyTorch's by {diff:.2e} (> {PARITY_TOLERANCE}); not written")
    return {"path": str(out), "opset": opset, "dynamic": dynamic, "size": list(size), "max_abs_diff": diff}


class OnnxNet:
    """Runs an ONNX file from ``nightseg export`` with onnxruntime; called like `InferenceNet`."""

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: ONNX model not found")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"{self.path}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from exc
        raw = self.session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        if raw is None:
            raise UserError(f"{self.path}: not written by `nightseg export` (no nightseg metadata)")
        self.meta: dict[str, Any] = json.loads(raw)
        self.num_classes = int(self.meta["model"]["num_classes"])
        self.config = dict(self.meta["model"])
        self.static_size = tuple(self.meta["size"]) if not self.meta.get("dynamic", True) else None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        if self.static_size is not None and size != self.static_size:  # a fixed-size export: resize in and out
            x = F.interpolate(x, size=self.static_size, mode="bilinear", align_corners=False)
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})[0]
        logits = torch.from_numpy(out).to(x.device)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits
