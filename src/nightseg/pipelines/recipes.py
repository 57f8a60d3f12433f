"""Training a packaged recipe into a run folder and scoring its checkpoint: what the demo, NightLab and the
benchmarks build on. Every function resumes: a finished run is returned as it is."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

import nightseg
from nightseg.core.config import load_config
from nightseg.core.errors import TrainingInterrupted
from nightseg.data import build_dataset
from nightseg.engine import RunDir, train
from nightseg.inference import Predictor
from nightseg.pipelines.evaluate import evaluate_dataset

log = logging.getLogger("nightseg")

CONFIG_DIR = Path(nightseg.__file__).resolve().parent / "configs"


def train_recipe(config: str | Path, data: Path, run_dir: Path, steps: int, seed: int,
                 extra: list[str] = ()) -> Path:
    """Train the packaged CPU recipe `config` on the synthetic set `data`; return its final checkpoint.

    Resumable: a finished run is returned as it is, an interrupted one continues from its state.
    """
    run = RunDir(run_dir)
    if run.finished():
        log.info("%s: already trained (%s)", run_dir.name, run.last)
        return run.last
    # validation is done once at the end (`score_checkpoint`), not during training
    overrides = [f"data.root={data}", f"train.max_steps={steps}", f"seed={seed}",
                 "train.val_every=0", f"train.state_every={max(50, steps // 5)}", *extra]
    cfg = load_config(CONFIG_DIR / config, overrides)
    log.info("training %s: %s, %d steps, seed %d", run_dir.name, config, steps, seed)
    metrics = train(cfg, run_dir, resume=True)
    if not metrics.get("finished"):
        raise TrainingInterrupted(f"{run_dir}: training stopped at step {metrics.get('step')} of {steps}; "
                                  "rerun the same command to continue")
    return run.last


def _train_logged(log_file: str, *args: Any) -> None:
    """Entry point of a background training process: `train_recipe(*args)`, output appended to `log_file`."""
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    train_recipe(*args)


def start_background_training(log_file: Path, config: str | Path, data: Path, run_dir: Path, steps: int,
                              seed: int, extra: list[str]) -> multiprocessing.process.BaseProcess:
    """Start `train_recipe` in a new process (spawned, so it may start its own DataLoader workers) with its
    output in `log_file` and no progress bar; return the process (exit code 0 once the run is finished)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    process = multiprocessing.get_context("spawn").Process(
        target=_train_logged, args=(str(log_file), config, data, run_dir, steps, seed, [*extra, "train.progress=false"]),
        name=f"train-{run_dir.name}")
    process.start()
    return process


def score_checkpoint(checkpoint: Path, dataset_name: str, root: Path, split: str = "val",
                     limit: int | None = None) -> dict[str, Any]:
    """Return the `evaluate_dataset` scores (mIoU, per-class, mEF1, ...) of `checkpoint` on a dataset split."""
    segmenter = Predictor.from_checkpoint(checkpoint)
    dataset = build_dataset(dataset_name, root, split)
    return evaluate_dataset(segmenter, dataset, limit=limit, workers=1, progress=False)
