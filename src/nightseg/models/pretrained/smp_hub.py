"""segmentation_models_pytorch hub folders (``smp.from_pretrained`` layout) -> NightSeg.

A folder with ``config.json`` (holding ``_model_class``, ``encoder_name``, ``classes``, ...) and
``model.safetensors``, e.g. ``smp-hub/segformer-b0-1024x1024-city-160k``. Supported: ``Segformer`` on a
MiT-B0..B5 encoder, which NightSeg's ``segformer_bN`` already is (same smp encoder, same keys). smp's
decoder holds the per-stage projections deepest first and concatenates them in that order, so they and
the fuse conv's input blocks are reordered; its segmentation head upsamples x4 with
``UpsamplingBilinear2d`` (align_corners=True), kept via the ``align_corners`` model option. Logits equal
smp's own model to 1e-4 (tests/test_pretrained.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nightseg.core.errors import UserError
from nightseg.models.pretrained.common import (
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    Converted,
    SourceTensors,
    read_json,
    read_state_file,
    tensors_of,
)

FORMAT = "smp"
LICENCE = "see the model card of the hub repository (smp-hub SegFormer weights derive from NVIDIA's SegFormer)"
SUPPORTED = {"Segformer"}


def detect(path: Path) -> bool:
    """Return whether `path` is an smp hub folder (config.json with ``_model_class``)."""
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        return "_model_class" in read_json(config, "segmentation_models_pytorch")
    except UserError:
        return False


def convert(path: Path, source: str) -> tuple[Converted, list[str] | None]:
    """Return the converted checkpoint of an smp hub folder (the source names no classes: None)."""
    config = read_json(path / "config.json", "segmentation_models_pytorch")
    kind, encoder = config.get("_model_class"), str(config.get("encoder_name", ""))
    variant = encoder.removeprefix("mit_")
    if kind not in SUPPORTED or not encoder.startswith("mit_b") or variant not in {f"b{i}" for i in range(6)}:
        raise UserError(f"{path / 'config.json'}: smp {kind} on {encoder!r}; supported: "
                        f"{', '.join(sorted(SUPPORTED))} on mit_b0..mit_b5")
    if config.get("in_channels", 3) != 3 or config.get("encoder_depth", 5) != 5 or config.get("activation"):
        raise UserError(f"{path / 'config.json'}: in_channels/encoder_depth/activation other than 3/5/null "
                        "are not supported")
    if config.get("upsampling", 4) != 4 or config.get("aux_params"):
        raise UserError(f"{path / 'config.json'}: upsampling != 4 or aux_params are not supported")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{path}: no model.safetensors beside config.json; download the weights too")
    state = tensors_of(read_state_file(weights), weights)
    src = SourceTensors(state, source, "segmentation_models_pytorch")
    out: dict[str, torch.Tensor] = {}
    for key in [k for k in state if k.startswith("encoder.")]:
        out[f"backbone.{key}"] = src.take(key)
    stages = 4
    for k in range(stages):  # smp: mlp_stage[0] projects the deepest stage
        out[f"head.linear.{stages - 1 - k}.weight"] = src.take(f"decoder.mlp_stage.{k}.linear.weight")[:, :, None, None]
        out[f"head.linear.{stages - 1 - k}.bias"] = src.take(f"decoder.mlp_stage.{k}.linear.bias")
    fuse = src.take("decoder.fuse_stage.0.weight")
    out["head.fuse.0.weight"] = torch.cat(fuse.chunk(stages, dim=1)[::-1], dim=1)
    for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        key = f"decoder.fuse_stage.1.{t}"
        out[f"head.fuse.1.{t}"] = src.take(key) if src.has(key) or t != "num_batches_tracked" else torch.tensor(0)
    for t in ("weight", "bias"):
        out[f"head.classifier.{t}"] = src.take(f"segmentation_head.0.{t}")
    src.finish()
    model: dict[str, Any] = {"name": f"segformer_{variant}", "num_classes": int(config.get("classes", 1)),
                             "align_corners": True, "sdpa": True}
    if model["num_classes"] != out["head.classifier.weight"].shape[0]:
        raise UserError(f"{path / 'config.json'}: classes={model['num_classes']} but the weights have "
                        f"{out['head.classifier.weight'].shape[0]}")
    default_dim = 256 if variant in ("b0", "b1") else 768
    if int(config.get("decoder_segmentation_channels", 256)) != default_dim:
        model["embed_dim"] = int(config["decoder_segmentation_channels"])
    name = source.lower()
    test: dict[str, Any] = {"mode": "whole"}
    if "city" in name and "1024x1024" in name:  # trained on 1024x1024 crops: mmseg's sliding window
        test = {"mode": "slide", "window": [1024, 1024], "stride": [768, 768], "blend": "uniform"}
    pre = {"mean": list(IMAGENET_MEAN_255), "std": list(IMAGENET_STD_255), "channels": "rgb",
           "train_size": [1024, 1024] if test["mode"] == "slide" else None, "test": test}
    info = {"format": FORMAT, "architecture": f"smp Segformer MiT-{variant.upper()}", "licence": LICENCE,
            "preprocessing": pre, "consumed": len(src.consumed)}
    return Converted(out, model, info), None
