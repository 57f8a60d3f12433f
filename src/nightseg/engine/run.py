"""The run folder of one training run, its resume check, and the checkpoints exported into it.

``RUN_DIR/config.yaml`` (resolved recipe), ``checkpoints/{last,best}.safetensors`` (+ .json),
``state/`` (resume), ``logs/{tensorboard,csv,images}/``, ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nightseg.core.checkpoint import save_checkpoint
from nightseg.core.config import Config, config_diff, load_config
from nightseg.core.errors import UserError
from nightseg.core.io import json_safe
from nightseg.core.training_state import STATE_FILE, state_step
from nightseg.methods.base import SegmentationModule

log = logging.getLogger("nightseg.train")

STREAMS = ("source", "target")
RESUME_MAY_CHANGE = ("train.max_steps", "train.progress", "train.log_every", "train.val_every",
                     "train.state_every", "train.num_images", "train.cpu_threads", "data.workers", "data.root",
                     "data.source.root", "data.target.root", "data.val.root")
"""Keys that may differ between a run's saved config.yaml and the config given with --resume."""


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


def export(module: SegmentationModule, path: Path, step: int, metrics: dict[str, Any] | None) -> Path:
    """Write the recipe's exported weights to `path` (.safetensors + .json metadata), atomically."""
    metadata = {
        "model": module.export_model_config(),
        "recipe": module.cfg.recipe,
        "method": module.cfg.method.name,
        "config": module.cfg.to_dict(),
        "step": int(step),
        "metrics": json_safe(metrics) if metrics else None,
    }
    return save_checkpoint(path, module.export_tensors(), metadata)
