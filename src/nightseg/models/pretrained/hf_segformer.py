"""Hugging Face `transformers` SegFormer (``SegformerForSemanticSegmentation``) -> NightSeg ``segformer_bN``.

A folder with ``config.json`` (``model_type: segformer``) and ``model.safetensors`` or ``pytorch_model.bin``,
e.g. ``nvidia/segformer-b0-finetuned-cityscapes-1024-1024``. The encoder is the same Mix Transformer as
NightSeg's (smp's MiT) with other key names, separate key/value projections (concatenated here into smp's
``kv``) and LayerNorm eps 1e-5 everywhere (kept via the ``layer_norm_eps`` model option). The decode head
is the same all-MLP head, except that Hugging Face concatenates the deepest stage first: the fuse conv's
input-channel blocks are reordered so the same function is computed. Logits equal transformers' own
model to 1e-4 (tests/test_pretrained.py).
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

FORMAT = "hf"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LICENCE = ("NVIDIA Source Code License for SegFormer (research / non-commercial) for nvidia/segformer-* "
           "models; other repositories: see their model card")


def mit_variants() -> dict[str, dict[str, Any]]:
    """Return smp's MiT-B0..B5 hyper-parameters by NightSeg variant name (``b0`` .. ``b5``)."""
    from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders

    return {name.removeprefix("mit_"): spec["params"] for name, spec in mix_transformer_encoders.items()}


def detect(path: Path) -> bool:
    """Return whether `path` is a Hugging Face SegFormer folder (config.json with model_type segformer)."""
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        return read_json(config, "Hugging Face").get("model_type") == "segformer"
    except UserError:
        return False


def match_variant(config: dict[str, Any], source: str) -> str:
    """Return the MiT variant (``b0``..``b5``) whose shape `config` has; a UserError naming what differs."""
    wanted = {
        "hidden_sizes": "embed_dims", "depths": "depths", "num_attention_heads": "num_heads",
        "sr_ratios": "sr_ratios", "mlp_ratios": "mlp_ratios",
    }
    if config.get("num_channels", 3) != 3 or config.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"{source}: SegFormer with num_channels={config.get('num_channels')} / "
                        f"hidden_act={config.get('hidden_act')}; only RGB MiT-B0..B5 with GELU are supported")
    if list(config.get("patch_sizes", [7, 3, 3, 3])) != [7, 3, 3, 3] or list(config.get("strides", [4, 2, 2, 2])) != [4, 2, 2, 2]:
        raise UserError(f"{source}: SegFormer patch sizes {config.get('patch_sizes')} / strides {config.get('strides')} "
                        "are not MiT-B0..B5's")
    for variant, params in mit_variants().items():
        if all(list(config.get(k, [])) == list(params[v]) for k, v in wanted.items()):
            return variant
    shape = {k: config.get(k) for k in ("hidden_sizes", "depths")}
    raise UserError(f"{source}: SegFormer encoder {shape} is none of MiT-B0..B5; only those are supported")


def weight_file(path: Path) -> Path:
    """Return the weights file of a Hugging Face folder; a UserError when there is none."""
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    if (path / "model.safetensors.index.json").is_file():
        raise UserError(f"{path}: sharded weights (model.safetensors.index.json) are not supported; "
                        "save the model unsharded (save_pretrained(max_shard_size='10GB'))")
    raise UserError(f"{path}: no {' or '.join(WEIGHT_FILES)} beside config.json; download the weights too")


def preprocessing(path: Path, source: str) -> dict[str, Any]:
    """Return the preprocessing the model was trained with: mean/std (0-255 scale), RGB, training size and
    how it is run at test time (Cityscapes 1024x1024 / 768x768 models: mmseg's sliding window at full
    resolution, uniform blending; others: whole image)."""
    pre = {}
    if (path / "preprocessor_config.json").is_file():
        pre = read_json(path / "preprocessor_config.json", "Hugging Face")
    mean = [round(255.0 * m, 4) for m in pre.get("image_mean", [m / 255.0 for m in IMAGENET_MEAN_255])]
    std = [round(255.0 * s, 4) for s in pre.get("image_std", [s / 255.0 for s in IMAGENET_STD_255])]
    size = pre.get("size") or {}
    train = [int(size["height"]), int(size["width"])] if "height" in size and "width" in size else None
    out: dict[str, Any] = {"mean": mean, "std": std, "channels": "rgb", "train_size": train, "test": {"mode": "whole"}}
    # The nvidia Cityscapes checkpoints were trained on 1024x1024 (or 768x768) crops of 1024x2048 images and
    # scored with mmseg's sliding window (stride 768 / 512) at full resolution: "-cityscapes-1024-1024".
    name = source.lower()
    for crop, stride in ((1024, 768), (768, 512)):
        if f"cityscapes-{crop}-{crop}" in name or ("cityscapes" in name and train == [crop, crop]):
            out["train_size"] = [crop, crop]
            out["test"] = {"mode": "slide", "window": [crop, crop], "stride": [stride, stride], "blend": "uniform"}
    return out


def convert(path: Path, source: str) -> tuple[Converted, list[str] | None]:
    """Return the converted checkpoint of a Hugging Face SegFormer folder and its source class names."""
    config = read_json(path / "config.json", "Hugging Face")
    if config.get("model_type") != "segformer":
        raise UserError(f"{path / 'config.json'}: model_type {config.get('model_type')!r}, not 'segformer'")
    variant = match_variant(config, source)
    state = tensors_of(read_state_file(weight_file(path)), weight_file(path))
    src = SourceTensors(state, source, "Hugging Face SegFormer")
    depths = mit_variants()[variant]["depths"]
    out: dict[str, torch.Tensor] = {}
    e, enc = "segformer.encoder.", "backbone.encoder."
    for i, depth in enumerate(depths):
        for part, ours in (("proj", "proj"), ("layer_norm", "norm")):
            for t in ("weight", "bias"):
                out[f"{enc}patch_embed{i + 1}.{ours}.{t}"] = src.take(f"{e}patch_embeddings.{i}.{part}.{t}")
        for j in range(depth):
            b, o = f"{e}block.{i}.{j}.", f"{enc}block{i + 1}.{j}."
            for t in ("weight", "bias"):
                out[f"{o}norm1.{t}"] = src.take(f"{b}layer_norm_1.{t}")
                out[f"{o}attn.q.{t}"] = src.take(f"{b}attention.self.query.{t}")
                out[f"{o}attn.kv.{t}"] = torch.cat([src.take(f"{b}attention.self.key.{t}"),
                                                    src.take(f"{b}attention.self.value.{t}")])
                if src.has(f"{b}attention.self.sr.{t}"):
                    out[f"{o}attn.sr.{t}"] = src.take(f"{b}attention.self.sr.{t}")
                    out[f"{o}attn.norm.{t}"] = src.take(f"{b}attention.self.layer_norm.{t}")
                out[f"{o}attn.proj.{t}"] = src.take(f"{b}attention.output.dense.{t}")
                out[f"{o}norm2.{t}"] = src.take(f"{b}layer_norm_2.{t}")
                out[f"{o}mlp.fc1.{t}"] = src.take(f"{b}mlp.dense1.{t}")
                out[f"{o}mlp.dwconv.dwconv.{t}"] = src.take(f"{b}mlp.dwconv.dwconv.{t}")
                out[f"{o}mlp.fc2.{t}"] = src.take(f"{b}mlp.dense2.{t}")
        for t in ("weight", "bias"):
            out[f"{enc}norm{i + 1}.{t}"] = src.take(f"{e}layer_norm.{i}.{t}")
    d = "decode_head."
    for i in range(len(depths)):
        out[f"head.linear.{i}.weight"] = src.take(f"{d}linear_c.{i}.proj.weight")[:, :, None, None]
        out[f"head.linear.{i}.bias"] = src.take(f"{d}linear_c.{i}.proj.bias")
    fuse = src.take(f"{d}linear_fuse.weight")
    # transformers concatenates [stage4, stage3, stage2, stage1]; NightSeg [stage1, ..., stage4]
    out["head.fuse.0.weight"] = torch.cat(fuse.chunk(len(depths), dim=1)[::-1], dim=1)
    for t in ("weight", "bias", "running_mean", "running_var"):
        out[f"head.fuse.1.{t}"] = src.take(f"{d}batch_norm.{t}")
    key = f"{d}batch_norm.num_batches_tracked"
    out["head.fuse.1.num_batches_tracked"] = src.take(key) if src.has(key) else torch.tensor(0)
    for t in ("weight", "bias"):
        out[f"head.classifier.{t}"] = src.take(f"{d}classifier.{t}")
    src.drop("segformer.encoder.head.")  # an ImageNet classifier left in some encoder-only exports
    src.finish()
    model: dict[str, Any] = {"name": f"segformer_{variant}", "num_classes": int(out["head.classifier.weight"].shape[0]),
                             "layer_norm_eps": 1e-5, "sdpa": True}
    default_dim = 256 if variant in ("b0", "b1") else 768
    if int(config.get("decoder_hidden_size", default_dim)) != default_dim:
        model["embed_dim"] = int(config["decoder_hidden_size"])
    pre = preprocessing(path, source)
    if pre["mean"] != [round(m, 4) for m in IMAGENET_MEAN_255] or pre["std"] != [round(s, 4) for s in IMAGENET_STD_255]:
        model["input_norm"] = {"mean": [m / 255.0 for m in pre["mean"]], "std": [s / 255.0 for s in pre["std"]]}
    info = {"format": FORMAT, "architecture": f"SegFormer MiT-{variant.upper()}", "licence": LICENCE,
            "preprocessing": pre, "consumed": len(src.consumed)}
    id2label = config.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    return Converted(out, model, info), names
