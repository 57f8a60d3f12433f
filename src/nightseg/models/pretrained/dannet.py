"""DANNet's released networks (W-zx-Y/DANNet) -> NightSeg ``nightseg.models.dannet:dannet_pspnet``.

DANNet saves plain state dicts (``torch.save(model.state_dict())``):

- its PSPNet (``conv1``..``bn3``, ``layer1``..``layer4``, ``head.0``/``head.1``, the auxiliary ``dsn``), e.g.
  the Cityscapes initialisation ``pretrained_models/pretrain_pspnet_150000.pth`` or the Dark-Zurich-adapted
  ``trained_models/dannet_psp.pth``;
- its LightNet (``model.N``), ``trained_models/dannet_psp_light.pth``.

A single PSPNet file converts to the segmenter alone; a folder holding a PSPNet file and a LightNet file
(the release's ``trained_models/``) converts to the adapted model with LightNet in front and DANNet's
test-time class weighting (std 0.16), so that NightSeg computes what its evaluate.py computes. DANNet's
DeepLab-v2 and RefineNet are recognised and refused (not supported yet). Input: ImageNet mean/std on RGB,
as DANNet's datasets normalise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nightseg.core.errors import UserError
from nightseg.models.dannet import FACTORY
from nightseg.models.pretrained.common import (
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    Converted,
    SourceTensors,
    read_state_file,
    tensors_of,
)

FORMAT = "dannet"
LICENCE = "DANNet code: Apache-2.0 (W-zx-Y/DANNet); the released weights carry no separate licence note"
CLASS_PRIOR_STD = 0.16  # DANNet's configs/test_config.py STD


def kind(checkpoint: dict[str, Any]) -> str | None:
    """Return ``"pspnet"``, ``"light"``, ``"deeplab"``, ``"refinenet"`` for a DANNet state dict, else None."""
    keys = {str(k) for k in checkpoint}
    if "head.0.bottleneck.0.weight" in keys and "conv3.weight" in keys and "layer4.0.conv1.weight" in keys:
        return "pspnet"
    if "model.1.weight" in keys and "model.20.weight" in keys and not any(k.startswith("layer") for k in keys):
        return "light"
    if any("conv2d_list" in k for k in keys) and "layer4.0.conv1.weight" in keys:
        return "deeplab"
    if any(k.startswith(("mflow_conv_g", "p_ims1d2_outl")) for k in keys):
        return "refinenet"
    return None


def detect(checkpoint: dict[str, Any]) -> bool:
    """Return whether a loaded checkpoint dict is one of DANNet's networks."""
    return kind(checkpoint) is not None


def detect_folder(path: Path) -> bool:
    """Return whether `path` is a folder of DANNet ``.pth`` files (no config.json)."""
    return path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.pth"))


def _pspnet(src: SourceTensors, out: dict[str, torch.Tensor]) -> None:
    src.drop("dsn.")  # the auxiliary head on layer3, used in training only
    for key in list(src.tensors):
        if key in src.consumed:
            continue
        if key.startswith("head."):
            out[key] = src.take(key)
        elif key.startswith(("conv", "bn", "layer")):
            out[f"backbone.{key}"] = src.take(key)


def _refuse(what: str, source: str) -> None:
    if what in ("deeplab", "refinenet"):
        name = {"deeplab": "DeepLab-v2", "refinenet": "RefineNet"}[what]
        raise UserError(f"{source}: DANNet's {name} is not supported yet (its PSPNet and LightNet are); "
                        "see docs/pretrained.md")


def _finish(out: dict[str, torch.Tensor], light: bool, source: str, files: list[str], consumed: int) -> Converted:
    num_classes = int(out["head.1.weight"].shape[0])
    model: dict[str, Any] = {"name": FACTORY, "num_classes": num_classes, "light": light, "align_corners": True}
    if light:
        model["class_prior_std"] = CLASS_PRIOR_STD
    pre = {"mean": list(IMAGENET_MEAN_255), "std": list(IMAGENET_STD_255), "channels": "rgb",
           "train_size": [512, 1024], "test": {"mode": "whole"}}
    info = {"format": FORMAT, "licence": LICENCE, "preprocessing": pre, "consumed": consumed, "files": files,
            "architecture": "DANNet PSPNet-R101" + (" + LightNet, class-prior weighted logits (std 0.16)" if light else "")}
    return Converted(out, model, info, classifier=("head.1.weight", "head.1.bias"))


def convert(checkpoint: dict[str, Any], source: str) -> tuple[Converted, list[str] | None]:
    """Return the converted PSPNet of a single DANNet state dict (no class names: trainId order)."""
    what = kind(checkpoint)
    _refuse(what, source)
    if what == "light":
        raise UserError(f"{source}: DANNet's LightNet alone; pass the folder that holds it and its PSPNet "
                        "(dannet_psp.pth + dannet_psp_light.pth)")
    src = SourceTensors(tensors_of(checkpoint, source), source, "DANNet")
    out: dict[str, torch.Tensor] = {}
    _pspnet(src, out)
    src.finish()
    return _finish(out, False, source, [Path(source).name], len(src.consumed)), None


def convert_folder(path: Path, source: str) -> tuple[Converted, list[str] | None]:
    """Return the converted adapted model of a folder with DANNet's PSPNet and LightNet files."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for file in sorted(path.glob("*.pth")):
        checkpoint = read_state_file(file)
        what = kind(checkpoint)
        if what in ("pspnet", "light"):
            if what in found:
                raise UserError(f"{path}: two DANNet {what} files ({found[what][0].name}, {file.name}); keep one pair")
            found[what] = (file, checkpoint)
    if "pspnet" not in found:
        raise UserError(f"{path}: no DANNet PSPNet .pth in this folder (DeepLab-v2 / RefineNet are not supported yet)")
    out: dict[str, torch.Tensor] = {}
    consumed = 0
    psp_file, psp = found["pspnet"]
    src = SourceTensors(tensors_of(psp, psp_file), psp_file, "DANNet")
    _pspnet(src, out)
    src.finish()
    consumed += len(src.consumed)
    files = [psp_file.name]
    if "light" in found:
        light_file, light = found["light"]
        src = SourceTensors(tensors_of(light, light_file), light_file, "DANNet LightNet")
        for key in list(src.tensors):
            out[f"light.{key}"] = src.take(key)
        src.finish()
        consumed += len(src.consumed)
        files.append(light_file.name)
    return _finish(out, "light" in found, source, files, consumed), None
