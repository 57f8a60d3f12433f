"""What happens around every training step: seeding, saving the state, signals, progress, metrics."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
from functools import partial
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from nightseg.core.config import Config
from nightseg.core.io import json_safe, write_json
from nightseg.core.seeding import reseed, step_seed
from nightseg.core.training_state import STATE_FILE
from nightseg.engine.logs import truncate_csv
from nightseg.engine.run import RunDir, export
from nightseg.methods.base import SegmentationModule, finite

log = logging.getLogger("nightseg.train")


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
            truncate_csv(self.run.logs / "csv" / "metrics.csv", trainer.global_step)
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
        # the per-class scores (and a self-training teacher's) stay in the history for plots over training
        summary = json_safe({k: results[k] for k in ("step", "mIoU", "mEF1", "pixel_accuracy", "per_class_iou",
                                          "teacher_mIoU", "teacher_accuracy", "teacher_precision") if k in results})
        # (NaN, a class in neither ground truth nor prediction, is stored as None: histories compare equal)
        self.history = [h for h in self.history if h["step"] != step] + [summary]
        improved = not math.isnan(results["mIoU"]) and (self.best["mIoU"] is None or results["mIoU"] > self.best["mIoU"])
        if improved:
            self.best = {"mIoU": results["mIoU"], "step": step}
        if trainer.is_global_zero:
            if improved:
                export(pl_module, self.run.checkpoints / "best.safetensors", step, results)
            log.info("step %d: val mIoU %.2f  mEF1 %.2f", step, 100 * finite(results["mIoU"]),
                     100 * finite(results["mEF1"]))
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
            write_json(self.run.metrics, json_safe(content))
        return content
