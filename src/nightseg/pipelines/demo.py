"""`nightseg demo`: ULCA end to end on the synthetic benchmark, on a CPU, in minutes.

1. generate the synthetic day/night set (`nightseg synth`, preset ``small``);
2. train Zero-DCE with the zero-reference losses on the synthetic night frames (no download: the
   official weights are not needed);
3. train three models with the packaged CPU recipes: source-only (synthetic day, Cityscapes layout),
   ULCA (every component on) and a night-supervised oracle (synthetic night, NightCity layout);
   the oracle trains in a second process next to the other two (log: ``runs/oracle.log``);
4. score each on synthetic night val (Dark Zurich layout) and day val (Cityscapes layout);
5. write ``report.md``, ``results.json`` and the pictures (`nightseg.pipelines.demo_report`), print the table,
   the checkpoint paths and the next commands to try with them.

Every stage is resumable: rerunning the same command skips finished stages and continues an
interrupted training run from its saved state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nightseg.core.classes import CLASS_NAMES
from nightseg.core.errors import UserError
from nightseg.core.io import atomic_path, list_images, write_json
from nightseg.engine import RunDir
from nightseg.pipelines.demo_report import write_pictures
from nightseg.pipelines.recipes import score_checkpoint, start_background_training, train_recipe
from nightseg.pipelines.relight import train_relight
from nightseg.synthetic import generator as synthetic

log = logging.getLogger("nightseg")



@dataclass(frozen=True)
class DemoModel:
    key: str
    title: str
    config: str  # path relative to CONFIG_DIR


MODELS = (
    DemoModel("source_only", "Source-only (day labels)", "cpu/supervised_cityscapes.yaml"),
    DemoModel("ulca", "ULCA", "cpu/ulca_full.yaml"),
    DemoModel("oracle", "Oracle (night labels)", "cpu/supervised_nightcity.yaml"),
)


@dataclass(frozen=True)
class DemoPlan:
    """How much work each stage does; `quick` is the CI-sized variant."""
    counts: dict[str, int]
    size: tuple[int, int]
    relight_epochs: int
    steps: dict[str, int]
    eval_limit: int | None


PLANS = {
    "full": DemoPlan(
        counts={"train": 300, "val": 60, "pairs": 300, "night_val": 60, "night_train": 300, "nightcity_val": 60},
        size=(128, 256), relight_epochs=1,
        steps={"source_only": 500, "ulca": 150, "oracle": 500}, eval_limit=None,
    ),
    "quick": DemoPlan(
        counts={"train": 60, "val": 16, "pairs": 60, "night_val": 16, "night_train": 60, "nightcity_val": 16},
        size=(128, 256), relight_epochs=1,
        steps={"source_only": 60, "ulca": 20, "oracle": 60}, eval_limit=None,
    ),
}


def train_relight_on_night(data: Path, out: Path, epochs: int, seed: int) -> Path:
    """Train (or finish training) Zero-DCE on the synthetic night frames of `data`; return the weights path."""
    weights = out / "zero_dce.safetensors"
    images = list_images(data / "dark_zurich" / "rgb_anon" / "train" / "night")
    train_relight(images, weights, epochs=epochs, size=128, batch_size=8, seed=seed, resume=True)  # no-op when done
    return weights


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Return the Markdown summary table (mIoU night/day, mEF1 night) and the per-class night IoU table."""
    lines = ["| model | night mIoU | night mEF1 | day mIoU |", "|---|---|---|---|"]
    for m in MODELS:
        r = results.get(m.key)
        if r:
            lines.append(f"| {m.title} | {_pct(r['night']['mIoU'])} | {_pct(r['night']['exposure']['mEF1'])} "
                         f"| {_pct(r['day']['mIoU'])} |")
    lines += ["", "Per-class IoU on synthetic night val:", "",
              "| class | " + " | ".join(m.key for m in MODELS if m.key in results) + " |",
              "|---|" + "---|" * sum(m.key in results for m in MODELS)]
    for name in CLASS_NAMES:
        values = [_pct(results[m.key]["night"]["per_class"][name]["iou"]) for m in MODELS if m.key in results]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def run_demo(out: str | Path = "nightseg-demo", quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run the demo into `out` and return ``{model_key: {"night": scores, "day": scores}}``."""
    plan = PLANS["quick" if quick else "full"]
    out = Path(out)
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = out / "data"
    log.info("[1/5] synthetic day/night scenes -> %s", data)
    synthetic.generate(data, preset="small", size=plan.size, seed=seed, counts=plan.counts, progress=True)
    log.info("[2/5] Zero-DCE relighting trained on the synthetic night frames")
    relight_weights = train_relight_on_night(data, out / "relight", plan.relight_epochs, seed)
    log.info("[3/5] training source-only, then ULCA; the night oracle alongside on the second core")
    # ULCA adapts the source-only model (as DANNet does) instead of starting from scratch, so those two run
    # in turn; the oracle needs neither and trains in a second process (one thread each: the same weights
    # as when trained alone)
    runs = {m.key: (m.config, data, out / "runs" / m.key, plan.steps[m.key], seed, ["train.cpu_threads=1"])
            for m in MODELS}
    oracle_log = out / "runs" / "oracle.log"
    oracle = start_background_training(oracle_log, *runs["oracle"])
    checkpoints: dict[str, Path] = {}
    try:
        checkpoints["source_only"] = train_recipe(*runs["source_only"])
        *ulca, extra = runs["ulca"]
        checkpoints["ulca"] = train_recipe(*ulca, [*extra, f"method.relight.weights={relight_weights}",
                                                   f"method.init_checkpoint={checkpoints['source_only']}"])
        log.info("waiting for the oracle (log: %s)", oracle_log)
        oracle.join()
    finally:
        if oracle.is_alive():  # interrupted: stop it too (its saved state lets the rerun continue)
            oracle.terminate()
            oracle.join()
    if oracle.exitcode != 0:
        raise UserError(f"{oracle_log}: training the oracle failed (exit code {oracle.exitcode}); the log says why, "
                        "rerun the demo to continue")
    checkpoints["oracle"] = RunDir(runs["oracle"][2]).last
    checkpoints = {m.key: checkpoints[m.key] for m in MODELS}
    log.info("[4/5] scoring on synthetic night val (Dark Zurich layout) and day val (Cityscapes layout)")
    results = {
        key: {"night": score_checkpoint(ckpt, "dark_zurich", data / "dark_zurich", "val", plan.eval_limit),
              "day": score_checkpoint(ckpt, "cityscapes", data / "cityscapes", "val", plan.eval_limit)}
        for key, ckpt in checkpoints.items()
    }
    log.info("[5/5] report -> %s", out / "report.md")
    titles = {m.key: m.title for m in MODELS}
    pictures = write_pictures(data, checkpoints, titles, relight_weights, results, out)
    table = format_table(results)
    elapsed = time.perf_counter() - started
    write_json(out / "results.json", {"plan": "quick" if quick else "full", "seed": seed,
                                       "seconds": round(elapsed), "results": results})
    report = (f"# NightSeg demo ({'quick' if quick else 'full'}, seed {seed})\n\n"
              "Synthetic benchmark: trained on labelled synthetic day scenes (source) and unlabelled day/night "
              "pairs (target), scored on labelled synthetic night val. Numbers are IoU/EF1 in %.\n\n"
              f"{table}\n\n{pictures}")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report)
    print(table)
    print(f"\nreport: {out / 'report.md'}  ({elapsed / 60:.1f} min)")
    print(next_steps(checkpoints, data))
    return results


def next_steps(checkpoints: dict[str, Path], data: Path) -> str:
    """Return the closing text of the demo: where each checkpoint is and the next commands to try with them."""
    ulca = checkpoints["ulca"]
    lines = ["", "checkpoints:"]
    lines += [f"  {m.title}: {checkpoints[m.key]}" for m in MODELS if m.key in checkpoints]
    night_val = data / "dark_zurich" / "rgb_anon" / "val" / "night"
    lines += ["", "next, with the ULCA model:",
              f"  nightseg predict {ulca} YOUR_IMAGES --out predictions     (images, folders or videos; e.g. {night_val})",
              f"  nightseg evaluate {ulca} --dataset dark_zurich --root {data / 'dark_zurich'}",
              f"  nightseg serve {ulca} --images {night_val}     (a web page on http://127.0.0.1:7860)"]
    return "\n".join(lines)
