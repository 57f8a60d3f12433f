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
  exposure bin), summed over processes, giving mIoU, per-class IoU and mEF1 (EGNet paper). Logged as
  ``val/mIoU``, ``val/mEF1``, ``val/iou/<class>``; sample predictions (input | prediction | ground truth)
  go to TensorBoard and ``logs/images/``.
* **logging**: TensorBoard and CSV under ``RUN_DIR/logs``; every term passed to ``log_losses`` as
  ``train/<term>``, the total as ``train/loss``, the learning rate as ``train/lr``; a step progress bar.
* **checkpoints** (`RunCallback`, `nightseg.engine.state`): the resumable state every
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
import importlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from nightseg.core.config import Config, dump_config
from nightseg.core.io import atomic_path
from nightseg.core.training_state import state_step
from nightseg.data.streams import StreamData
from nightseg.engine.callbacks import RunCallback, StepProgressBar, TrainingStopped
from nightseg.engine.logs import ResumableCSVLogger
from nightseg.engine.run import RunDir, export, prepare_run
from nightseg.engine.state import SafeCheckpointIO
from nightseg.methods.base import SegmentationModule, adopt_init_checkpoint_model
from nightseg.models.registry import encoder_weights_from

log = logging.getLogger("nightseg.train")


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
    """Return the LightningModule of the config's method (``nightseg.methods.<name>.build(cfg)``): with the
    architecture ``method.init_checkpoint`` was saved for (`adopt_init_checkpoint_model`), and every encoder
    ImageNet-initialised from ``model.encoder_weights`` when that file is given (also those a recipe builds
    itself, e.g. HRDA's)."""
    adopt_init_checkpoint_model(cfg)
    module = importlib.import_module(f"nightseg.methods.{cfg.method.name}")
    with encoder_weights_from(cfg.model.encoder_weights, cfg.model.name):
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


def train(cfg: Config, run_dir: str | os.PathLike, resume: bool = False,
          callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Train the recipe `cfg` into `run_dir` and return the content of its ``metrics.json``.

    With `resume`, continue from ``run_dir/state`` (a fresh start when there is none yet). The result
    has ``finished`` False when SIGTERM / Ctrl-C stopped the run early (the state is saved).
    """
    adopt_init_checkpoint_model(cfg)  # before the resume check, which compares the model section too
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
