"""The training engine: everything around a recipe's ``training_step``, on Lightning.

A recipe (``nightseg.methods.<name>``) is a module with

* ``Params``: a dataclass of the keys of the recipe's ``method:`` config section (incl. ``name``);
* ``build(cfg: Config) -> SegmentationModule``: returns its LightningModule, a subclass of
  `SegmentationModule` that implements ``training_step(batch, batch_idx)`` and returns
  ``self.log_losses(total, term1=..., term2=...)``.

The engine supplies the rest, the same for every recipe:

* **data** (`StreamData`): ``batch = {"source": sample_batch, "target": sample_batch}`` (``target``
  only when ``data.target.dataset`` is set), each a collated dict of the data contract (``image``
  float [B,3,H,W] in [0,1], ``label`` int64 [B,H,W], ...). Iteration-based: an infinite
  `StepSampler` hands out global sample *positions*; position ``p`` of a stream is sample
  ``perm_e[p mod N]`` of epoch ``e = p // N`` with a permutation seeded by ``(seed, stream, e)``, and the
  random augmentation of that sample is seeded by ``(seed, stream, p)``. With DDP, rank ``r`` of ``W`` takes
  positions ``(step*W + r)*B ... + B-1``. The data order is therefore a pure function of the step, which
  is what makes resume exact (and independent of DataLoader workers).
* **randomness in the step**: before every training step the global torch/numpy/python generators are
  re-seeded from ``(seed, step, rank)`` (`step_seed`), so recipe-side randomness (NightMix's class
  choice, consistency noise, dropout) continues identically after a resume without saving RNG states.
* **optimisation** (`SegmentationModule.configure_optimizers`): SGD (momentum, weight decay) or AdamW
  over ``param_groups()``, and the per-step poly schedule ``lr = base * (1 - step/max_steps) ** power``
  (`poly_factor`) with optional linear warm-up; a group's ``lr_mult`` scales its base lr.
* **validation** every ``train.val_every`` steps and at the end, on ``data.val`` (sharded across ranks
  without padding): ``predict_logits(image)`` -> argmax -> `ExposureConfusion` (one confusion matrix per
  exposure bin), summed over processes, giving mIoU, per-class IoU and mEF1 (seed 001). Logged as
  ``val/mIoU``, ``val/mEF1``, ``val/iou/<class>``; sample predictions (input | prediction | ground truth)
  go to TensorBoard and ``logs/images/``.
* **logging**: TensorBoard and CSV under ``RUN_DIR/logs``; every term passed to ``log_losses`` as
  ``train/<term>``, the total as ``train/loss``, the learning rate as ``train/lr``; a step progress bar.
* **checkpoints** (`RunCallback`, `nightseg.training_checkpoints`): the resumable state every
  ``train.state_every`` steps, at the end, and on SIGTERM / Ctrl-C (at the next step boundary; a second
  Ctrl-C aborts at once); ``checkpoints/last`` with each state and ``checkpoints/best`` (best val mIoU).
* **devices**: DDP across GPUs and nodes (gloo on CPU), AMP (bf16-mixed, or 16-mixed where bf16 is not
  supported) on GPUs, 32-bit and deterministic algorithms on the CPU.

Extension points of `SegmentationModule` a recipe may override (all optional):
``predict_logits(image)`` (what validation and export score, e.g. relight first), ``param_groups()``
(which parameters train, with per-group ``lr_mult``), ``export_tensors()`` / ``export_model_config()``
(what ``checkpoints/*.safetensors`` hold; default: the segmenter ``self.model``).

Run folder: ``RUN_DIR/config.yaml`` (resolved recipe), ``checkpoints/{last,best}.safetensors`` (+ .json),
``state/`` (resume), ``logs/{tensorboard,csv,images}/``, ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import logging
import math
import os
import random
import signal
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from nightseg.checkpoint import save_checkpoint
from nightseg.classes import IGNORE_INDEX, colorize
from nightseg.config import Config, config_diff, dump_config, load_config
from nightseg.errors import UserError
from nightseg.evaluation.exposure import ExposureConfusion, exposure_scores
from nightseg.evaluation.metrics import class_names_for, segmentation_scores
from nightseg.io import atomic_path, write_json, write_png
from nightseg.training_checkpoints import STATE_FILE, SafeCheckpointIO, state_step

log = logging.getLogger("nightseg.train")

STREAMS = ("source", "target")
RESUME_MAY_CHANGE = ("train.max_steps", "train.progress", "train.log_every", "train.val_every",
                     "train.state_every", "train.num_images", "train.cpu_threads", "data.workers", "data.root",
                     "data.source.root", "data.target.root", "data.val.root")
"""Keys that may differ between a run's saved config.yaml and the config given with --resume."""


# --------------------------------------------------------------------------------------------- run folder
@dataclass(frozen=True)
class RunDir:
    """The files of one training run (see the module docstring)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def last(self) -> Path:
        """The exported final checkpoint, ``checkpoints/last.safetensors``."""
        return self.checkpoints / "last.safetensors"

    def finished(self) -> bool:
        """Return True when the run trained all its steps (its last checkpoint exists and metrics.json says so)."""
        return self.last.is_file() and self.metrics.is_file() and bool(json.loads(self.metrics.read_text()).get("finished"))


# --------------------------------------------------------------------------------------------- seeding
def step_seed(seed: int, *counters: int) -> int:
    """Return a 63-bit seed derived from `seed` and integer `counters` (NumPy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(c) for c in counters)]).generate_state(2)
    return int((int(state[0]) << 31 | int(state[1]) >> 1) & 0x7FFFFFFFFFFFFFFF)


def reseed(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's and Python's global generators from one 63-bit `seed`."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global generators seeded by `seed`, then restore their previous states."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    reseed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


# --------------------------------------------------------------------------------------------- data
class StepStreams(Dataset):
    """Maps a global sample position to one sample of every stream: ``{name: sample}``.

    Position ``p`` of a stream of ``N`` samples is its sample ``perm_e[p % N]`` in epoch ``e = p // N``;
    the permutation is seeded by ``(seed, stream index, e)`` and the sample's random augmentation by
    ``(seed, stream index, p)``. So the data seen at each step is fixed by the seed alone.
    """

    def __init__(self, streams: dict[str, Dataset], seed: int) -> None:
        if not streams:
            raise ValueError("StepStreams needs at least one stream")
        self.streams = streams
        self.seed = int(seed)
        self._perms: dict[tuple[int, int], torch.Tensor] = {}

    def __len__(self) -> int:  # informative only: the sampler is infinite
        return max(len(ds) for ds in self.streams.values())

    def _perm(self, stream: int, n: int, epoch: int) -> torch.Tensor:
        key = (stream, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            gen = torch.Generator().manual_seed(step_seed(self.seed, 1, stream, epoch))
            self._perms[key] = torch.randperm(n, generator=gen)
        return self._perms[key]

    def __getitem__(self, position: int) -> dict[str, Any]:
        out = {}
        for i, (name, dataset) in enumerate(self.streams.items()):
            n = len(dataset)
            epoch, offset = divmod(int(position), n)
            index = int(self._perm(i, n, epoch)[offset])
            with seeded(step_seed(self.seed, 2, i, int(position))):
                out[name] = dataset[index]
        return out


class StepSampler(Sampler[int]):
    """Infinite sampler of global positions for one rank, starting at training step `start_step`.

    Step ``s`` of rank ``r`` (of ``world_size``) gets positions ``(s*W + r)*B`` to ``(s*W + r)*B + B - 1``.
    """

    def __init__(self, batch_size: int, start_step: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.batch_size = int(batch_size)
        self.start_step = int(start_step)
        self.rank = int(rank)
        self.world_size = int(world_size)

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            base = (step * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            step += 1


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, rank + 2W, ...`` of a dataset of `n` samples: every sample exactly once
    across ranks (no padding, so the summed confusion matrix equals a single-process one)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(int(rank), int(n), int(world_size)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _factory(name: str, what: str) -> Any:
    """Import ``package.module:attribute``; UserError if it does not exist."""
    module_name, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{what} {name!r}: cannot import it ({exc})") from None


def build_transform(stream: Any, train: bool) -> Any:
    """Return the joint transform of a stream config: resize, then (training) random scale-crop, resize of
    the crop to ``out_size``, and flip (`nightseg.data.transforms`; random draws from torch's generator)."""
    from torchvision.transforms import v2

    from nightseg.data.transforms import RandomScaleCrop, Resize

    steps: list[Any] = []
    if stream.resize is not None:
        steps.append(Resize(list(stream.resize)))
    if train:
        if stream.crop is not None:
            steps.append(RandomScaleCrop(list(stream.crop), tuple(stream.scale)))
        elif tuple(stream.scale) != (1.0, 1.0):
            raise UserError(f"data stream {stream.dataset}: 'scale' {stream.scale} needs a 'crop' size as well")
        if stream.out_size is not None:
            steps.append(Resize(list(stream.out_size)))
        if stream.flip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
    return v2.Compose(steps) if steps else None


def build_stream_dataset(stream: Any, data_root: str, train: bool) -> Dataset:
    """Return the dataset of one stream config (`nightseg.data.build_dataset` or a ``module:factory``)."""
    root = Path(data_root) / stream.root if stream.root is not None else Path(data_root)  # absolute root stays
    transform = build_transform(stream, train)
    if ":" in stream.dataset:
        dataset = _factory(stream.dataset, "dataset")(root, stream.split, transform=transform, **stream.options)
    else:
        from nightseg.data import build_dataset

        dataset = build_dataset(stream.dataset, root, stream.split, transform=transform, **stream.options)
    if stream.limit is not None and stream.limit < len(dataset):
        dataset = Subset(dataset, range(stream.limit))
    return dataset


class StreamData(L.LightningDataModule):
    """Training streams and validation set of a config as Lightning dataloaders (see `StepStreams`)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set: StepStreams | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str) -> None:
        data = self.cfg.data
        if stage == "fit" and self.train_set is None:
            streams = {name: build_stream_dataset(getattr(data, name), data.root, train=True)
                       for name in STREAMS if getattr(data, name).dataset is not None}
            self.train_set = StepStreams(streams, self.cfg.seed)
        if self.val_set is None and data.val.dataset is not None:
            self.val_set = build_stream_dataset(data.val, data.root, train=False)

    def _loader(self, dataset: Dataset, sampler: Sampler, batch_size: int, persistent: bool) -> DataLoader:
        workers = self.cfg.data.workers
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=persistent and workers > 0,
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = StepSampler(self.cfg.data.batch_size, trainer.global_step, trainer.global_rank, trainer.world_size)
        return self._loader(self.train_set, sampler, self.cfg.data.batch_size, persistent=False)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        if len(self.val_set) < self.trainer.world_size:  # every rank must validate (the reduction is collective)
            raise UserError(f"data.val: {len(self.val_set)} validation images for {self.trainer.world_size} "
                            "processes; each process needs at least one")
        sampler = ShardSampler(len(self.val_set), self.trainer.global_rank, self.trainer.world_size)
        return self._loader(self.val_set, sampler, self.cfg.data.val_batch_size, persistent=True)


def masked_label(sample: dict[str, Any]) -> torch.Tensor:
    """Return the sample batch's ``label`` with pixels of its ``invalid`` mask (if any) set to 255."""
    label = sample["label"]
    if "invalid" in sample:
        label = label.masked_fill(sample["invalid"].to(torch.bool), IGNORE_INDEX)
    return label


# --------------------------------------------------------------------------------------------- model
def build_model(model_cfg: Any) -> nn.Module:
    """Return the segmenter of a model config (`nightseg.models.build_segmenter` or ``module:factory``)."""
    if ":" in model_cfg.name:
        factory = _factory(model_cfg.name, "model")
        model = factory(num_classes=model_cfg.num_classes, pretrained=model_cfg.pretrained, **model_cfg.options)
    else:
        from nightseg.models import build_segmenter

        model = build_segmenter(model_cfg.name, num_classes=model_cfg.num_classes,
                                pretrained=model_cfg.pretrained, **model_cfg.options)
    if not hasattr(model, "config"):
        model.config = {"name": model_cfg.name, "num_classes": model_cfg.num_classes, **model_cfg.options}
    return model


def poly_factor(step: int, max_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """Return the learning-rate multiplier at optimizer step `step` (0-based): ``(1 - step/max_steps)**power``.

    The seeds' "poly" policy (DANNet / seed 000: power 0.9, updated every iteration); with
    `warmup_steps` > 0 the factor first rises linearly from ``1/warmup_steps`` to 1.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1.0 - step / max_steps) ** power


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
        """Log ``train/loss`` = `total`, every term as ``train/<name>`` and ``train/lr``; return `total`."""
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
        self._val_samples = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image = batch["image"]
        logits = self.predict_logits(image)
        pred = logits.argmax(dim=1)
        label = masked_label(batch)
        self._val_confusion.update(pred, label, image.float())
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
        self.log("val/mIoU", _finite(scores["mIoU"]), sync_dist=False)
        self.log("val/mEF1", _finite(exposure["mEF1"]), sync_dist=False)
        self.log("val/pixel_accuracy", _finite(scores["pixel_accuracy"]), sync_dist=False)
        for name, iou in per_class.items():  # NaN: the class is in neither ground truth nor prediction
            self.log(f"val/iou/{name.replace(' ', '_')}", float(iou), sync_dist=False)
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


def _thumbnail(rgb: np.ndarray, pred: np.ndarray, label: np.ndarray, height: int = 256) -> tuple[np.ndarray, ...]:
    """Return the image (area-resampled) and the two label maps (nearest) scaled to at most `height` rows."""
    h, w = label.shape
    if h <= height:
        return rgb, pred, label
    size = (max(1, round(w * height / h)), height)
    return (cv2.resize(rgb, size, interpolation=cv2.INTER_AREA),
            cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST),
            cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


def _finite(value: float) -> float:
    """A NaN summary score (nothing labelled) is logged as 0 so that loggers and progress bars stay readable."""
    return 0.0 if value is None or math.isnan(value) else float(value)


# --------------------------------------------------------------------------------------------- callbacks
class StepProgressBar(TQDMProgressBar):
    """A progress bar over optimizer steps (``step/max_steps``) instead of Lightning's per-epoch batches."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.n = bar.initial = trainer.global_step
        bar.set_description("train")
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = trainer.global_step
        if self.train_progress_bar is not None and self._should_update(n, trainer.max_steps):
            self.train_progress_bar.n = n
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            self.train_progress_bar.refresh()

    def init_validation_tqdm(self) -> Any:
        bar = super().init_validation_tqdm()
        bar.set_description("validate")
        return bar


class TrainingStopped(Exception):
    """Raised out of ``trainer.fit`` after SIGTERM / Ctrl-C once the training state is saved."""


class RunCallback(L.Callback):
    """Seeds each step, saves the training state, exports checkpoints and metrics, handles SIGTERM/Ctrl-C."""

    def __init__(self, cfg: Config, run: RunDir) -> None:
        self.cfg = cfg
        self.run = run
        self.best: dict[str, Any] = {"mIoU": None, "step": None}
        self.history: list[dict[str, Any]] = []
        self.latest: dict[str, Any] | None = None  # the last validation's full results
        self.stop_requested = False
        self.interrupted = False
        self._save_after_validation = False
        self._stop_pending = False
        self.last_saved_step: int | None = None
        self.last_val_step: int | None = None
        self._forwarded = False

    # ---- state of this callback inside the training state
    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "history": list(self.history), "last_val_step": self.last_val_step,
                "latest": self.latest}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", self.best))
        self.history = list(state_dict.get("history", []))
        self.last_val_step = state_dict.get("last_val_step")
        self.latest = state_dict.get("latest")

    # ---- signals: stop at the next step boundary
    def _on_signal(self, trainer: L.Trainer, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.stop_requested:
            raise KeyboardInterrupt
        if not self.stop_requested:
            name = signal.Signals(signum).name
            log.warning("%s received: finishing this step and saving the training state "
                        "(Ctrl-C again to abort without saving)", name)
        self.stop_requested = True
        launcher = trainer.strategy.launcher
        if signum == signal.SIGTERM and not self._forwarded and launcher is not None and hasattr(launcher, "procs"):
            self._forwarded = True
            launcher.kill(signal.SIGTERM)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and trainer.global_step > 0:
            _truncate_csv(self.run.logs / "csv" / "metrics.csv", trainer.global_step)
        # Lightning registered its own SIGTERM handler just before; ours replaces it for the duration of fit
        # (Lightning's signal connector restores the previous handlers at teardown).
        if os.name != "nt":
            handler = partial(self._on_signal, trainer)
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(signal.SIGTERM, lambda s, f: handler(s, f))
                signal.signal(signal.SIGINT, lambda s, f: handler(s, f))

    # ---- per step
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._leave_if_stopping(trainer)
        reseed(step_seed(self.cfg.seed, 3, trainer.global_step, trainer.global_rank))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._leave_if_stopping(trainer)

    def _leave_if_stopping(self, trainer: L.Trainer) -> None:
        if self._stop_pending:
            self.interrupted = True
            raise TrainingStopped(f"stopped by a signal at step {trainer.global_step}; the training state is saved")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        stop = self.stop_requested
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            # save now; leave at the next hook, once Lightning has sent this step's losses to the loggers
            self.save_state(trainer, pl_module)
            self._stop_pending = True
            return
        every = self.cfg.train.state_every
        if (every and step % every == 0) or step >= trainer.max_steps:
            if self.validates_at(step):
                self._save_after_validation = True  # so that the state includes this step's validation
            else:
                self.save_state(trainer, pl_module)

    def validates_at(self, step: int) -> bool:
        """Whether Lightning validates right after training step `step` (``val_check_interval`` steps)."""
        every = self.cfg.train.val_every
        return bool(every) and self.cfg.data.val.dataset is not None and step % every == 0

    def save_state(self, trainer: L.Trainer, pl_module: SegmentationModule) -> None:
        """Write the resumable state (all ranks must call this) and ``checkpoints/last`` (rank 0)."""
        trainer.save_checkpoint(self.run.state / STATE_FILE)
        self.last_saved_step = trainer.global_step
        for logger in trainer.loggers:  # logs on disk now match the state (see `_truncate_csv` for the rest)
            logger.save()
        if trainer.is_global_zero:
            export(pl_module, self.run.last, trainer.global_step, self.latest)

    # ---- validation results
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = pl_module.val_results
        if trainer.sanity_checking or results is None:
            return
        step = int(trainer.global_step)
        self.last_val_step = step
        self.latest = results
        summary = {k: results[k] for k in ("step", "mIoU", "mEF1", "pixel_accuracy")}
        self.history = [h for h in self.history if h["step"] != step] + [summary]
        improved = not math.isnan(results["mIoU"]) and (self.best["mIoU"] is None or results["mIoU"] > self.best["mIoU"])
        if improved:
            self.best = {"mIoU": results["mIoU"], "step": step}
        if trainer.is_global_zero:
            if improved:
                export(pl_module, self.run.checkpoints / "best.safetensors", step, results)
            log.info("step %d: val mIoU %.2f  mEF1 %.2f", step, 100 * _finite(results["mIoU"]),
                     100 * _finite(results["mEF1"]))
            self.write_metrics(trainer, pl_module, finished=False)
        if self._save_after_validation and trainer.state.fn == "fit":
            self._save_after_validation = False
            self.save_state(trainer, pl_module)

    def write_metrics(self, trainer: L.Trainer, pl_module: SegmentationModule, finished: bool) -> dict[str, Any]:
        """Write ``metrics.json`` (rank 0) and return its content."""
        content = {
            "recipe": self.cfg.recipe,
            "method": self.cfg.method.name,
            "step": int(trainer.global_step),
            "max_steps": int(self.cfg.train.max_steps),
            "finished": finished,
            "interrupted": self.interrupted,
            "val": self.latest,
            "best": self.best,
            "history": self.history,
        }
        if trainer.is_global_zero:
            write_json(self.run.metrics, _json_safe(content))
        return content


def _truncate_csv(path: Path, step: int) -> None:
    """Drop the rows a killed run logged after its last saved state (``step`` column >= `step`)."""
    if not path.is_file():
        return
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        fields = reader.fieldnames or []
    kept = [row for row in rows if not str(row.get("step", "")).isdigit() or int(row["step"]) < step]
    if "step" in fields and len(kept) != len(rows):
        with atomic_path(path) as tmp, tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)


def _json_safe(obj: Any) -> Any:
    """NaN -> None so that metrics.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def export(module: SegmentationModule, path: Path, step: int, metrics: dict[str, Any] | None) -> Path:
    """Write the recipe's exported weights to `path` (.safetensors + .json metadata), atomically."""
    metadata = {
        "model": module.export_model_config(),
        "recipe": module.cfg.recipe,
        "method": module.cfg.method.name,
        "config": module.cfg.to_dict(),
        "step": int(step),
        "metrics": _json_safe(metrics) if metrics else None,
    }
    return save_checkpoint(path, module.export_tensors(), metadata)


# --------------------------------------------------------------------------------------------- trainer
class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed run continues it instead."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` whose ``metrics.csv`` survives a resume (rows after the resumed step are dropped first)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def resolve_devices(cfg: Config) -> dict[str, Any]:
    """Return the Trainer's accelerator, devices, strategy, precision and determinism for a config."""
    t = cfg.train
    accelerator = t.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    on_gpu = accelerator in ("gpu", "cuda")
    devices: int | str = t.devices
    if devices == "auto":
        devices = "auto" if on_gpu else 1
    processes = (torch.cuda.device_count() if on_gpu and devices == "auto" else int(devices)) * t.num_nodes
    strategy = t.strategy
    if strategy == "auto":
        strategy = "ddp" if processes > 1 else "auto"
    precision = t.precision
    if precision == "auto":
        if on_gpu:
            precision = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            precision = "32-true"
    deterministic = t.deterministic
    if deterministic == "auto":
        deterministic = not on_gpu
    return {"accelerator": accelerator, "devices": devices, "num_nodes": t.num_nodes, "strategy": strategy,
            "precision": precision, "deterministic": deterministic, "processes": processes}


def build_trainer(cfg: Config, run: RunDir, callbacks: Sequence[L.Callback] = ()) -> tuple[L.Trainer, RunCallback]:
    """Return the Lightning Trainer for `cfg` writing into `run`, and its `RunCallback`."""
    dev = resolve_devices(cfg)
    t = cfg.train
    run_callback = RunCallback(cfg, run)
    all_callbacks: list[L.Callback] = [run_callback, *callbacks]
    if t.progress:
        all_callbacks.append(StepProgressBar(refresh_rate=1 if t.max_steps <= 1000 else 10))
    validate = t.val_every > 0 and cfg.data.val.dataset is not None
    loggers = [
        TensorBoardLogger(str(run.logs), name="tensorboard", version="", default_hp_metric=False),
        ResumableCSVLogger(str(run.logs), name="csv", version=""),
    ]
    trainer = L.Trainer(
        accelerator=dev["accelerator"],
        devices=dev["devices"],
        num_nodes=dev["num_nodes"],
        strategy=dev["strategy"],
        precision=dev["precision"],
        max_steps=t.max_steps,
        max_epochs=-1,
        val_check_interval=t.val_every if validate else None,
        check_val_every_n_epoch=None,
        limit_val_batches=None if validate else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every,
        logger=loggers,
        callbacks=all_callbacks,
        enable_progress_bar=t.progress,
        enable_checkpointing=False,
        enable_model_summary=False,
        plugins=[SafeCheckpointIO()],
        use_distributed_sampler=False,
        gradient_clip_val=cfg.optim.grad_clip,
        benchmark=dev["accelerator"] != "cpu" and dev["deterministic"] is False,
        default_root_dir=str(run.root),
    )
    return trainer, run_callback


def build_module(cfg: Config) -> SegmentationModule:
    """Return the LightningModule of the config's method (``nightseg.methods.<name>.build(cfg)``)."""
    module = importlib.import_module(f"nightseg.methods.{cfg.method.name}")
    return module.build(cfg)


def env_rank() -> int:
    """Return this process's global rank from the launcher's environment (0 when not launched by one)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        value = os.environ.get(var)
        if value not in (None, "", "0"):
            return int(value)
    return 0


@contextlib.contextmanager
def _determinism(enabled: bool | str, threads: int | None) -> Iterator[None]:
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    previous_threads = torch.get_num_threads()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=enabled == "warn")
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(previous_threads)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pattern in (".*does not have many workers.*", ".*infinite.*", ".*Experiment logs directory.*",
                        ".*is an invalid version and will be ignored.*", ".*exists and is not empty.*",
                        ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*", ".*sync_dist=True.*"):
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def prepare_run(cfg: Config, run_dir: str | os.PathLike, resume: bool) -> tuple[RunDir, Path | None]:
    """Check the run folder and return it with the state to resume from (None: start fresh).

    A folder that already holds a training state needs `resume`; with `resume` the config must match the
    run's ``config.yaml`` except for the keys in `RESUME_MAY_CHANGE`.
    """
    run = RunDir(Path(run_dir))
    step = state_step(run.state)
    if step is not None and not resume:
        raise UserError(f"{run.root}: this run folder already holds a training state (step {step}); "
                        "pass --resume to continue it or choose another --out")
    if resume and step is not None and run.config.is_file():
        saved = load_config(run.config)
        changed = [k for k in config_diff(saved, cfg) if k not in RESUME_MAY_CHANGE and k != "recipe"]
        if changed:
            raise UserError(f"{run.config}: the config given differs from the run's at {', '.join(changed[:6])}; "
                            "resume with the same recipe or train into a new --out folder")
    if resume and step is None:
        log.info("%s: no training state yet, starting from step 0", run.root)
    return run, (run.state / STATE_FILE if step is not None else None)


def train(cfg: Config, run_dir: str | os.PathLike, resume: bool = False,
          callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Train the recipe `cfg` into `run_dir` and return the content of its ``metrics.json``.

    With `resume`, continue from ``run_dir/state`` (a fresh start when there is none yet). The result
    has ``finished`` False when SIGTERM / Ctrl-C stopped the run early (the state is saved).
    """
    run, ckpt_path = prepare_run(cfg, run_dir, resume)
    dev = resolve_devices(cfg)
    with _quiet_lightning(), _determinism(dev["deterministic"], cfg.train.cpu_threads):
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        data = StreamData(cfg)
        data.setup("fit")  # bad data roots fail here, before anything is written
        module = build_module(cfg)
        if env_rank() == 0:
            run.root.mkdir(parents=True, exist_ok=True)
            with atomic_path(run.config) as tmp:
                tmp.write_text(dump_config(cfg))
        trainer, run_callback = build_trainer(cfg, run, callbacks)
        if ckpt_path is not None:
            log.info("resuming %s from step %d", run.root, state_step(run.state))
        started = time.perf_counter()
        with contextlib.suppress(TrainingStopped):
            trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
        if run_callback.interrupted:
            if trainer.is_global_zero:
                log.warning("stopped at step %d; the training state is saved: continue with --resume",
                            trainer.global_step)
            return run_callback.write_metrics(trainer, module, finished=False)
        if run_callback.last_saved_step != trainer.global_step:
            run_callback.save_state(trainer, module)
        validate = cfg.train.val_every > 0 and cfg.data.val.dataset is not None
        if validate and run_callback.last_val_step != trainer.global_step and not run_callback.stop_requested:
            trainer.validate(module, datamodule=data, verbose=False)
        if trainer.is_global_zero:
            export(module, run.last, trainer.global_step, run_callback.latest)
        metrics = run_callback.write_metrics(trainer, module, finished=trainer.global_step >= cfg.train.max_steps)
        if trainer.is_global_zero:
            log.info("trained %s for %d steps in %.0f s -> %s", cfg.recipe, trainer.global_step,
                     time.perf_counter() - started, run.root)
        return metrics
