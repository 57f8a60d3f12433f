"""Build any segmentation network by name: from a recipe's ``model:`` config or a checkpoint's metadata.

Names are those of `nightseg.models.build_segmenter` (``pspnet_r101``, ``deeplabv3plus_r50``, ...) or a
``package.module:factory`` reference (EGNet: ``nightseg.models.egnet:egnet_r101``; NightLab:
``nightseg.models.nightlab:build_nightlab``); every built network carries ``config``, the keyword
arguments that rebuild it, which is what checkpoints store as their ``model`` metadata.
`read_checkpoint` (from `nightseg.models.pretrained`) reads any model reference: a NightSeg checkpoint, a
published checkpoint file or folder, or ``hf:ORG/NAME[@REV]``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from nightseg.core.errors import UserError
from nightseg.core.factory import import_factory
from nightseg.models.backbones import current_imagenet_loader, imagenet_weights_from
from nightseg.models.pretrained import read_checkpoint  # also lets load_segmenter_weights read references
from nightseg.models.pretrained.imagenet import EncoderFile
from nightseg.models.segmenters import build_segmenter

log = logging.getLogger("nightseg.models")


def build_model(model_cfg: Any) -> nn.Module:
    """Return the segmenter of a model config (`nightseg.models.build_segmenter` or ``module:factory``).

    With ``model_cfg.encoder_weights`` (a local ImageNet file) its encoders are ImageNet-initialised from
    that file instead of a download (`encoder_weights_from`), whatever ``pretrained`` says."""
    weights = getattr(model_cfg, "encoder_weights", None)
    pretrained = bool(model_cfg.pretrained or weights)
    with encoder_weights_from(weights, model_cfg.name):
        if ":" in model_cfg.name:
            factory = import_factory(model_cfg.name, "model")
            model = factory(num_classes=model_cfg.num_classes, pretrained=pretrained, **model_cfg.options)
        else:
            model = build_segmenter(model_cfg.name, num_classes=model_cfg.num_classes,
                                    pretrained=pretrained, **model_cfg.options)
    if not hasattr(model, "config"):
        model.config = {"name": model_cfg.name, "num_classes": model_cfg.num_classes, **model_cfg.options}
    return model


@contextlib.contextmanager
def encoder_weights_from(path: str | os.PathLike | None, model_name: str) -> Iterator[None]:
    """While active, encoders built with ``pretrained=True`` read their ImageNet weights from the local file
    `path` (`nightseg.models.pretrained.imagenet`); None: nothing changes. On leaving, a UserError when model
    `model_name` took nothing from the file (it has no encoder with an ImageNet file format here)."""
    if not path:
        yield
        return
    source = EncoderFile(path)
    with imagenet_weights_from(source.load):
        yield
    if not source.used and current_imagenet_loader() is None:
        raise UserError(f"model.encoder_weights={path}: model {model_name} builds no encoder that takes ImageNet "
                        "weights from a file (ResNet-18/50/101, ResNet-50/101-V1c, MiT-B0..B5, MobileNetV3-Large)")
    for used in source.used:
        log.info("model.encoder_weights=%s: ImageNet %s", path, used)


def model_from_config(config: dict[str, Any], source: str | Path) -> nn.Module:
    """Return the untrained network a checkpoint's ``model`` metadata describes (never downloads weights);
    a UserError naming `source` when the metadata does not describe one."""
    if not isinstance(config, dict) or "name" not in config or "num_classes" not in config:
        raise UserError(f"{source}: checkpoint metadata has no \"model\" with name and num_classes; not a segmenter checkpoint")
    kwargs = {k: v for k, v in config.items() if k not in ("name", "pretrained")}  # never download at inference
    name = str(config["name"])
    try:
        if ":" in name:  # a custom `module:factory` model of a recipe
            model = import_factory(name, "model")(pretrained=False, **kwargs)
        else:
            model = build_segmenter(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise UserError(f"{source}: cannot rebuild model {name!r} from its metadata {config} ({exc})") from exc
    if not hasattr(model, "config"):
        model.config = dict(config)
    return model


__all__ = ["build_model", "encoder_weights_from", "model_from_config", "read_checkpoint"]
