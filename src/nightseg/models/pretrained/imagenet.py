"""ImageNet encoder weights from a local file (``model.encoder_weights: FILE``), for training offline.

`EncoderFile(path).load(module, family)` is the loader that `nightseg.models.backbones.imagenet_weights_from`
installs while a model is built: every encoder built with ``pretrained=True`` takes its ImageNet weights from
the file instead of downloading them. The file is read once, with `read_state_file` only (safetensors, or
``torch.load(weights_only=True)``: a pickle that needs code is refused). Accepted, per encoder family:

| family (segmenters) | layouts of the file |
|---|---|
| ``resnet18/50/101`` (``pspnet_*``, ``deeplabv2_r101``, ``deeplabv3plus_r50``, EGNet, ...) | torchvision (``resnet50-*.pth``), timm (``resnet50.*`` ``model.safetensors`` / ``pytorch_model.bin``) and smp (same keys): ``conv1``, ``bn1``, ``layer1..4``, ``fc`` |
| ``resnet50/101_v1c`` (``pspnet_r*_v1c``, ``deeplabv3plus_r*_v1c``) | mmcv / mmseg ImageNet (``resnet50_v1c-*.pth``): ``stem.0..7``, ``layer1..4``, ``fc`` |
| ``mit_b0..b5`` (``segformer_bN``, ``daformer_mitbN``) | NVlabs SegFormer / DAFormer ``mit_bN.pth`` and smp's ``mit_bN.imagenet`` (``patch_embed1``, ``block1``, ``norm1``, ``head``); mmseg 1.x (``layers.0.0.projection``: packed ``in_proj`` split into q / kv, 1x1-conv FFN to linear, as `nightseg.models.pretrained.mmseg`); Hugging Face ``nvidia/mit-bN`` (``segformer.encoder.patch_embeddings``: key and value concatenated into kv, as `hf_segformer`) |
| ``mobilenet_v3_large`` (``lraspp_mobilenetv3``) | torchvision (``mobilenet_v3_large-*.pth``): ``features``, ``classifier`` |

A wrapper dict (``state_dict`` / ``model``), a ``module.`` prefix (DataParallel) and a ``backbone.`` /
``encoder.`` prefix shared by every key are removed first. The ImageNet classifier (``fc.*``, ``head.*``,
``classifier.*``) is dropped explicitly; every other tensor must be consumed exactly once with the shape the
encoder has, else a one-line UserError names the file and the first keys that do not fit. Old torchvision
files without BatchNorm's ``num_batches_tracked`` get 0 there, as ``load_state_dict`` gives them. Not
supported (refused with one line): timm's MobileNetV3 / EfficientNet layout (``conv_stem``), other encoders.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nightseg.core.errors import UserError
from nightseg.models.pretrained.common import SourceTensors, first_keys, read_state_file, tensors_of

RESNET, V1C, NVLABS, MMSEG_MIT, HF_MIT, TV_MOBILENET = (
    "ResNet (torchvision / timm / smp layout)", "ResNet-V1c (mmcv / mmseg layout)", "MiT (NVlabs / smp layout)",
    "MiT (mmseg layout)", "MiT (Hugging Face layout)", "MobileNetV3 (torchvision layout)")
ACCEPTED = {"resnet": (RESNET,), "v1c": (V1C,), "mit": (NVLABS, MMSEG_MIT, HF_MIT), "mobilenet": (TV_MOBILENET,)}
CLASSIFIERS = {RESNET: "fc.", V1C: "fc.", NVLABS: "head.", MMSEG_MIT: "head.", HF_MIT: "classifier.",
               TV_MOBILENET: "classifier."}
MODULE_CLASSIFIERS = ("fc.", "classifier.")  # a torchvision classifier's own head: not an encoder tensor


def layout_of(state: dict[str, torch.Tensor]) -> str | None:
    """Return which known layout the (normalised) state dict `state` has, None when none."""
    keys = set(state)
    if "layer1.0.conv1.weight" in keys:
        return V1C if "stem.0.weight" in keys else RESNET if "conv1.weight" in keys else None
    if "patch_embed1.proj.weight" in keys:
        return NVLABS
    if "layers.0.0.projection.weight" in keys:
        return MMSEG_MIT
    if "encoder.patch_embeddings.0.proj.weight" in keys or "patch_embeddings.0.proj.weight" in keys:
        return HF_MIT
    if "features.0.0.weight" in keys:
        return TV_MOBILENET
    return None


def describe(state: dict[str, torch.Tensor]) -> str:
    """Return what the file looks like, for an error message when no known layout matches."""
    keys = list(state)
    if any(k.startswith(("decode_head.", "head.classifier.", "segmentation_head.", "decoder.")) for k in keys):
        return "a segmentation checkpoint, not an ImageNet encoder (give it as method.init_checkpoint)"
    if "conv_stem.weight" in state:
        return "timm's MobileNet/EfficientNet layout (conv_stem, blocks), not supported: use torchvision's file"
    return f"an unknown layout (first keys: {first_keys(sorted(keys))})"


def normalise(checkpoint: dict, source: str) -> dict[str, torch.Tensor]:
    """Return the flat tensors of a loaded file: unwrapped (``state_dict`` / ``model``), without a
    ``module.`` prefix, Hugging Face's ``segformer.`` prefix, or a ``backbone.`` / ``encoder.`` prefix that every
    key shares."""
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    state = tensors_of(checkpoint, source)
    for prefix in ("module.", "segformer."):
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    for prefix in ("backbone.", "encoder."):
        if all(k.startswith(prefix) for k in state) and layout_of(state) is None:
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


class _Reader:
    """Takes source tensors, recording the keys that are absent instead of failing at the first."""

    def __init__(self, src: SourceTensors) -> None:
        self.src = src
        self.missing: list[str] = []

    def __call__(self, key: str) -> torch.Tensor | None:
        if self.src.has(key):
            return self.src.take(key)
        self.missing.append(key)
        return None


def _renamed(read: _Reader, own: list[str], rename: Callable[[str], str]) -> dict[str, torch.Tensor | None]:
    out: dict[str, torch.Tensor | None] = {}
    for key in own:
        name = rename(key)
        if key.endswith("num_batches_tracked") and not read.src.has(name):
            out[key] = torch.tensor(0)  # files saved before torch 0.4.1 lack it: what load_state_dict gives them
        else:
            out[key] = read(name)
    return out


def _v1c_name(key: str) -> str:
    return re.sub(r"^layers\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)


def _mmseg_mit(read: _Reader, own: list[str]) -> dict[str, torch.Tensor | None]:
    """Map mmseg 1.x MiT keys onto smp's (the encoder part of `nightseg.models.pretrained.mmseg`)."""
    out: dict[str, torch.Tensor | None] = {}
    for key in own:
        m = re.match(r"block(\d)\.(\d+)\.(.*)", key)
        if m is None:
            stage = re.match(r"(patch_embed|norm)(\d)\.(.*)", key)
            if stage is None:
                out[key] = read(key)
                continue
            kind, i, rest = stage.group(1), int(stage.group(2)) - 1, stage.group(3)
            if kind == "norm":
                out[key] = read(f"layers.{i}.2.{rest}")
            else:
                out[key] = read(f"layers.{i}.0.{rest.replace('proj.', 'projection.')}")
            continue
        i, j, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
        b = f"layers.{i}.1.{j}."
        part, _, kind = rest.rpartition(".")
        if part in ("attn.q", "attn.kv"):
            continue  # below, from the packed in_proj
        source = {"attn.proj": "attn.attn.out_proj", "mlp.dwconv.dwconv": "ffn.layers.1", "mlp.fc1": "ffn.layers.0",
                  "mlp.fc2": "ffn.layers.4"}.get(part, part)
        tensor = read(f"{b}{source}.{kind}")
        out[key] = tensor.flatten(1) if tensor is not None and part in ("mlp.fc1", "mlp.fc2") and kind == "weight" else tensor
    for key in own:
        m = re.match(r"block(\d)\.(\d+)\.attn\.q\.(weight|bias)", key)
        if m:
            i, j, kind = int(m.group(1)) - 1, m.group(2), m.group(3)
            packed = read(f"layers.{i}.1.{j}.attn.attn.in_proj_{kind}")
            dim = packed.shape[0] // 3 if packed is not None else 0
            out[key] = packed[:dim] if packed is not None else None
            out[key.replace(".attn.q.", ".attn.kv.")] = packed[dim:] if packed is not None else None
    return out


def _hf_mit(read: _Reader, own: list[str], prefix: str) -> dict[str, torch.Tensor | None]:
    """Map Hugging Face SegFormer encoder keys onto smp's (as `nightseg.models.pretrained.hf_segformer`)."""
    out: dict[str, torch.Tensor | None] = {}
    block = {"norm1": "layer_norm_1", "norm2": "layer_norm_2", "attn.q": "attention.self.query",
             "attn.sr": "attention.self.sr", "attn.norm": "attention.self.layer_norm",
             "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.dense1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
             "mlp.fc2": "mlp.dense2"}
    for key in own:
        part, _, kind = key.rpartition(".")
        if m := re.match(r"patch_embed(\d)\.(proj|norm)$", part):
            name = "proj" if m.group(2) == "proj" else "layer_norm"
            out[key] = read(f"{prefix}patch_embeddings.{int(m.group(1)) - 1}.{name}.{kind}")
        elif m := re.match(r"norm(\d)$", part):
            out[key] = read(f"{prefix}layer_norm.{int(m.group(1)) - 1}.{kind}")
        elif m := re.match(r"block(\d)\.(\d+)\.(.*)$", part):
            b = f"{prefix}block.{int(m.group(1)) - 1}.{m.group(2)}."
            if m.group(3) == "attn.kv":
                k, v = read(f"{b}attention.self.key.{kind}"), read(f"{b}attention.self.value.{kind}")
                out[key] = torch.cat([k, v]) if k is not None and v is not None else None
            else:
                out[key] = read(f"{b}{block.get(m.group(3), m.group(3))}.{kind}")
        else:
            out[key] = read(key)
    return out


class EncoderFile:
    """The ImageNet weights in one local file, read once; `load` is the loader of `imagenet_weights_from`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self.source = str(path)
        self._state: dict[str, torch.Tensor] | None = None
        self.used: list[str] = []

    def state(self) -> dict[str, torch.Tensor]:
        """Return the file's normalised tensors (read on first use; a one-line UserError if unreadable)."""
        if self._state is None:
            self._state = normalise(read_state_file(self.path), self.source)
        return self._state

    def load(self, module: nn.Module, family: str) -> None:
        """Load the file into `module`, the encoder `family` (see `nightseg.models.backbones.load_imagenet`);
        a one-line UserError naming the file and the first keys that do not fit."""
        state = self.state()
        layout = layout_of(state)
        kind = ("v1c" if family.endswith("_v1c") else "resnet" if family.startswith("resnet")
                else "mit" if family.startswith("mit_") else "mobilenet" if family.startswith("mobilenet") else None)
        what = f"model.encoder_weights={self.source}"
        if kind is None:
            raise UserError(f"{what}: the {family} encoder has no ImageNet file format here; supported: ResNet-18/50/101, "
                            "ResNet-50/101-V1c, MiT-B0..B5, MobileNetV3-Large")
        if layout is None or layout not in ACCEPTED[kind]:
            found = f"a {layout} file" if layout else describe(state)
            raise UserError(f"{what}: {found}; this model's {family} encoder needs {' or '.join(ACCEPTED[kind])}")
        src = SourceTensors(state, self.source, f"ImageNet {family}")
        dropped = src.drop(CLASSIFIERS[layout])
        own_state = module.state_dict()
        own = [k for k in own_state if not (module_has_classifier(family) and k.startswith(MODULE_CLASSIFIERS))]
        read = _Reader(src)
        if layout == MMSEG_MIT:
            mapped = _mmseg_mit(read, own)
        elif layout == HF_MIT:
            mapped = _hf_mit(read, own, "encoder." if any(k.startswith("encoder.") for k in state) else "")
        else:
            mapped = _renamed(read, own, _v1c_name if layout == V1C else str)
        if read.missing:
            raise UserError(f"{what}: not a {family} encoder: {len(read.missing)} tensors missing from the "
                            f"{layout} file (e.g. {first_keys(read.missing)}); a different depth or variant?")
        bad = [f"{k} {tuple(v.shape)} vs {tuple(own_state[k].shape)}" for k, v in mapped.items()
               if v is not None and v.shape != own_state[k].shape]
        if bad:
            raise UserError(f"{what}: shapes do not fit the {family} encoder (file vs model): {first_keys(bad)}; "
                            "a different depth or variant?")
        left = [k for k in state if k not in src.consumed]
        if left:
            raise UserError(f"{what}: {len(left)} tensors have no place in the {family} encoder "
                            f"(e.g. {first_keys(left)}); a different variant?")
        # nn.Module's own method: smp's MiT encoder overrides load_state_dict without `strict`; only a
        # torchvision classifier's fc / classifier is left out (checked above: everything else is mapped)
        nn.Module.load_state_dict(module, {k: v for k, v in mapped.items() if v is not None}, strict=False)
        self.used.append(f"{family} ({layout}, {len(src.consumed) - len(dropped)} tensors, classifier dropped: "
                         f"{len(dropped)})")


def module_has_classifier(family: str) -> bool:
    """Return whether the module an encoder `family` loads into is a whole torchvision classifier (whose own
    ``fc`` / ``classifier`` stays at its initialisation: the segmenter drops it)."""
    return family.startswith(("resnet", "mobilenet")) and not family.endswith("_v1c")


__all__ = ["EncoderFile", "describe", "layout_of", "normalise"]
