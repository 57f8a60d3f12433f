"""EGNet on the synthetic night benchmark: EGNet vs a plain segmenter of the same size vs the
ablations of Tables 4-5, plus the paper's image-enhancement baseline (a day-trained model, with and without
Zero-DCE relighting at test time). Every model is trained on labelled synthetic night (NightCity layout;
the day model on Cityscapes layout) and scored on synthetic night val (Dark Zurich layout): mIoU, mEF1 and
EF1 per exposure bin (the analogue of Table 2).

    nightseg synth --out data/synthetic-mini --preset small --size 64x128
    python bench/egnet_benchmark.py --data data/synthetic-mini --out runs/egnet --seeds 0 1 2 --steps 300

Prints Markdown tables (mean ± std over seeds), writes every score to ``OUT/results.json`` and the plot
of EF1 per exposure bin to ``docs/images/egnet_ef1_bins.png``. Resumable: finished runs (``scores.json``)
are skipped, interrupted ones continue from their saved state. One process, one torch thread.
``--models ... egnet_beta1`` adds a diagnostic EGNet with beta = 1; ``plain_wide`` is the plain segmenter
with EGNet's parameter count (`pspnet_tiny_wide`, 5.76 M vs 5.77 M; `pspnet_tiny` has 3.15 M). Pass
``--plot`` elsewhere when running a subset of the models, or the published plot is redrawn with fewer
curves. ``--models geo_square geo_resized`` on the 128x256 `small` set compares train/test geometries
(docs/results.md, "EGNet: train/test geometry"):

    nightseg synth --out data/synthetic --preset small
    python bench/egnet_benchmark.py --data data/synthetic --out runs/egnet_geometry --seeds 0 1 2 \
        --models geo_square geo_resized docs/results.md ("EGNet") has the commands and the numbers of the reported runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_DCE = REPO.parent / "shared" / "realdata" / "zero_dce" / "Epoch99.pth"
PLOT = REPO / "docs" / "images" / "egnet_ef1_bins.png"

GEO_CROPS = ["data.source.crop=[76,76]"]
GEO_TEST = ["model.options.test_size=[224,224]", "model.options.test_resize=stretch"]
# key -> (config relative to src/nightseg/configs, title, extra overrides)
TRAINED = {
    "plain": ("cpu/supervised_nightcity.yaml", "Plain segmenter (pspnet_tiny)", []),
    "plain_wide": ("cpu/supervised_nightcity.yaml", "Plain segmenter of EGNet's size (pspnet_tiny_wide)",
                   ["model.name=pspnet_tiny_wide"]),
    "egnet": ("cpu/egnet.yaml", "EGNet (egnet_tiny)", []),
    "no_egl": ("cpu/egnet_no_egl.yaml", "w/o EGL", []),
    "no_es": ("cpu/egnet_no_es.yaml", "w/o ES", []),
    "concat": ("cpu/egnet_concat.yaml", "Concat", []),
    "sum": ("cpu/egnet_sum.yaml", "Sum", []),
    "extra_input": ("cpu/egnet_extra_input.yaml", "Exposure map as extra input", []),
    "exposure_attention": ("cpu/egnet_exposure_attention.yaml", "Exposure map as attention map", []),
    "day": ("cpu/supervised_cityscapes.yaml", "Day-trained (C)", []),
    "egnet_beta1": ("cpu/egnet.yaml", "EGNet, beta = 1 (diagnostic, not in the paper)", ["method.beta=1.0"]),
    # train/test geometry (issue 21, item 1): the GPU recipe's protocol scaled to the 128x256 `small` frames
    # (1024x512 / 4): 300x300 crops -> 76x76 at scale 1-2, 900x900 test input -> 224x224. Needs --data of
    # the small preset; see docs/results.md, "EGNet: train/test geometry".
    "geo_square": ("cpu/egnet.yaml", "EGNet, square crops, test stretched to 224x224 (paper as printed)",
                   [*GEO_CROPS, "data.source.scale=[1.0,2.0]", *GEO_TEST]),
    "geo_resized": ("cpu/egnet.yaml", "EGNet, trained on frames stretched to 224x224 as at test, tested so",
                    [*GEO_CROPS, "data.source.resize=[224,224]", "data.source.scale=[1.0,1.0]", *GEO_TEST]),
}
GEOMETRY = ["geo_square", "geo_resized"]
DEFAULT_MODELS = [k for k in TRAINED if k != "egnet_beta1" and k not in GEOMETRY]
# scored rows: key -> (trained run, relight at test time, title)
ROWS = {key: (key, False, title) for key, (_, title, _) in TRAINED.items()}
ROWS["day_dce"] = ("day", True, "Day-trained + Zero-DCE at test time (C (IE))")
ROWS["geo_square_keep"] = ("geo_square", False, "EGNet, square crops, test scaled x1.24 keeping the aspect (same "
                           "pixel count as 224x224)")
# rows scored with another test resize than the trained model's config: row -> model.options.test_resize
TEST_RESIZE = {"geo_square_keep": "keep_aspect"}
ORDER = ["plain", "plain_wide", "egnet", "no_egl", "no_es", "concat", "sum", "extra_input", "exposure_attention", "egnet_beta1",
         "day", "day_dce", "geo_square", "geo_square_keep", "geo_resized"]
PLOTTED = ["plain", "plain_wide", "egnet", "no_egl", "concat", "sum", "extra_input", "exposure_attention", "day", "day_dce"]


def _score(ckpt: Path, data: Path, relight: Path | None, test_resize: str | None = None) -> dict:
    """Return the evaluate_dataset scores of `ckpt` on synthetic night val (optionally relit by Zero-DCE;
    `test_resize` replaces the EGNet's ``test_resize`` option)."""
    from nightseg.data import build_dataset
    from nightseg.inference import Predictor
    from nightseg.pipelines.evaluate import evaluate_dataset

    segmenter = Predictor.from_checkpoint(ckpt, device="cpu", relight=relight if relight else False)
    if test_resize is not None:
        segmenter.net.segmenter.test_resize = test_resize
    dataset = build_dataset("dark_zurich", data / "dark_zurich", "val")
    scores = evaluate_dataset(segmenter, dataset, workers=1, progress=False)
    return {"mIoU": scores["mIoU"], "mEF1": scores["exposure"]["mEF1"], "per_class_iou":
            {k: v["iou"] for k, v in scores["per_class"].items()},
            "bins": [{k: b[k] for k in ("range", "pixels", "share", "ef1", "mIoU")} for b in scores["exposure"]["bins"]]}


def run_one(key: str, seed: int, data: Path, out: Path, steps: int, overrides: list[str], relight: Path) -> dict:
    """Train (or resume) the run of `key` and `seed`, score it; return {row: scores} (cached in scores.json)."""
    from nightseg.models.egnet import EGNet
    from nightseg.pipelines.recipes import train_recipe

    run_dir = out / f"{key}_seed{seed}"
    cached = run_dir / "scores.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    config, _, extra = TRAINED[key]
    started = time.perf_counter()
    ckpt = train_recipe(config, data, run_dir, steps, seed, [*overrides, *extra, "train.cpu_threads=1",
                                                             "data.workers=0", "train.progress=false"])
    seconds = time.perf_counter() - started
    from nightseg.inference import load_inference_net

    net, _ = load_inference_net(ckpt, relight=False)
    params = sum(p.numel() for p in net.segmenter.parameters())
    rows = {}
    for row, (trained, relit, _) in ROWS.items():
        if trained == key:
            rows[row] = _score(ckpt, data, relight if relit else None, TEST_RESIZE.get(row))
            rows[row].update(params=params, train_seconds=round(seconds, 1), egnet=isinstance(net.segmenter, EGNet))
    cached.write_text(json.dumps(rows))
    return rows


def _stats(values: list[float | None]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float | None], scale: float = 100.0, digits: int = 1) -> str:
    s = _stats(values)
    return "-" if s is None else f"{scale * s[0]:.{digits}f} ± {scale * s[1]:.{digits}f}"


def tables(results: dict[str, dict[int, dict]], rows: list[str]) -> str:
    """Return the Markdown summary table and the per-bin EF1 table (means over seeds)."""
    lines = ["| model | params | night mIoU (%) | night mEF1 |", "|---|---|---|---|"]
    for row in rows:
        runs = list(results[row].values())
        lines.append(f"| {ROWS[row][2]} | {runs[0]['params'] / 1e6:.2f} M | {_fmt([r['mIoU'] for r in runs])} "
                     f"| {_fmt([r['mEF1'] for r in runs], 1.0, 3)} |")
    first = next(iter(results[rows[0]].values()))
    ranges = [f"[{b['range'][0]:.1f}, {b['range'][1]:.1f})" for b in first["bins"]]
    lines += ["", "EF1 per exposure bin (mean over seeds; `-`: no labelled pixel in the bin):", "",
              "| model | " + " | ".join(ranges) + " |", "|---|" + "---|" * len(ranges)]
    for row in rows:
        runs = list(results[row].values())
        cells = []
        for g in range(len(ranges)):
            s = _stats([r["bins"][g]["ef1"] for r in runs])
            cells.append("-" if s is None else f"{s[0]:.3f}")
        lines.append(f"| {ROWS[row][2]} | " + " | ".join(cells) + " |")
    share = [b["share"] for b in first["bins"]]
    lines.append("| *share of labelled val pixels* | " + " | ".join(f"{100 * s:.1f}%" for s in share) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict[int, dict]], rows: list[str], path: Path) -> Path:
    """Draw EF1 per exposure bin (mean ± std over seeds) for `rows`, with the pixel share per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nightseg.evaluation.report import save_figure

    first = next(iter(results[rows[0]].values()))
    centers = [(b["range"][0] + b["range"][1]) / 2 for b in first["bins"]]
    fig, ax = plt.subplots(figsize=(9, 6))
    share_ax = ax.twinx()
    share_ax.bar(centers, [100 * b["share"] for b in first["bins"]], width=0.08, color="0.88", zorder=0)
    share_ax.set_ylabel("share of labelled val pixels (%)", color="0.5")
    ax.set_zorder(share_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    for row in rows:
        runs = list(results[row].values())
        stats = [_stats([r["bins"][g]["ef1"] for r in runs]) for g in range(len(centers))]
        xs = [c for c, s in zip(centers, stats) if s]
        mean, std = [s[0] for s in stats if s], [s[1] for s in stats if s]
        style = {"linewidth": 2.6, "color": "black", "zorder": 5} if row == "egnet" else {"linewidth": 1.3}
        if row.startswith("day"):
            style["linestyle"] = "--"
        ax.errorbar(xs, mean, yerr=std, marker="o", markersize=3, capsize=2, label=ROWS[row][2], **style)
    ax.set_xticks([b["range"][0] for b in first["bins"]] + [1.0])
    ax.set_xlabel("exposure bin (HSV V of the input pixel)")
    ax.set_ylabel("EF1 (pixel-averaged F1 in the bin)")
    ax.set_title(f"Synthetic night val, {len(next(iter(results.values())))} seeds: EF1 per exposure bin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-mini"), help="synthetic set (64x128)")
    parser.add_argument("--out", type=Path, default=Path("runs/egnet"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(TRAINED))
    parser.add_argument("--relight", type=Path, default=OFFICIAL_DCE, help="Zero-DCE weights (official Epoch99.pth)")
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--override", nargs="*", default=["data.source.crop=[64,128]", "data.source.scale=[1.0,1.5]"],
                        help="config overrides for every run (default: full-width 64x128 crops)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    if not (args.data / "dark_zurich").is_dir():
        raise SystemExit(f"{args.data}: no synthetic set; run: nightseg synth --out {args.data} --preset small "
                         "--size 64x128")
    if "day" in args.models and not args.relight.is_file():
        raise SystemExit(f"{args.relight}: Zero-DCE weights not found (pass --relight PATH)")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict]] = {}
    jobs = [(key, seed) for seed in args.seeds for key in args.models]
    for key, seed in tqdm(jobs, desc="egnet benchmark", unit="run"):
        for row, scores in run_one(key, seed, args.data, args.out, args.steps, args.override, args.relight).items():
            results.setdefault(row, {})[seed] = scores
            tqdm.write(f"{row} seed {seed}: mIoU {100 * scores['mIoU']:.1f}  mEF1 {scores['mEF1']:.3f}")
    rows = [r for r in ORDER if r in results]
    (args.out / "results.json").write_text(json.dumps(
        {"steps": args.steps, "seeds": args.seeds, "data": str(args.data), "overrides": args.override,
         "relight": str(args.relight), "results": results}, indent=1))
    if any(r in results for r in PLOTTED):
        plot(results, [r for r in PLOTTED if r in results], args.plot)
    print(f"\n{len(args.seeds)} seed(s), {args.steps} steps each; mean ± std over seeds\n")
    print(tables(results, rows))
    print(f"\nresults: {args.out / 'results.json'}  plot: {args.plot}")


if __name__ == "__main__":
    main()
