"""The synthetic benchmark of ULCA (issue 6): source-only, each Table-3 row, full ULCA and the oracle,
over several seeds, scored on synthetic night val and day val. Prints a Markdown table (mean +- std)
and writes every score to ``OUT/results.json``.

    python bench/synthetic_benchmark.py --out runs/benchmark --seeds 0 1 2 --jobs 2

The protocol is the demo's (`nightseg.pipelines.demo`): the synthetic ``small`` set (128x256), source-only and the
oracle trained from scratch for ``--steps`` steps, and every ULCA row *fine-tuning that seed's
source-only model* for ``--ulca-steps`` steps (as DANNet and ULCA adapt a Cityscapes-trained
PSPNet), with a Zero-DCE trained on the synthetic night frames (``--relight official`` uses the
official weights from ../shared/realdata instead). Runs are resumable (rerun the same command). Each
job trains with one torch thread (``--override train.cpu_threads=N`` changes it) and loads data in its own
process; ``--override`` changes any other key too, e.g. for the larger GPU budget of docs/results.md:

    python bench/synthetic_benchmark.py --out runs/benchmark_long --seeds 0 1 2 --jobs 3 \
        --steps 4000 --ulca-steps 1500 --override data.batch_size=8 train.cpu_threads=4

``--rows ... source_longer oracle_longer`` add controls: the source-only model (the oracle) trained on,
as before, for the ULCA rows' steps, so that every model has had the same number of steps; they tell
ULCA's gain from the gain of training longer. ``--rows source_only full_qk_full full_qk_reduced`` compares
the two widths of cross attention's Q and K (docs/methods.md, "Cross attention"). ``--jobs`` runs that many
trainings in parallel. The last line printed compares full ULCA with the targets of issue 6 (+10 mIoU
over source-only, >= 50 % of the gap to the oracle closed).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import statistics
import sys
from pathlib import Path

ROWS = {
    "source_only": ("cpu/supervised_cityscapes.yaml", "Source-only"),
    "relight_static": ("cpu/ulca_relight_static.yaml", "Relight + L_static"),
    "nightmix": ("cpu/ulca_nightmix.yaml", "R + L + NightMix"),
    "consistency": ("cpu/ulca_consistency.yaml", "R + L + N + Consistency"),
    "full": ("cpu/ulca_full.yaml", "R + L + N + C + Cross attention (full ULCA)"),
    "oracle": ("cpu/supervised_nightcity.yaml", "Oracle (night labels)"),
    # controls (not in the default rows): source-only / the oracle trained on, as before, for as many steps
    # as the ULCA fine-tune, so that ULCA's gain is not just the extra steps
    "source_longer": ("cpu/supervised_cityscapes.yaml", "Source-only, + the ULCA steps on day labels"),
    "oracle_longer": ("cpu/supervised_nightcity.yaml", "Oracle, + the ULCA steps on night labels"),
    # cross attention's Q/K width (not in the default rows): full ULCA with C channels (the paper's Eq. 2)
    # or C/8 (SAGAN), whatever the config's default
    "full_qk_full": ("cpu/ulca_full.yaml", "Full ULCA, Q/K with C channels (the paper)"),
    "full_qk_reduced": ("cpu/ulca_full.yaml", "Full ULCA, Q/K with C/8 channels (SAGAN)"),
    # self-training recipes (issue 20; not in the default rows), each fine-tuning the source-only model
    "dacs": ("cpu/dacs.yaml", "DACS"),
    "daformer": ("cpu/daformer.yaml", "DAFormer (no feature distance: no ImageNet encoder on the CPU)"),
    "mic": ("cpu/mic.yaml", "MIC (on DAFormer)"),
    "hrda": ("cpu/hrda.yaml", "HRDA (on DAFormer)"),
    "ulca_st": ("cpu/ulca_st.yaml", "ULCA with a mean teacher (ulca_st), first design: pasted objects as they are"),
    # ulca_st's design alternatives (docs/methods.md, "ULCA with a mean teacher")
    "ulca_st_night": ("cpu/ulca_st.yaml", "ulca_st, teacher term on the night image (ULCA's L_mix kept)"),
    "ulca_st_teacher": ("cpu/ulca_st.yaml", "ulca_st, teacher labels without the day correction"),
    "ulca_st_fda": ("cpu/ulca_st.yaml", "ulca_st, pasted objects night-styled with FDA"),
    "ulca_st_translate": ("cpu/ulca_st.yaml", "ulca_st, pasted objects rendered at night by a CycleGAN"),
    "ulca_st_rcs": ("cpu/ulca_st.yaml", "ulca_st, source images drawn by DAFormer's rare class sampling"),
    "ulca_st_jitter": ("cpu/ulca_st.yaml", "ulca_st, every pasted class colour-jittered on its own"),
    "ulca_st_rcs_jitter": ("cpu/ulca_st.yaml", "ulca_st, rare class sampling and per-class colour jitter"),
    "ulca_st_teacher_jitter": ("cpu/ulca_st.yaml", "ulca_st, teacher labels and per-class colour jitter"),
    "ulca_st_jitter_pixel": ("cpu/ulca_st.yaml", "ulca_st, per-class colour jitter, confident teacher pixels only"),
    "ulca_st_jitter_slow": ("cpu/ulca_st.yaml", "ulca_st, per-class colour jitter, teacher alpha 0.999 (DAFormer's)"),
    "ulca_st_jitter_always": ("cpu/ulca_st.yaml", "ulca_st, per-class colour jitter, the dynamic classes the teacher "
                              "misses at night always pasted (ulca_st's default)"),
    # the DAFormer family at DAFormer's own fine-tuning learning rate (the CPU configs' 6e-4 trains from scratch)
    "daformer_lr": ("cpu/daformer.yaml", "DAFormer, AdamW lr 6e-5 (the paper's)"),
    "mic_lr": ("cpu/mic.yaml", "MIC, AdamW lr 6e-5 (the paper's)"),
}
SELF_TRAINING = ("dacs", "daformer", "mic", "hrda", "ulca_st", "ulca_st_night", "ulca_st_teacher", "ulca_st_fda",
                 "ulca_st_translate", "ulca_st_rcs", "ulca_st_jitter",
                 "ulca_st_rcs_jitter", "ulca_st_teacher_jitter", "ulca_st_jitter_pixel",
                 "ulca_st_jitter_slow", "ulca_st_jitter_always", "daformer_lr", "mic_lr")
RARE_CLASS_SAMPLING = ["data.source.dataset=nightseg.data.rare_class:rare_class_sampling",
                       "data.source.options={dataset: cityscapes, temperature: 0.01, min_pixels: 47}"]
"""DAFormer's rare class sampling on the source stream, as in configs/cpu/daformer.yaml."""
ROW_OVERRIDES = {"full_qk_full": ["method.cross_attention.qk_channels=full"],
                 "full_qk_reduced": ["method.cross_attention.qk_channels=reduced"],
                 "ulca_st_night": ["method.self_training.input=night"],
                 "ulca_st_teacher": ["method.self_training.label=teacher"],
                 "ulca_st_fda": ["method.self_training.paste_style=fda"],
                 "ulca_st_translate": ["method.self_training.paste_style=translate"],
                 "ulca_st_rcs": [*RARE_CLASS_SAMPLING],
                 "ulca_st_jitter": ["method.self_training.paste_style=jitter"],
                 "ulca_st_rcs_jitter": [*RARE_CLASS_SAMPLING, "method.self_training.paste_style=jitter"],
                 "ulca_st_jitter_pixel": ["method.self_training.paste_style=jitter",
                                          "method.self_training.weighting=pixel"],
                 "ulca_st_jitter_slow": ["method.self_training.paste_style=jitter", "method.teacher.alpha=0.999"],
                 "ulca_st_jitter_always": ["method.self_training.paste_style=jitter",
                                           "method.self_training.always_paste=[person,rider,bus,train,motorcycle,"
                                           "bicycle]"],
                 "ulca_st_teacher_jitter": ["method.self_training.label=teacher",
                                            "method.self_training.paste_style=jitter"],
                 "daformer_lr": ["optim.lr=6.0e-5"], "mic_lr": ["optim.lr=6.0e-5"]}
"""Config overrides of a row on top of its config (after ``--override``)."""
ULCA_ST_FIRST_DESIGN = ["method.self_training.paste_style=day", "method.self_training.always_paste=[]"]
"""``ulca_st`` as first designed and measured, before per-class jitter with always-pasted dynamic classes
became its default: every ``ulca_st`` row starts from it, so the rows keep what docs/results.md measured."""
for _row in ROWS:
    if _row.startswith("ulca_st"):
        ROW_OVERRIDES[_row] = [*ULCA_ST_FIRST_DESIGN, *ROW_OVERRIDES.get(_row, [])]
NEEDS_TRANSLATOR = ("ulca_st_translate",)
"""Rows that paste source objects rendered at night by the benchmark's CycleGAN (`train_translator_on_set`)."""
FINE_TUNES = {"relight_static": "source_only", "nightmix": "source_only", "consistency": "source_only",
              "full": "source_only", "source_longer": "source_only", "oracle_longer": "oracle",
              "full_qk_full": "source_only", "full_qk_reduced": "source_only",
              **{row: "source_only" for row in SELF_TRAINING}}
"""Rows that start from that seed's model of another row and train for ``--ulca-steps``."""
CONTROLS = ("source_longer", "oracle_longer")
OPTIONAL = (*CONTROLS, "full_qk_full", "full_qk_reduced", *SELF_TRAINING)


def _budget(row: str, steps: dict[str, int]) -> int:
    """Return the steps `row` trains for: ``steps["ulca"]`` for the fine-tuning rows, else ``steps["supervised"]``."""
    return steps["ulca" if row in FINE_TUNES else "supervised"]
OFFICIAL_DCE = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "zero_dce" / "Epoch99.pth"


def _job(args: tuple) -> tuple[str, int, dict]:
    row, seed, data, out, steps, relight, translator, extra = args  # steps: {"supervised": n, "ulca": n}
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    from nightseg.engine import RunDir
    from nightseg.pipelines.recipes import score_checkpoint, train_recipe

    run_dir = Path(out) / f"{row}_seed{seed}"
    scores_file = run_dir / "scores.json"
    if scores_file.is_file():
        return row, seed, json.loads(scores_file.read_text())
    config = ROWS[row][0]
    # --override may change the threads; data loading stays in the job's process (the jobs are daemonic
    # pool workers, which cannot start DataLoader workers)
    overrides = ["train.cpu_threads=1", *extra, *ROW_OVERRIDES.get(row, []), "data.workers=0"]
    if row in FINE_TUNES:
        start = RunDir(Path(out) / f"{FINE_TUNES[row]}_seed{seed}").last
        overrides.append(f"method.init_checkpoint={start}")
    if "ulca" in config:  # ulca_st too
        overrides.append(f"method.relight.weights={relight}")
    if row in NEEDS_TRANSLATOR:
        overrides.append(f"method.self_training.translator={translator}")
    ckpt = train_recipe(config, Path(data), run_dir, _budget(row, steps), seed, overrides)
    scores = {"night": score_checkpoint(ckpt, "dark_zurich", Path(data) / "dark_zurich"),
              "day": score_checkpoint(ckpt, "cityscapes", Path(data) / "cityscapes")}
    scores_file.write_text(json.dumps(scores))
    return row, seed, scores


def _mean_std(values: list[float]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


DYNAMIC = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
"""Cityscapes' dynamic (thing) classes whose night appearance ULCA does not supervise (issue 20)."""


def night_class_iou(results: dict, row: str) -> dict[str, float]:
    """Return the mean over seeds of each class's night IoU (in %) for `row` (NaN-free classes only)."""
    runs = list(results[row].values())
    names = runs[0]["night"]["per_class"]
    out = {}
    for name in names:
        values = [r["night"]["per_class"][name]["iou"] for r in runs]
        values = [v for v in values if v is not None and v == v]
        if values:
            out[name] = 100 * statistics.mean(values)
    return out


def per_class_table(results: dict) -> str:
    """Return a Markdown table of night IoU per class (mean of the seeds) for every row, classes under 1 IoU
    in every row left out."""
    rows = [r for r in ROWS if r in results]
    ious = {row: night_class_iou(results, row) for row in rows}
    names = [n for n in ious[rows[0]] if any(ious[row].get(n, 0.0) >= 1.0 for row in rows)]
    lines = ["| class | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{ious[row].get(name, float('nan')):.1f}" for row in rows) + " |")
    return "\n".join(lines)


def gap_closed_per_seed(results: dict, row: str) -> list[float]:
    """Return, for each seed that `row`, source_only and oracle share, the share (in %) of that seed's
    source-to-oracle night-mIoU gap that `row` closes."""
    shares = []
    for seed, run in sorted(results[row].items()):
        source, oracle = results["source_only"].get(seed), results["oracle"].get(seed)
        if source is None or oracle is None:
            continue
        gap = oracle["night"]["mIoU"] - source["night"]["mIoU"]
        if gap > 0:
            shares.append(100 * (run["night"]["mIoU"] - source["night"]["mIoU"]) / gap)
    return shares


def self_training_targets(results: dict) -> str:
    """Return the issue-20 check: each self-training row's share of the source-to-oracle gap closed (target: the
    best >= 75 %) and the dynamic classes (present in the oracle's night predictions) it leaves at or below the
    source model."""
    night = {row: statistics.mean(r["night"]["mIoU"] for r in results[row].values()) for row in results}
    gap = night["oracle"] - night["source_only"]
    source, oracle = night_class_iou(results, "source_only"), night_class_iou(results, "oracle")
    dynamic = [n for n in DYNAMIC if oracle.get(n, 0.0) >= 1.0]
    lines = []
    for row in [r for r in ROWS if r in results and (r in SELF_TRAINING or r == "full")]:
        ious = night_class_iou(results, row)
        below = [f"{n} {ious.get(n, 0.0):.1f} <= {source.get(n, 0.0):.1f}" for n in dynamic
                 if ious.get(n, 0.0) <= source.get(n, 0.0)]
        closed = 100 * (night[row] - night["source_only"]) / gap if gap > 0 else float("nan")
        per_seed = ", ".join(f"{value:.0f}" for value in gap_closed_per_seed(results, row))
        lines.append(f"{row}: {100 * (night[row] - night['source_only']):+.1f} mIoU, {closed:.0f} % of the gap closed "
                     f"(per seed: {per_seed} %); dynamic classes not above source: {', '.join(below) or 'none'}")
    best = max((r for r in results if r in SELF_TRAINING or r == "full"), key=lambda r: night[r])
    closed = 100 * (night[best] - night["source_only"]) / gap if gap > 0 else float("nan")
    lines.append(f"issue-20 target: best recipe {best} closes {closed:.0f} % of the gap (target >= 75 %)")
    return "\n".join(lines)


def train_translator_on_set(data: Path, out: Path, steps: int = 1200) -> Path:
    """Return the day->night translator for `NEEDS_TRANSLATOR` rows: a CycleGAN (16 base channels, 6 residual
    blocks, PatchGAN 32, seed 0) trained (or resumed) on the set's unpaired day train images and night train
    frames, at the frames' size with random half-size crops, in ``out``; the same as

        nightseg translate train --day DATA/cityscapes/leftImg8bit/train --night DATA/dark_zurich/rgb_anon/train/night
            --out OUT --steps 1200 --size HxW --crop H/2xW/2 --channels 16 --blocks 6 --disc-channels 32 --seed 0
    """
    from PIL import Image

    from nightseg.core.io import list_images
    from nightseg.pipelines.translation import TranslatorSettings, train_translator, translator_path

    day = list_images(data / "cityscapes" / "leftImg8bit" / "train")
    width, height = Image.open(day[0]).size
    s = TranslatorSettings(steps=steps, size=(height, width), crop=(height // 2, width // 2), channels=16, blocks=6,
                           disc_channels=32, seed=0)
    train_translator(day, list_images(data / "dark_zurich" / "rgb_anon" / "train" / "night"), out, s,
                     resume=True, sample_every=200, save_every=50)
    return translator_path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/benchmark")
    parser.add_argument("--data", default=None, help="synthetic set (default OUT/data, generated if missing)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="source-only/oracle steps (default: the demo's)")
    parser.add_argument("--ulca-steps", type=int, default=None, help="steps of every fine-tuning row: the ULCA rows and the controls (default: the demo's)")
    parser.add_argument("--relight", choices=["synthetic", "official"], default="synthetic")
    parser.add_argument("--rows", nargs="+", default=[r for r in ROWS if r not in OPTIONAL], choices=list(ROWS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides for every run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from nightseg.pipelines.demo import PLANS, train_relight_on_night
    from nightseg.synthetic import generator as synthetic

    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    plan = PLANS["full"]
    synthetic.generate(data, preset="small", size=plan.size, seed=0, counts=plan.counts)
    if args.relight == "official":
        relight = OFFICIAL_DCE
    else:
        relight = train_relight_on_night(data, out / "relight", plan.relight_epochs, 0)
    steps = {"supervised": args.steps or plan.steps["source_only"], "ulca": args.ulca_steps or plan.steps["ulca"]}
    rows = [r for r in args.rows if r != "source_only"]
    translator = train_translator_on_set(data, out / "translator") if set(rows) & set(NEEDS_TRANSLATOR) else None
    # phase 1: source-only (every ULCA row starts from it) and the oracle; phase 2: the ULCA rows
    phases = [["source_only"] + [r for r in rows if r not in FINE_TUNES], [r for r in rows if r in FINE_TUNES]]
    if "oracle_longer" in rows and "oracle" not in rows:
        phases[0].append("oracle")
    for row in [r for phase in phases for r in phase]:  # a run folder is reused by name: refuse other budgets
        for seed in args.seeds:
            metrics_file = out / f"{row}_seed{seed}" / "metrics.json"
            done = json.loads(metrics_file.read_text()).get("max_steps") if metrics_file.is_file() else None
            if done not in (None, _budget(row, steps)):
                print(f"error: {metrics_file.parent}: a {done}-step run, this benchmark asks for "
                      f"{_budget(row, steps)} steps; give another --out (or delete the folder)", file=sys.stderr)
                sys.exit(2)
    results: dict[str, dict[int, dict]] = {}
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for phase in phases:
            jobs = [(row, seed, str(data), str(out), steps, str(relight), str(translator), args.override)
                    for seed in args.seeds for row in phase]
            for row, seed, scores in pool.imap_unordered(_job, jobs):
                results.setdefault(row, {})[seed] = scores
                print(f"done {row} seed {seed}: night mIoU {100 * scores['night']['mIoU']:.1f} "
                      f"day mIoU {100 * scores['day']['mIoU']:.1f}", flush=True)
    (out / "results.json").write_text(json.dumps({"steps": steps, "seeds": args.seeds,
                                                   "relight": str(relight), "results": results}, indent=1))
    print(f"\n{len(args.seeds)} seeds; steps {steps}; mean ± std of IoU in %\n")
    print("| method | night mIoU | gap closed (%) | night mEF1 | day mIoU |\n|---|---|---|---|---|")
    for row in [r for r in ROWS if r in results]:
        runs = list(results[row].values())
        shares = gap_closed_per_seed(results, row) if {"source_only", "oracle"} <= set(results) else []
        closed = _mean_std([v / 100 for v in shares]) if row not in ("source_only", "oracle") else "-"
        print(f"| {ROWS[row][1]} | {_mean_std([r['night']['mIoU'] for r in runs])} | {closed} "
              f"| {_mean_std([r['night']['exposure']['mEF1'] for r in runs])} "
              f"| {_mean_std([r['day']['mIoU'] for r in runs])} |")
    if any(row in results for row in SELF_TRAINING):
        print("\n" + per_class_table(results))
    night = {row: statistics.mean(r["night"]["mIoU"] for r in results[row].values()) for row in results}
    if "oracle" in night and "source_only" in night and any(row in night for row in SELF_TRAINING):
        print("\n" + self_training_targets(results))
    if {"source_only", "full", "oracle"} <= set(night):
        gain, gap = night["full"] - night["source_only"], night["oracle"] - night["source_only"]
        closed = f"{100 * gain / gap:.0f} %" if gap > 0 else "n/a (the oracle is not above source-only)"
        print(f"\nissue-6 targets: full ULCA - source-only = {100 * gain:+.1f} mIoU (target >= +10); "
              f"gap to the oracle {100 * gap:.1f}, closed {closed} (target >= 50 %)")
    if {"source_longer", "full", "oracle_longer"} <= set(night):
        gain, gap = night["full"] - night["source_longer"], night["oracle_longer"] - night["source_longer"]
        closed = f"{100 * gain / gap:.0f} %" if gap > 0 else "n/a"
        print(f"equal steps (the controls): full ULCA - source_longer = {100 * gain:+.1f} mIoU; "
              f"gap to oracle_longer {100 * gap:.1f}, closed {closed}")


if __name__ == "__main__":
    main()
