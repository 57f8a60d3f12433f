"""See Clearer at Night (day<->night translation) on the synthetic benchmark: CycleGAN, both methods, the ratio sweep.

1. trains one CPU-sized CycleGAN on synthetic day (Cityscapes layout, train) vs night
   (Dark Zurich layout, train night frames), unpaired;
2. method 2: for r in --ratios, writes the Cityscapes-layout train set with a share r of the day images
   translated to night (labels kept; `nightseg translate dataset`) and trains the CPU source-only recipe
   on it, for each seed; scores night mIoU (Dark Zurich layout val) and day mIoU (Cityscapes val);
3. method 1: the r = 0 (day-only) models segment night val after night->day translation (``--night2day``);
4. how close translated images come to real ones: exposure (HSV value) histograms, their
   Wasserstein-1 distance, and a Frechet distance on features of the r = 0 segmenter's encoder
   (an "FID" whose feature extractor is trained here, on synthetic day labels);
5. writes docs/images/translation_{ratio,grid,exposure_hist}.png and prints Markdown tables.

    nightseg synth --out data/synthetic-mini --preset small --size 64x128
    python bench/translation_benchmark.py --data data/synthetic-mini --out runs/translation

Every stage is resumable (rerun the same command). One process, one torch thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
CONFIG = "cpu/supervised_cityscapes.yaml"
SEG_OVERRIDES = ["model.name=pspnet_tiny", "data.source.crop=[64,128]", "data.source.scale=[1.0,1.5]",
                 "train.cpu_threads=1", "data.workers=0"]
log = logging.getLogger("nightseg")


# --------------------------------------------------------------------------------------------- stages
def train_gan(data: Path, out: Path, steps: int, channels: int, blocks: int) -> Path:
    from nightseg.core.io import list_images
    from nightseg.pipelines.translation import TranslatorSettings, train_translator, translator_path

    size = tuple(np.asarray(_first(data / "cityscapes" / "leftImg8bit" / "train")).shape[:2])
    s = TranslatorSettings(steps=steps, size=size, channels=channels, blocks=blocks, disc_channels=32, seed=0)
    run = out / "translator"
    started = time.perf_counter()
    result = train_translator(list_images(data / "cityscapes" / "leftImg8bit" / "train"),
                              list_images(data / "dark_zurich" / "rgb_anon" / "train" / "night"),
                              run, s, resume=True, sample_every=200, save_every=100)
    timing = run / "timing.json"
    if result["seconds_per_step"] is not None and not timing.is_file():
        timing.write_text(json.dumps({"seconds_per_step": result["seconds_per_step"],
                                      "minutes": (time.perf_counter() - started) / 60}))
    return translator_path(run)


def _first(folder: Path) -> np.ndarray:
    from nightseg.core.io import list_images, read_image

    return read_image(list_images(folder)[0])


def make_mix(data: Path, out: Path, translator: Path, ratio: float) -> Path:
    """Return a data root holding the translated Cityscapes-layout train set and the original val sets."""
    from nightseg.pipelines.translation import translate_dataset

    root = out / "mixes" / f"r{ratio:g}"
    translate_dataset(translator, data / "cityscapes", root / "cityscapes", ratio, seed=0, progress=False)
    for split in ("val",):  # day val is read from the original set; link it so the recipe's root works
        for sub in ("leftImg8bit", "gtFine"):
            link = root / "cityscapes" / sub / split
            if not link.exists():
                link.symlink_to((data / "cityscapes" / sub / split).resolve(), target_is_directory=True)
    if not (root / "dark_zurich").exists():
        (root / "dark_zurich").symlink_to((data / "dark_zurich").resolve(), target_is_directory=True)
    return root


def sweep_run(data: Path, out: Path, translator: Path, ratio: float, seed: int, steps: int) -> dict:
    from nightseg.pipelines.recipes import score_checkpoint, train_recipe

    run_dir = out / "sweep" / f"r{ratio:g}_seed{seed}"
    scores_file = run_dir / "scores.json"
    if scores_file.is_file():
        return json.loads(scores_file.read_text())
    root = make_mix(data, out, translator, ratio)
    started = time.perf_counter()
    ckpt = train_recipe(CONFIG, root, run_dir, steps, seed, SEG_OVERRIDES)
    minutes = (time.perf_counter() - started) / 60
    scores = {"night": _summary(score_checkpoint(ckpt, "dark_zurich", data / "dark_zurich")),
              "day": _summary(score_checkpoint(ckpt, "cityscapes", data / "cityscapes")),
              "train_minutes": minutes, "checkpoint": str(ckpt)}
    scores_file.write_text(json.dumps(scores, indent=1))
    return scores


def _summary(scores: dict) -> dict:
    return {"miou": scores["mIoU"], "per_class": {k: v["iou"] for k, v in scores["per_class"].items()}}


def night2day_run(data: Path, out: Path, translator: Path, ckpt: Path, seed: int) -> dict:
    """Method 1: score the day-only model on night val after night->day translation."""
    from nightseg.data import build_dataset
    from nightseg.inference import Predictor
    from nightseg.pipelines.evaluate import evaluate_dataset

    path = out / "method1" / f"seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    segmenter = Predictor.from_checkpoint(ckpt, night2day=translator)
    scores = _summary(evaluate_dataset(segmenter, build_dataset("dark_zurich", data / "dark_zurich", "val"),
                                       workers=1, progress=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scores, indent=1))
    return scores


# --------------------------------------------------------------------------------------------- distances
def _stack(paths: list[Path], limit: int) -> torch.Tensor:
    from nightseg.core.io import read_image

    return torch.stack([torch.from_numpy(read_image(p)).permute(2, 0, 1).float() / 255 for p in paths[:limit]])


@torch.no_grad()
def _translate(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(x[i : i + 16]) for i in range(0, len(x), 16)])


def value_histogram(x: torch.Tensor, bins: int = 64) -> np.ndarray:
    """Return the normalised histogram of the HSV value V = max(R,G,B) of images [N,3,H,W] in [0,1]."""
    v = x.amax(1).flatten()
    h = torch.histc(v, bins=bins, min=0.0, max=1.0).double()
    return (h / h.sum()).numpy()


def wasserstein1(p: np.ndarray, q: np.ndarray) -> float:
    """Return the earth mover's distance between two histograms on [0,1] with equal bins (|CDF_p - CDF_q| area)."""
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() / len(p))


@torch.no_grad()
def encoder_features(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Return global-average-pooled deepest encoder features [N,C] of the segmenter `model`."""
    feats = [model.encode(x[i : i + 16])[-1].mean((2, 3)) for i in range(0, len(x), 16)]
    return torch.cat(feats).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Return |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of Gaussian fits (the FID formula)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sb @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * cross)


def distances(data: Path, translator: Path, seg_ckpt: Path, out_images: Path) -> dict:
    from nightseg.core.io import list_images
    from nightseg.inference import load_inference_net
    from nightseg.models.translator import load_translator

    day = _stack(list_images(data / "cityscapes" / "leftImg8bit" / "train"), 300)
    night = _stack(list_images(data / "dark_zurich" / "rgb_anon" / "train" / "night"), 300)
    night_val = _stack(list_images(data / "dark_zurich" / "rgb_anon" / "val" / "night"), 300)
    d2n, n2d = load_translator(translator, "day2night"), load_translator(translator, "night2day")
    fake_night, fake_day = _translate(d2n, day), _translate(n2d, night)
    # a hand-made reference: day darkened by one global gamma so its mean V matches real night's
    target = night.amax(1).mean()
    gamma = float(torch.log(target) / torch.log(day.amax(1).mean()))
    dark_day = day.clamp_min(1e-4) ** gamma
    sets = {"real day": day, "day→night (CycleGAN)": fake_night, f"day, gamma {gamma:.2f}": dark_day,
            "real night": night, "night→day (CycleGAN)": fake_day}
    hists = {k: value_histogram(v) for k, v in sets.items()}
    encoder = load_inference_net(seg_ckpt)[0].segmenter
    feats = {k: encoder_features(encoder, v) for k, v in sets.items()}
    night_val_feats = encoder_features(encoder, night_val)
    rows = []
    for a, b in (("real day", "real night"), ("day→night (CycleGAN)", "real night"),
                 (f"day, gamma {gamma:.2f}", "real night"), ("night→day (CycleGAN)", "real day")):
        rows.append({"a": a, "b": b, "w1_value": wasserstein1(hists[a], hists[b]),
                     "frechet": frechet_distance(feats[a], feats[b])})
    # reference: two samples of the same real domain (night train vs night val)
    rows.append({"a": "real night (val)", "b": "real night", "w1_value": wasserstein1(value_histogram(night_val),
                 hists["real night"]), "frechet": frechet_distance(night_val_feats, feats["real night"])})
    _plot_histograms(hists, out_images / "translation_exposure_hist.png")
    _grid(day[:4], fake_night[:4], night[:4], fake_day[:4], out_images / "translation_grid.png")
    return {"rows": rows, "gamma": gamma,
            "mean_value": {k: float(v.amax(1).mean()) for k, v in sets.items()}}


# --------------------------------------------------------------------------------------------- pictures
def _plot_histograms(hists: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nightseg.evaluation.report import save_figure

    fig, ax = plt.subplots(figsize=(7, 3.6))
    centres = (np.arange(64) + 0.5) / 64
    styles = {"real day": "C0-", "day→night (CycleGAN)": "C3-", "real night": "k-", "night→day (CycleGAN)": "C2--"}
    for name, h in hists.items():
        ax.plot(centres, h, styles.get(name, "C7:"), label=name, lw=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("exposure (HSV value V = max(R,G,B))")
    ax.set_ylabel("share of pixels")
    ax.set_title("Exposure histograms, synthetic train images (64x128)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _grid(day: torch.Tensor, fake_night: torch.Tensor, night: torch.Tensor, fake_day: torch.Tensor, path: Path) -> None:
    from nightseg.core.io import write_png

    rows = [torch.cat([torch.nn.functional.pad(c, (2, 2, 2, 2), value=1.0) for c in cells], dim=2)
            for cells in zip(day, fake_night, night, fake_day)]
    grid = torch.cat(rows, dim=1)
    write_png(path, (grid * 255 + 0.5).clamp(0, 255).byte().permute(1, 2, 0).numpy())


def _plot_ratio(sweep: dict[float, list[dict]], method1: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nightseg.evaluation.report import save_figure

    ratios = sorted(sweep)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for key, style, label in (("night", "C3o-", "night mIoU (Dark Zurich-layout val)"),
                              ("day", "C0s-", "day mIoU (Cityscapes-layout val)")):
        values = [[100 * s[key]["miou"] for s in sweep[r]] for r in ratios]
        means = [statistics.mean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.errorbar(ratios, means, yerr=stds, fmt=style, capsize=3, label=label)
    mean_both = [statistics.mean([50 * (s["night"]["miou"] + s["day"]["miou"]) for s in sweep[r]]) for r in ratios]
    ax.plot(ratios, mean_both, "k:", label="mean of day and night")
    if method1:
        ax.axhline(statistics.mean(100 * m["miou"] for m in method1), color="C2", ls="--",
                   label="method 1: night→day at test (r = 0 model), night")
    ax.set_xlabel("ratio r of day training images translated to night")
    ax.set_ylabel("mIoU (%)")
    ax.set_xticks(ratios)
    ax.set_title("See Clearer at Night ratio sweep, synthetic 64x128 (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


# --------------------------------------------------------------------------------------------- report
def _ms(values: list[float]) -> str:
    values = [100 * v for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def markdown(sweep: dict[float, list[dict]], method1: list[dict], dist: dict, gan: dict, seeds: list[int]) -> str:
    lines = [f"CycleGAN: {gan}", "",
             "| r (share of day train images translated to night) | night mIoU | day mIoU | mean | seeds |",
             "|---|---|---|---|---|"]
    for r in sorted(sweep):
        runs = sweep[r]
        lines.append(f"| {r:g} | {_ms([s['night']['miou'] for s in runs])} | {_ms([s['day']['miou'] for s in runs])} "
                     f"| {_ms([(s['night']['miou'] + s['day']['miou']) / 2 for s in runs])} | {len(runs)} |")
    if method1:
        lines += ["", "| method 1 (r = 0 model, night val translated night→day first) | night mIoU |", "|---|---|",
                  f"| --night2day | {_ms([m['miou'] for m in method1])} |",
                  f"| plain (same models) | {_ms([s['night']['miou'] for s in sweep.get(0.0, [])])} |"]
    lines += ["", "| images A | images B | W1 of exposure histograms | Fréchet distance, r=0 encoder features |",
              "|---|---|---|---|"]
    for row in dist["rows"]:
        lines.append(f"| {row['a']} | {row['b']} | {row['w1_value']:.4f} | {row['frechet']:.3f} |")
    lines += ["", "Mean exposure V: " + ", ".join(f"{k} {v:.3f}" for k, v in dist["mean_value"].items())]
    worst = {}
    if sweep.get(0.0) and sweep.get(max(sweep)):
        for name in sweep[0.0][0]["night"]["per_class"]:
            a = [s["night"]["per_class"][name] for s in sweep[0.0] if s["night"]["per_class"][name] is not None]
            b = [s["night"]["per_class"][name] for s in sweep[max(sweep)] if s["night"]["per_class"][name] is not None]
            if a and b:
                worst[name] = (statistics.mean(a), statistics.mean(b))
        lines += ["", f"Per-class night IoU, r = 0 vs r = {max(sweep):g} (mean over seeds {seeds}):", "",
                  "| class | r = 0 | r = " + f"{max(sweep):g} |", "|---|---|---|"]
        lines += [f"| {k} | {100 * a:.1f} | {100 * b:.1f} |" for k, (a, b) in worst.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-mini"), help="synthetic set (64x128; `nightseg synth --preset small --size 64x128`)")
    parser.add_argument("--out", type=Path, default=Path("runs/translation"))
    parser.add_argument("--images", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--gan-steps", type=int, default=1200)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=500, help="segmenter training steps per sweep run")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)

    translator = train_gan(args.data, args.out, args.gan_steps, args.channels, args.blocks)
    timing = json.loads((args.out / "translator" / "timing.json").read_text()) \
        if (args.out / "translator" / "timing.json").is_file() else {}
    gan = (f"{args.channels} base channels, {args.blocks} res blocks, {args.gan_steps} steps of batch 1 at 64x128"
           + (f", {timing['seconds_per_step']:.2f} s/step on 1 thread ({timing['minutes']:.1f} min)" if timing else ""))
    sweep: dict[float, list[dict]] = {}
    for seed in args.seeds:
        for ratio in args.ratios:
            scores = sweep_run(args.data, args.out, translator, ratio, seed, args.steps)
            sweep.setdefault(ratio, []).append(scores)
            print(f"r={ratio:g} seed {seed}: night {100 * scores['night']['miou']:.1f} "
                  f"day {100 * scores['day']['miou']:.1f} ({scores['train_minutes']:.1f} min)", flush=True)
    method1 = []
    if 0.0 in sweep:
        method1 = [night2day_run(args.data, args.out, translator, Path(s["checkpoint"]), seed)
                   for seed, s in zip(args.seeds, sweep[0.0])]
    dist = distances(args.data, translator, Path(sweep[0.0][0]["checkpoint"]) if 0.0 in sweep else None, args.images)
    _plot_ratio(sweep, method1, args.images / "translation_ratio.png")
    (args.out / "results.json").write_text(json.dumps({"sweep": {str(k): v for k, v in sweep.items()},
                                                       "method1": method1, "distances": dist, "gan": gan}, indent=1))
    print(markdown(sweep, method1, dist, gan, args.seeds))


if __name__ == "__main__":
    main()
