"""What one forward pass runs at inference: optional relighting (Zero-DCE, or a night->day generator), then
the segmenter, rebuilt from a NightSeg checkpoint (`load_inference_net`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nightseg.core.checkpoint import load_state_into
from nightseg.core.errors import UserError
from nightseg.models.registry import model_from_config, read_checkpoint
from nightseg.models.relight import load_dce_weights, relight, resolve_weights, split_relight
from nightseg.models.translator import load_translator


class InferenceNet(nn.Module):
    """What one forward pass runs: optional Zero-DCE relighting g(x), then the segmenter; returns logits.

    ``forward(x)`` takes RGB images [B,3,H,W] in [0,1] and returns logits [B,C,H,W]. This is also the
    module `nightseg.inference.onnx` writes to ONNX, so both backends compute the same function.
    """

    def __init__(self, segmenter: nn.Module, relight: nn.Module | None = None, curve_scale: float = 1.0) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.relight = relight
        self.curve_scale = float(curve_scale)
        self.num_classes = int(segmenter.config["num_classes"])
        self.config = dict(segmenter.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter(relight(self.relight, x, self.curve_scale))


def load_inference_net(
    path: str | os.PathLike, relight: str | os.PathLike | bool | None = None,
    night2day: str | os.PathLike | None = None,
) -> tuple[InferenceNet, dict[str, Any]]:
    """Return (eval-mode `InferenceNet`, checkpoint metadata) for a NightSeg ``.safetensors`` checkpoint, or
    any model reference `read_checkpoint` converts (a published checkpoint file or folder, ``hf:ORG/NAME``).

    `relight`: None uses the relighting net the checkpoint bundles (ULCA exports one under ``relight.*``)
    or none; False never relights; True uses the bundled net, else ``$NIGHTSEG_RELIGHT_WEIGHTS``; a path
    loads those weights (official ``Epoch99.pth`` or ``nightseg relight train`` output). `night2day`: a
    ``nightseg translate train`` checkpoint whose night->day generator runs in the relighting step's place.
    Raises a UserError naming the file on wrong architecture / class count / missing weights.
    """
    path = Path(path)
    tensors, meta = read_checkpoint(path)
    config = dict(meta.get("model") or {})
    if config.get("name") == "zero_dce":
        raise UserError(f"{path}: holds Zero-DCE relighting weights, not a segmentation model; pass it as --relight")
    bundled = None
    if "relight" in config or any(k.startswith("relight.") for k in tensors):
        try:
            tensors, config, bundled = split_relight(tensors, config)
        except RuntimeError as exc:
            raise UserError(f"{path}: its bundled relighting weights do not fit Zero-DCE ({exc})") from exc
    segmenter = model_from_config(config, path)
    load_state_into(segmenter, tensors, path)
    net = None
    if relight is False:
        net = None
    elif relight is None:
        net = bundled
    elif relight is True:
        if bundled is not None:
            net = bundled
        else:
            net = load_dce_weights(resolve_weights(None))
    else:
        net = load_dce_weights(Path(relight))
    if night2day is not None:  # See Clearer at Night, method 1: a CycleGAN generator takes the relighting step's place
        if net is not None:
            raise UserError(f"{night2day}: --night2day replaces relighting, but {path} would relight; add --no-relight")
        net = load_translator(night2day, "night2day")
    curve_scale = 1.0
    method_cfg = (meta.get("config") or {}).get("method") or {}
    if net is not None and net is bundled and isinstance(method_cfg.get("relight"), dict):
        curve_scale = float(method_cfg["relight"].get("curve_scale", 1.0))
    out = InferenceNet(segmenter.eval(), net.eval() if net is not None else None, curve_scale).eval()
    out.requires_grad_(False)
    return out, meta
