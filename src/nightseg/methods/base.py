"""`SegmentationModule`: the LightningModule every recipe subclasses (segmenter, validation, optimiser).

A recipe implements ``training_step(batch, batch_idx)`` and returns ``self.log_losses(total, **terms)``;
the engine (`nightseg.engine`) supplies data, seeding, checkpoints and devices. See the engine's module
docstring for the batch layout.
"""

from __future__ import annotations

import functools
import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from nightseg.core.checkpoint import load_metadata
from nightseg.core.classes import colorize
from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.core.io import write_png
from nightseg.core.schedule import poly_factor
from nightseg.evaluation.exposure import ExposureConfusion, exposure_scores, masked_label
from nightseg.evaluation.metrics import class_names_for, segmentation_scores
from nightseg.models.pretrained import is_nightseg_checkpoint
from nightseg.models.pretrained.reference import is_reference
from nightseg.models.registry import build_model, read_checkpoint

log = logging.getLogger("nightseg.train")
WRAPPER_KEYS = ("name", "num_classes", "pretrained", "cross_attention", "relight")
"""Keys of a checkpoint's ``model`` metadata that are not its architecture (recipe wrappers, class count)."""


class SegmentationModule(L.LightningModule):
    """The base of every recipe: a segmenter ``self.model``, validation, optimiser and schedule.

    Subclasses implement ``training_step(batch, batch_idx)`` (see the module docstring for the batch)
    and may override the hooks ``predict_logits``, ``param_groups``, ``export_tensors`` and
    ``export_model_config``.
    """

    def __init__(self, cfg: Config, model: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else build_model(cfg.model)
        self.num_classes = int(cfg.model.num_classes)
        self.val_results: dict[str, Any] | None = None
        self._val_confusion: ExposureConfusion | None = None
        self._val_samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    # ---- hooks for recipes
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, C, H, W]`` for images ``[B, 3, H, W]`` in [0, 1] (`predict_logits`)."""
        return self.predict_logits(image)

    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Return the logits that validation scores; default ``self.model(image)``."""
        return self.model(image)

    def teacher_label(self, image: torch.Tensor) -> torch.Tensor | None:
        """Return the pseudo label ``[B,H,W]`` a self-training recipe's teacher gives validation images, or None
        (no teacher; the default). Validation scores it against the ground truth as the teacher's per-class
        accuracy over training (``val/teacher_acc/<class>``), the first thing to plot when a recipe does not help."""
        return None

    def param_groups(self) -> list[dict[str, Any]]:
        """Return the optimiser's parameter groups (each may carry ``lr_mult``); default: all trainable."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """Return the tensors written to ``checkpoints/*.safetensors``; default the segmenter's state_dict."""
        return self.model.state_dict()

    def export_model_config(self) -> dict[str, Any]:
        """Return the ``model`` metadata of exported checkpoints (rebuild kwargs of the exported network)."""
        return dict(self.model.config)

    def log_losses(self, total: torch.Tensor, **terms: torch.Tensor) -> torch.Tensor:
        """Log ``train/loss`` = `total`, every term as ``train/<name>`` and ``train/lr``; return `total`.

        A NaN/inf `total` stops training (`check_finite_losses`) before the optimizer step, so the weights and
        the last saved checkpoint stay as they were.
        """
        check_finite_losses(total, terms, int(self.trainer.global_step) + 1 if self._trainer is not None else None)
        batch_size = self.cfg.data.batch_size
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=batch_size)
        for name, value in terms.items():
            value = value.detach() if isinstance(value, torch.Tensor) else float(value)
            self.log(f"train/{name}", value, batch_size=batch_size)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]), batch_size=batch_size)
        return total

    # ---- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """SGD or AdamW over `param_groups` with the per-step poly schedule (see `poly_factor`)."""
        opt = self.cfg.optim
        groups = []
        for group in self.param_groups():
            group = dict(group)
            group["lr"] = opt.lr * float(group.pop("lr_mult", 1.0))
            groups.append(group)
        if opt.name == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
        else:
            optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay)
        factor = partial(poly_factor, max_steps=self.cfg.train.max_steps, power=opt.poly_power,
                         warmup_steps=opt.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ---- validation
    def on_validation_epoch_start(self) -> None:
        self._val_confusion = ExposureConfusion(self.num_classes, device=self.device)
        self._val_teacher_confusion = None
        self._val_samples = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image = batch["image"]
        logits = self.predict_logits(image)
        pred = logits.argmax(dim=1)
        label = masked_label(batch)
        self._val_confusion.update(pred, label, image.float())
        teacher = self.teacher_label(image)
        if teacher is not None:
            if self._val_teacher_confusion is None:
                self._val_teacher_confusion = ExposureConfusion(self.num_classes, device=self.device)
            self._val_teacher_confusion.update(teacher, label, image.float())
        keep = self.cfg.train.num_images - len(self._val_samples)
        if keep > 0 and self.trainer.is_global_zero:
            for i in range(min(keep, image.shape[0])):
                rgb = (image[i].float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                self._val_samples.append(_thumbnail(rgb, pred[i].to(torch.uint8).cpu().numpy(),
                                                    label[i].to(torch.uint8).cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        confusion = self._val_confusion.all_reduce()
        scores = segmentation_scores(confusion.total())
        exposure = exposure_scores(confusion)
        names = class_names_for(self.num_classes)
        per_class = {name: scores["per_class"][name]["iou"] for name in names}
        self.val_results = {
            "step": int(self.trainer.global_step),
            "mIoU": scores["mIoU"],
            "mEF1": exposure["mEF1"],
            "pixel_accuracy": scores["pixel_accuracy"],
            "pixels": scores["pixels"],
            "per_class_iou": per_class,
        }
        self.log("val/mIoU", finite(scores["mIoU"]), sync_dist=False)
        self.log("val/mEF1", finite(exposure["mEF1"]), sync_dist=False)
        self.log("val/pixel_accuracy", finite(scores["pixel_accuracy"]), sync_dist=False)
        for name, iou in per_class.items():  # NaN: the class is in neither ground truth nor prediction
            self.log(f"val/iou/{name.replace(' ', '_')}", float(iou), sync_dist=False)
        if self._val_teacher_confusion is not None:
            teacher = segmentation_scores(self._val_teacher_confusion.all_reduce().total())
            accuracy = {name: teacher["per_class"][name]["accuracy"] for name in names}
            precision = {name: teacher["per_class"][name]["precision"] for name in names}
            self.val_results.update(teacher_mIoU=teacher["mIoU"], teacher_pixel_accuracy=teacher["pixel_accuracy"],
                                    teacher_accuracy=accuracy, teacher_precision=precision)
            self.log("val/teacher_mIoU", finite(teacher["mIoU"]), sync_dist=False)
            for name, acc in accuracy.items():  # NaN: the class is not in the ground truth
                self.log(f"val/teacher_acc/{name.replace(' ', '_')}", float(acc), sync_dist=False)
        if self.trainer.is_global_zero and self._val_samples and not self.trainer.sanity_checking:
            self._write_samples()

    def _write_samples(self) -> None:
        rows = [np.concatenate([rgb, colorize(pred), colorize(gt)], axis=1) for rgb, pred, gt in self._val_samples]
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows]
        grid = np.concatenate(rows, axis=0)
        step = int(self.trainer.global_step)
        write_png(Path(self.trainer.default_root_dir) / "logs" / "images" / f"val_step{step:07d}.png", grid)
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/input|prediction|ground_truth", grid, step, dataformats="HWC")


def checkpoint_model_config(ref: str) -> dict[str, Any]:
    """Return the ``model`` metadata (architecture + options) of the model reference `ref`: a NightSeg
    checkpoint's JSON, or a published checkpoint converted on the fly (cached per reference and file time)."""
    path = Path(ref).expanduser()
    stamp = path.stat().st_mtime_ns if not is_reference(ref) and path.exists() else None
    return dict(_model_config(ref, stamp))


@functools.lru_cache(maxsize=8)
def _model_config(ref: str, stamp: int | None) -> dict[str, Any]:
    path = Path(ref).expanduser()
    meta = load_metadata(path) if not is_reference(ref) and is_nightseg_checkpoint(path) else read_checkpoint(ref)[1]
    model = meta.get("model")
    return dict(model) if isinstance(model, dict) else {}


def adopt_init_checkpoint_model(cfg: Config) -> None:
    """Make ``cfg.model`` the architecture ``method.init_checkpoint`` was saved for (in place; returns None).

    The checkpoint's architecture name and options (``input_norm``, builder options such as SegFormer's
    ``layer_norm_eps``) replace the recipe's, with one INFO line, so an imported model (DANNet's PSPNet,
    mmseg's ``pspnet_r101_v1c`` with its own normalisation) trains without the user restating them;
    ``model.pretrained`` goes off with a new architecture (the checkpoint replaces those weights). What the
    user set on the command line (``cfg.overridden_keys``) stays: a different ``model.name`` there is a
    one-line UserError naming both architectures.
    """
    ref = getattr(cfg.method, "init_checkpoint", None)
    if not ref:
        return
    recorded = checkpoint_model_config(str(ref))
    if isinstance(recorded.get("segmenter"), str):  # a recipe's wrapper (HRDA): the recipe wraps its segmenter again
        recorded = {"name": recorded["segmenter"], **(recorded.get("segmenter_options") or {})}
    name = recorded.get("name")
    if not isinstance(name, str):
        return
    explicit = getattr(cfg, "overridden_keys", frozenset())
    model = cfg.model
    if name != model.name and "model.name" in explicit:
        raise UserError(f"model.name={model.name}, but method.init_checkpoint={ref} holds a {name} model; drop "
                        "model.name (the checkpoint's architecture is used) or give a checkpoint of that model")
    architecture = {k: v for k, v in recorded.items() if k not in WRAPPER_KEYS}
    kept = {k: v for k, v in model.options.items()
            if k in WRAPPER_KEYS or (name == model.name and k not in architecture)}
    by_hand = {k: v for k, v in model.options.items() if f"model.options.{k}" in explicit}
    options = {**kept, **architecture, **by_hand}
    if name == model.name and options == model.options:
        return
    changes = [f"model.name {model.name} -> {name}"] if name != model.name else []
    changes += [f"model.options.{k}={v!r}" for k, v in options.items() if model.options.get(k) != v]
    if name != model.name and model.pretrained and "model.pretrained" not in explicit:
        model.pretrained = False  # the checkpoint replaces the ImageNet weights: nothing to download
        changes.append("model.pretrained false")
    model.name, model.options = name, options
    log.info("method.init_checkpoint=%s: training the architecture it was saved for (%s)", ref, ", ".join(changes))


def _thumbnail(rgb: np.ndarray, pred: np.ndarray, label: np.ndarray, height: int = 256) -> tuple[np.ndarray, ...]:
    """Return the image (area-resampled) and the two label maps (nearest) scaled to at most `height` rows."""
    h, w = label.shape
    if h <= height:
        return rgb, pred, label
    size = (max(1, round(w * height / h)), height)
    return (cv2.resize(rgb, size, interpolation=cv2.INTER_AREA),
            cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST),
            cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


def finite(value: float) -> float:
    """A NaN summary score (nothing labelled) is logged as 0 so that loggers and progress bars stay readable."""
    return 0.0 if value is None or math.isnan(value) else float(value)


def check_finite_losses(total: torch.Tensor, terms: dict[str, Any], step: int | None) -> None:
    """Raise a one-line UserError naming training step `step` and the first non-finite loss term when the
    total loss is NaN or inf; return None otherwise (one device sync per step)."""
    if bool(torch.isfinite(total.detach()).all()):
        return
    values = {name: float(v.detach().float().sum() if isinstance(v, torch.Tensor) else v) for name, v in terms.items()}
    bad = [(name, v) for name, v in values.items() if not math.isfinite(v)]
    term = f"loss term {bad[0][0]!r} is {bad[0][1]}" if bad else f"the total loss is {float(total.detach().sum())}"
    where = f"training step {step}" if step is not None else "training"
    raise UserError(f"{where}: {term}; stopped before the optimizer step, the last saved checkpoint and training "
                    "state are kept; lower optim.lr (or check the data), then rerun with --resume")
