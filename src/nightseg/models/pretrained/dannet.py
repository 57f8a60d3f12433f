"""DANNet's released networks (W-zx-Y/DANNet) -> NightSeg ``nightseg.models.dannet:dannet_pspnet``,
``nightseg.models.dannet_deeplab:dannet_deeplab`` and ``nightseg.models.dannet_refinenet:dannet_refinenet``.

DANNet saves plain state dicts (``torch.save(model.state_dict())``) of the network its configs name
(``MODEL = 'PSPNet' | 'DeepLab' | 'RefineNet'``) and of its LightNet:

- its PSPNet (``conv1``..``bn3``, ``layer1``..``layer4``, ``head.0``/``head.1``, the auxiliary ``dsn``), e.g.
  the Cityscapes initialisation ``pretrained_models/pretrain_pspnet_150000.pth`` or the Dark-Zurich-adapted
  ``trained_models/dannet_psp.pth``;
- its DeepLab-v2 (``conv1``, ``bn1``, ``layer1``..``layer4``, the classifier ``layer6.conv2d_list.0..3``, the
  auxiliary ``layer5``): the four classifier convs are stacked into ``head.classifier``;
- its RefineNet (``conv1``, ``bn1``, ``layer1``..``layer4``, ``p_ims1d2_outl{k}_dimred``,
  ``adapt_stage{k}_b``, ``mflow_conv_g{k}_pool`` / ``_b`` / ``_b3_joint_varout_dimred``, ``clf_conv``): renamed
  onto ``head.blocks.{k-1}`` (k = 1 is the deepest level) and ``head.classifier``;
- its LightNet (``model.N``), e.g. ``trained_models/dannet_psp_light.pth`` (evaluate.py's
  ``RESTORE_FROM_LIGHT``).

A network file with ``NAME_light.pth`` beside it (the release's naming) converts to the adapted model: LightNet
in front and DANNet's test-time class weighting (std 0.16), so that NightSeg computes what its evaluate.py
computes; a network file alone (the Cityscapes initialisations) converts to the segmenter alone. A folder
holding one network (and its LightNet) converts like that network's file. Input: ImageNet mean/std on RGB,
as DANNet's datasets normalise for all three networks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from nightseg.core.errors import UserError
from nightseg.models.dannet import FACTORY as PSPNET_FACTORY
from nightseg.models.dannet_deeplab import FACTORY as DEEPLAB_FACTORY
from nightseg.models.dannet_deeplab import RESNET101
from nightseg.models.dannet_refinenet import FACTORY as REFINENET_FACTORY
from nightseg.models.pretrained.common import (
    CLASSIFIER,
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    Converted,
    SourceTensors,
    first_keys,
    read_state_file,
    tensors_of,
)

FORMAT = "dannet"
LICENCE = "DANNet code: Apache-2.0 (W-zx-Y/DANNet); the released weights carry no separate licence note"
CLASS_PRIOR_STD = 0.16  # DANNet's configs/test_config.py STD (the same for its three networks)
# kind -> (architecture, factory, classifier keys)
NETWORKS = {
    "pspnet": ("DANNet PSPNet-R101", PSPNET_FACTORY, ("head.1.weight", "head.1.bias")),
    "deeplab": ("DANNet DeepLab-v2-R101 (its classifier adds ASPP branches 1-2, as its forward does)",
                DEEPLAB_FACTORY, CLASSIFIER),
    "refinenet": ("DANNet RefineNet-R101", REFINENET_FACTORY, CLASSIFIER),
}
ENCODER_KEY = re.compile(r"(conv1|bn1|layer[1-4])\.")
# DANNet RefineNet key -> NightSeg head key (level k of DANNet is head.blocks.{k-1}; units count from 1 there)
LEVEL, UNIT, PARAM = r"(?P<level>\d)", r"(?P<unit>\d+)", r"(?P<param>weight|bias)"
REFINENET_KEYS = tuple((re.compile(pattern), template) for pattern, template in (
    (rf"p_ims1d2_outl{LEVEL}_dimred\.{PARAM}", "blocks.{level}.reduce.{param}"),
    (rf"adapt_stage{LEVEL}_b\.0\.{UNIT}_conv\.{PARAM}", "blocks.{level}.adapt.units.{unit}.conv1.{param}"),
    (rf"adapt_stage{LEVEL}_b\.0\.{UNIT}_conv_relu_varout_dimred\.{PARAM}", "blocks.{level}.adapt.units.{unit}.conv2.{param}"),
    (rf"adapt_stage{LEVEL}_b2_joint_varout_dimred\.{PARAM}", "blocks.{level}.adapt_out.{param}"),
    (rf"mflow_conv_g{LEVEL}_pool\.0\.{UNIT}_outvar_dimred\.{PARAM}", "blocks.{level}.pool.convs.{unit}.{param}"),
    (rf"mflow_conv_g{LEVEL}_b\.0\.{UNIT}_conv\.{PARAM}", "blocks.{level}.fuse.units.{unit}.conv1.{param}"),
    (rf"mflow_conv_g{LEVEL}_b\.0\.{UNIT}_conv_relu_varout_dimred\.{PARAM}", "blocks.{level}.fuse.units.{unit}.conv2.{param}"),
    (rf"mflow_conv_g{LEVEL}_b3_joint_varout_dimred\.{PARAM}", "blocks.{level}.out.{param}"),
    (rf"clf_conv\.{PARAM}", "classifier.{param}"),
))


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


def _encoder(src: SourceTensors, out: dict[str, torch.Tensor]) -> None:
    for key in list(src.tensors):
        if key not in src.consumed and ENCODER_KEY.match(key):
            out[f"backbone.{key}"] = src.take(key)


def _resnet_options(src: SourceTensors, name: str) -> dict[str, Any]:
    """Return the factory's width/layers when the file's ResNet is not DANNet's ResNet-101 (else {})."""
    if not src.has("conv1.weight"):
        raise UserError(f"{src.source}: not a complete DANNet {name} checkpoint: tensor conv1.weight is missing")
    width = int(src.tensors["conv1.weight"].shape[0])
    layers = []
    for stage in range(1, 5):
        found = [re.fullmatch(rf"layer{stage}\.(\d+)\.conv1\.weight", k) for k in src.tensors]
        blocks = 1 + max((int(m.group(1)) for m in found if m), default=-1)
        if not blocks:
            raise UserError(f"{src.source}: not a complete DANNet {name} checkpoint: no layer{stage} blocks")
        layers.append(blocks)
    return {} if width == 64 and tuple(layers) == RESNET101 else {"width": width, "layers": layers}


def _pspnet(src: SourceTensors, out: dict[str, torch.Tensor]) -> dict[str, Any]:
    src.drop("dsn.")  # the auxiliary head on layer3, used in training only
    for key in list(src.tensors):
        if key not in src.consumed and key.startswith("head."):
            out[key] = src.take(key)
    for key in list(src.tensors):
        if key not in src.consumed and key.startswith(("conv", "bn", "layer")):
            out[f"backbone.{key}"] = src.take(key)
    return {}


def _deeplab(src: SourceTensors, out: dict[str, torch.Tensor]) -> dict[str, Any]:
    options = _resnet_options(src, "DeepLab-v2")
    src.drop("layer5.")  # the auxiliary classifier on layer3, used in training only
    count = len([k for k in src.tensors if re.fullmatch(r"layer6\.conv2d_list\.\d+\.weight", k)])
    if not count:
        raise UserError(f"{src.source}: not a complete DANNet DeepLab-v2 checkpoint: no classifier "
                        "layer6.conv2d_list.N tensors")
    weights = [src.take(f"layer6.conv2d_list.{b}.weight") for b in range(count)]
    biases = [src.take(f"layer6.conv2d_list.{b}.bias") for b in range(count)]
    if len({tuple(w.shape) for w in weights}) != 1 or len({tuple(b.shape) for b in biases}) != 1:
        raise UserError(f"{src.source}: DANNet DeepLab-v2 classifier convs of different shapes "
                        f"({', '.join(str(tuple(w.shape)) for w in weights)}); not its layout")
    # stacked on dim 1: the class dimension stays first for every branch (see dannet_deeplab)
    out["head.classifier.weight"] = torch.stack(weights, 1)
    out["head.classifier.bias"] = torch.stack(biases, 1)
    _encoder(src, out)
    return options


def _refinenet(src: SourceTensors, out: dict[str, torch.Tensor]) -> dict[str, Any]:
    options = _resnet_options(src, "RefineNet")
    for key in list(src.tensors):
        for pattern, template in REFINENET_KEYS:
            found = pattern.fullmatch(key)
            if found:
                parts = found.groupdict()
                names = {"param": parts["param"]}
                names.update({k: int(parts[k]) - 1 for k in ("level", "unit") if parts.get(k) is not None})
                out["head." + template.format(**names)] = src.take(key)
                break
    _encoder(src, out)
    return options


CONVERTERS = {"pspnet": _pspnet, "deeplab": _deeplab, "refinenet": _refinenet}


def _finish(what: str, out: dict[str, torch.Tensor], options: dict[str, Any], light: bool, files: list[str],
            consumed: int) -> Converted:
    architecture, factory, classifier = NETWORKS[what]
    num_classes = int(out[classifier[0]].shape[0])
    model: dict[str, Any] = {"name": factory, "num_classes": num_classes, "light": light, "align_corners": True}
    if light:
        model["class_prior_std"] = CLASS_PRIOR_STD
    model.update(options)
    # DANNet trains on 512x512 crops (Cityscapes scaled 0.5-1.0; Dark Zurich 960 crops resized to 512)
    pre = {"mean": list(IMAGENET_MEAN_255), "std": list(IMAGENET_STD_255), "channels": "rgb",
           "train_size": [512, 512], "test": {"mode": "whole"},
           "source_test": "DANNet's evaluate.py: Dark Zurich resized to 540x960, logits upsampled to 1080x1920"}
    if options:  # not DANNet's ResNet-101
        architecture += f" (encoder width {options['width']}, blocks {options['layers']})"
    info = {"format": FORMAT, "licence": LICENCE, "preprocessing": pre, "consumed": consumed, "files": files,
            "architecture": architecture + (" + LightNet, class-prior weighted logits (std 0.16)" if light else "")}
    return Converted(out, model, info, classifier=classifier)


def _convert(what: str, checkpoint: dict[str, Any], file: Path | str,
             light: tuple[Path, dict[str, Any]] | None) -> Converted:
    src = SourceTensors(tensors_of(checkpoint, file), file, "DANNet")
    out: dict[str, torch.Tensor] = {}
    options = CONVERTERS[what](src, out)
    src.finish()
    consumed = len(src.consumed)
    files = [Path(file).name]
    if light is not None:
        light_file, light_state = light
        src = SourceTensors(tensors_of(light_state, light_file), light_file, "DANNet LightNet")
        for key in list(src.tensors):
            out[f"light.{key}"] = src.take(key)
        src.finish()
        consumed += len(src.consumed)
        files.append(light_file.name)
    return _finish(what, out, options, light is not None, files, consumed)


def light_name(network: Path) -> Path:
    """Return the path of the LightNet that DANNet's release keeps beside `network`: ``NAME_light.pth``."""
    return network.with_name(f"{network.stem}_light{network.suffix}")


def convert(checkpoint: dict[str, Any], source: str) -> tuple[Converted, list[str] | None]:
    """Return the converted network of a DANNet state dict, with the LightNet ``NAME_light.pth`` beside the
    file when there is one (the adapted model), else the segmenter alone (no class names: trainId order)."""
    what = kind(checkpoint)
    if what is None:
        raise UserError(f"{source}: not one of DANNet's networks (PSPNet, DeepLab-v2, RefineNet, LightNet); "
                        f"first keys: {first_keys(sorted(map(str, checkpoint)))}")
    if what == "light":
        raise UserError(f"{source}: DANNet's LightNet alone; import its network instead (NAME.pth, with this file "
                        "beside it as NAME_light.pth, e.g. dannet_psp.pth + dannet_psp_light.pth)")
    path = Path(source).expanduser()
    light = None
    sibling = light_name(path)
    if path.is_file() and sibling.is_file():
        state = read_state_file(sibling)
        if kind(state) != "light":
            raise UserError(f"{sibling}: beside {path.name} but not DANNet's LightNet (first keys: "
                            f"{first_keys(sorted(map(str, state)))}); rename or move it")
        light = (sibling, state)
    return _convert(what, checkpoint, path, light), None


def convert_folder(path: Path, source: str) -> tuple[Converted, list[str] | None]:
    """Return the converted model of a folder holding one DANNet network ``.pth`` (and its LightNet)."""
    networks: dict[Path, str] = {}
    lights: dict[Path, dict[str, Any]] = {}  # LightNets are small (~14 MB)
    first: dict[str, Any] | None = None  # the first network's tensors, kept while it is the only one
    for file in sorted(path.glob("*.pth")):  # at most one network in memory: the release's files are large
        state = read_state_file(file)
        what = kind(state)
        if what == "light":
            lights[file] = state
        elif what is not None:
            networks[file] = what
            first = state if len(networks) == 1 else None
    if not networks:
        raise UserError(f"{path}: no DANNet PSPNet, DeepLab-v2 or RefineNet .pth in this folder "
                        f"({len(lights)} LightNet files)")
    if len(networks) > 1:
        one = next(iter(networks))
        raise UserError(f"{path}: holds {len(networks)} DANNet networks ({', '.join(f.name for f in networks)}); "
                        f"import one file, e.g. `nightseg import {one}` (its {light_name(one).name} comes along)")
    (file, what), = networks.items()
    if light_name(file) in lights:
        light_file: Path | None = light_name(file)
    elif len(lights) == 1:
        light_file = next(iter(lights))
    elif lights:
        raise UserError(f"{path}: {len(lights)} LightNet files and none is named {light_name(file).name}; keep "
                        f"the one trained with {file.name}")
    else:
        light_file = None
    light = (light_file, lights[light_file]) if light_file is not None else None
    assert first is not None
    return _convert(what, first, file, light), None
