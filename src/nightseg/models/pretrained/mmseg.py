"""OpenMMLab mmsegmentation checkpoints (``.pth`` with ``state_dict`` and ``meta``) -> NightSeg.

Supported (Cityscapes "-D8" models and SegFormer):

- PSPNet R50/R101-D8: ResNet-V1c deep stem + dilated bottlenecks -> ``pspnet_r50_v1c`` / ``pspnet_r101_v1c``
  (`ResNetV1cBackbone` + `PyramidPoolingHead`, whose layout is mmseg's ``PSPHead``: 1x1 ConvModules per bin,
  [x, bins] concatenated, 3x3 bottleneck, ``conv_seg``).
- DeepLab v3+ R50/R101-D8 (``DepthwiseSeparableASPPHead``) -> ``deeplabv3plus_r{50,101}_v1c``
  (`SeparableASPPHead`).
- SegFormer MiT-B0..B5 (mmseg's ``MixVisionTransformer`` + ``SegformerHead``) -> ``segformer_bN`` with the
  ``head="mmseg"`` option (conv-BN-ReLU per stage) and LayerNorm eps 1e-6; the attention's packed
  ``in_proj`` is split into smp's ``q`` / ``kv`` and the 1x1-conv FFN layers become linear layers.
- The original NVlabs SegFormer release (``backbone.patch_embed1``..., ``decode_head.linear_c4``...): the
  same encoder keys as smp's MiT, the head concatenating the deepest stage first.

The auxiliary FCN head (``auxiliary_head.*``, used only in training) is dropped. Normalisation: mmseg's
mean [123.675, 116.28, 103.53] / std [58.395, 57.12, 57.375] on RGB (``to_rgb``) is ImageNet's, NightSeg's
default. mmsegmentation does not install on CPU here, so the tests check that every source tensor is
consumed exactly once with the shape the model expects, plus the building blocks numerically.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from nightseg.core.errors import UserError
from nightseg.models.pretrained.common import (
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    Converted,
    SourceTensors,
    first_keys,
    tensors_of,
)
from nightseg.models.pretrained.hf_segformer import mit_variants

FORMAT = "mmseg"
LICENCE = ("mmsegmentation: Apache-2.0 (code and released weights); SegFormer weights: NVIDIA Source Code "
           "License (non-commercial)")
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def state_of(checkpoint: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """Return the model tensors of an mmseg checkpoint dict (``state_dict`` if present, else the dict)."""
    state = checkpoint.get("state_dict", checkpoint)
    state = {k.removeprefix("module."): v for k, v in tensors_of(state, source).items()}
    return state


def detect(checkpoint: dict[str, Any]) -> bool:
    """Return whether a loaded checkpoint dict has mmseg's layout (``backbone.*`` + ``decode_head.*``)."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        return False
    keys = [str(k).removeprefix("module.") for k in state]
    return any(k.startswith("backbone.") for k in keys) and any(k.startswith("decode_head.") for k in keys)


def class_names(checkpoint: dict[str, Any]) -> list[str] | None:
    """Return the class names an mmseg checkpoint records in ``meta`` (0.x ``CLASSES``, 1.x ``dataset_meta``)."""
    meta = checkpoint.get("meta") or {}
    if not isinstance(meta, dict):
        return None
    names = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def _conv_module(src: SourceTensors, out: dict, mm: str, conv: str, bn: str) -> None:
    # an mmcv ConvModule: .conv (bias-free before a norm) and .bn
    out[f"{conv}.weight"] = src.take(f"{mm}.conv.weight")
    for t in BN:
        key = f"{mm}.bn.{t}"
        out[f"{bn}.{t}"] = src.take(key) if src.has(key) or t != "num_batches_tracked" else torch.tensor(0)


def _resnet(src: SourceTensors, out: dict) -> None:
    for i in (0, 1, 3, 4, 6, 7):  # the deep stem's conv/bn pairs, same indices in NightSeg
        for key in [k for k in src.tensors if k.startswith(f"backbone.stem.{i}.")]:
            out[key] = src.take(key)
    for layer in range(1, 5):
        for key in [k for k in src.tensors if k.startswith(f"backbone.layer{layer}.")]:
            out[key.replace(f"backbone.layer{layer}.", f"backbone.layers.{layer - 1}.", 1)] = src.take(key)


def _resnet_depth(state: dict[str, torch.Tensor], source: str) -> int:
    blocks = [len({int(m.group(1)) for k in state if (m := re.match(rf"backbone\.layer{i}\.(\d+)\.", k))})
              for i in range(1, 5)]
    depths = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}
    if "backbone.stem.0.weight" not in state or tuple(blocks) not in depths:
        raise UserError(f"{source}: mmseg ResNet with blocks {blocks} and "
                        f"{'a deep stem' if 'backbone.stem.0.weight' in state else 'no deep stem (not V1c)'}; "
                        "supported: ResNet-50/101-V1c (the -D8 models)")
    return depths[tuple(blocks)]


def _pspnet(src: SourceTensors, out: dict) -> None:
    d = "decode_head."
    for k in range(4):
        _conv_module(src, out, f"{d}psp_modules.{k}.1", f"head.stages.{k}.1", f"head.stages.{k}.2")
    _conv_module(src, out, f"{d}bottleneck", "head.bottleneck.0", "head.bottleneck.1")


def _separable(src: SourceTensors, out: dict, mm: str, ours: str) -> None:
    _conv_module(src, out, f"{mm}.depthwise_conv", f"{ours}.0.0", f"{ours}.0.1")
    _conv_module(src, out, f"{mm}.pointwise_conv", f"{ours}.1.0", f"{ours}.1.1")


def _deeplabv3plus(src: SourceTensors, out: dict) -> None:
    d = "decode_head."
    _conv_module(src, out, f"{d}image_pool.1", "head.image_pool.1.0", "head.image_pool.1.1")
    _conv_module(src, out, f"{d}aspp_modules.0", "head.aspp.0.0", "head.aspp.0.1")
    for k in (1, 2, 3):
        _separable(src, out, f"{d}aspp_modules.{k}", f"head.aspp.{k}")
    _conv_module(src, out, f"{d}bottleneck", "head.bottleneck.0", "head.bottleneck.1")
    _conv_module(src, out, f"{d}c1_bottleneck", "head.low.0", "head.low.1")
    for k in (0, 1):
        _separable(src, out, f"{d}sep_bottleneck.{k}", f"head.fuse.{k}")


def _mit_variant(dims: list[int], depths: list[int], source: str) -> str:
    for variant, params in mit_variants().items():
        if list(params["embed_dims"]) == dims and list(params["depths"]) == depths:
            return variant
    raise UserError(f"{source}: MiT with embed dims {dims} and depths {depths} is none of MiT-B0..B5")


def _mmseg_mit(src: SourceTensors, out: dict) -> str:
    state = src.tensors
    dims = [int(state[f"backbone.layers.{i}.0.projection.weight"].shape[0]) for i in range(4)]
    depths = [len({int(m.group(1)) for k in state if (m := re.match(rf"backbone\.layers\.{i}\.1\.(\d+)\.", k))})
              for i in range(4)]
    variant = _mit_variant(dims, depths, src.source)
    enc = "backbone.encoder."
    for i, (dim, depth) in enumerate(zip(dims, depths)):
        s = f"backbone.layers.{i}."
        for t in ("weight", "bias"):
            out[f"{enc}patch_embed{i + 1}.proj.{t}"] = src.take(f"{s}0.projection.{t}")
            out[f"{enc}patch_embed{i + 1}.norm.{t}"] = src.take(f"{s}0.norm.{t}")
            out[f"{enc}norm{i + 1}.{t}"] = src.take(f"{s}2.{t}")
        for j in range(depth):
            b, o = f"{s}1.{j}.", f"{enc}block{i + 1}.{j}."
            w_in, b_in = src.take(f"{b}attn.attn.in_proj_weight"), src.take(f"{b}attn.attn.in_proj_bias")
            out[f"{o}attn.q.weight"], out[f"{o}attn.kv.weight"] = w_in[:dim], w_in[dim:]
            out[f"{o}attn.q.bias"], out[f"{o}attn.kv.bias"] = b_in[:dim], b_in[dim:]
            for t in ("weight", "bias"):
                out[f"{o}attn.proj.{t}"] = src.take(f"{b}attn.attn.out_proj.{t}")
                out[f"{o}norm1.{t}"] = src.take(f"{b}norm1.{t}")
                out[f"{o}norm2.{t}"] = src.take(f"{b}norm2.{t}")
                if src.has(f"{b}attn.sr.{t}"):
                    out[f"{o}attn.sr.{t}"] = src.take(f"{b}attn.sr.{t}")
                    out[f"{o}attn.norm.{t}"] = src.take(f"{b}attn.norm.{t}")
                out[f"{o}mlp.dwconv.dwconv.{t}"] = src.take(f"{b}ffn.layers.1.{t}")
            # mmseg's MixFFN: 1x1 conv (fc1), 3x3 depthwise, GELU, dropout, 1x1 conv (fc2)
            out[f"{o}mlp.fc1.weight"] = src.take(f"{b}ffn.layers.0.weight").flatten(1)
            out[f"{o}mlp.fc1.bias"] = src.take(f"{b}ffn.layers.0.bias")
            out[f"{o}mlp.fc2.weight"] = src.take(f"{b}ffn.layers.4.weight").flatten(1)
            out[f"{o}mlp.fc2.bias"] = src.take(f"{b}ffn.layers.4.bias")
    d = "decode_head."
    for i in range(4):
        _conv_module(src, out, f"{d}convs.{i}", f"head.linear.{i}.0", f"head.linear.{i}.1")
    _conv_module(src, out, f"{d}fusion_conv", "head.fuse.0", "head.fuse.1")
    return variant


def _nvlabs_mit(src: SourceTensors, out: dict) -> str:
    state = src.tensors
    dims = [int(state[f"backbone.patch_embed{i}.proj.weight"].shape[0]) for i in range(1, 5)]
    depths = [len({int(m.group(1)) for k in state if (m := re.match(rf"backbone\.block{i}\.(\d+)\.", k))})
              for i in range(1, 5)]
    variant = _mit_variant(dims, depths, src.source)
    for key in [k for k in state if k.startswith("backbone.")]:
        out[key.replace("backbone.", "backbone.encoder.", 1)] = src.take(key)
    d = "decode_head."
    for i in range(4):  # NVlabs: linear_c1..c4 (nn.Linear); concatenated [c4, c3, c2, c1]
        out[f"head.linear.{i}.weight"] = src.take(f"{d}linear_c{i + 1}.proj.weight")[:, :, None, None]
        out[f"head.linear.{i}.bias"] = src.take(f"{d}linear_c{i + 1}.proj.bias")
    fuse = src.take(f"{d}linear_fuse.conv.weight")
    out["head.fuse.0.weight"] = torch.cat(fuse.chunk(4, dim=1)[::-1], dim=1)
    for t in BN:
        key = f"{d}linear_fuse.bn.{t}"
        out[f"head.fuse.1.{t}"] = src.take(key) if src.has(key) or t != "num_batches_tracked" else torch.tensor(0)
    for t in ("weight", "bias"):
        out[f"head.classifier.{t}"] = src.take(f"{d}linear_pred.{t}")
    return variant


def convert(checkpoint: dict[str, Any], source: str) -> tuple[Converted, list[str] | None]:
    """Return the converted checkpoint of a loaded mmseg checkpoint dict and its class names (from meta)."""
    state = state_of(checkpoint, source)
    src = SourceTensors(state, source, "mmsegmentation")
    src.drop("auxiliary_head.")  # training-only auxiliary FCN head
    out: dict[str, torch.Tensor] = {}
    model: dict[str, Any]
    test: dict[str, Any] = {"mode": "whole"}
    train = [512, 1024]
    if "backbone.layers.0.0.projection.weight" in state or "backbone.patch_embed1.proj.weight" in state:
        mmseg_layout = "backbone.layers.0.0.projection.weight" in state
        variant = _mmseg_mit(src, out) if mmseg_layout else _nvlabs_mit(src, out)
        if mmseg_layout:
            for t in ("weight", "bias"):
                out[f"head.classifier.{t}"] = src.take(f"decode_head.conv_seg.{t}")
        embed = int(out["head.fuse.0.weight"].shape[0])
        model = {"name": f"segformer_b{variant[1]}", "num_classes": int(out["head.classifier.weight"].shape[0])}
        model["layer_norm_eps"] = 1e-6 if mmseg_layout else None
        model["head"] = "mmseg" if mmseg_layout else "mlp"
        model["sdpa"] = True
        if embed != (256 if variant in ("b0", "b1") else 768):
            model["embed_dim"] = embed
        model = {k: v for k, v in model.items() if v is not None and v != "mlp"}
        arch = f"SegFormer MiT-{variant.upper()} ({'mmseg' if mmseg_layout else 'NVlabs'} layout)"
        # SegFormer's Cityscapes models: 1024x1024 crops, sliding window 1024 / stride 768 at test time
        train = [1024, 1024]
        test = {"mode": "slide", "window": [1024, 1024], "stride": [768, 768], "blend": "uniform"}
    elif "decode_head.psp_modules.0.1.conv.weight" in state or "decode_head.c1_bottleneck.conv.weight" in state:
        depth = _resnet_depth(state, source)
        _resnet(src, out)
        if "decode_head.psp_modules.0.1.conv.weight" in state:
            _pspnet(src, out)
            head, arch = "pspnet", f"PSPNet ResNet-{depth}-V1c D8"
        else:
            _deeplabv3plus(src, out)
            head, arch = "deeplabv3plus", f"DeepLab v3+ ResNet-{depth}-V1c D8"
        for t in ("weight", "bias"):
            out[f"head.classifier.{t}"] = src.take(f"decode_head.conv_seg.{t}")
        model = {"name": f"{head}_r{depth}_v1c", "num_classes": int(out["head.classifier.weight"].shape[0])}
    else:
        heads = sorted({k.split(".")[1] for k in state if k.startswith("decode_head.")})
        raise UserError(f"{source}: mmseg decode head with {first_keys(heads)} is not supported; supported: "
                        "PSPHead, DepthwiseSeparableASPPHead (DeepLab v3+), SegformerHead")
    src.finish()
    pre = {"mean": list(IMAGENET_MEAN_255), "std": list(IMAGENET_STD_255), "channels": "rgb",
           "train_size": train, "test": test}
    info = {"format": FORMAT, "architecture": arch, "licence": LICENCE, "preprocessing": pre,
            "consumed": len(src.consumed)}
    return Converted(out, model, info), class_names(checkpoint)

