"""NightLab on the synthetic night set: NightLab vs Phi_I alone vs RDN without HDM over several
seeds, the hard-class threshold ablation (seed Table 1), and a picture of proposals and merged predictions.

    nightseg synth --out data/mini --preset small --size 64x128
    python bench/nightlab_benchmark.py --data data/mini --out runs/nightlab_bench --seeds 0 1 2

Trained on the NightCity-layout night train split (labelled) minus the HDM's held-out 20 % (the default
``method.hdm.split: train_holdout``; ``--override method.hdm.split=val`` gives the HDM on val, as before
issue 21); hard classes on the NightCity-layout val split; scored on the Dark Zurich-layout night val split.
``--thresholds`` with no value skips the threshold ablation. One process, one torch
thread. Resumable: every run and every score is cached under --out (rerun the same command). Prints the
Markdown tables, writes OUT/results.json and --figure (default docs/images/nightlab_proposals.png).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"image": "Phi_I alone", "nightlab_rdn": "RDN without HDM", "nightlab": "NightLab (RDN + HDM)",
        "oracle": "merge on ground-truth boxes (upper bound)"}


def score(ckpt: Path, data: Path, cache: Path) -> dict[str, Any]:
    """Return (cached) Dark Zurich night val scores of a checkpoint: mIoU and per-class IoU."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from nightseg.pipelines.recipes import score_checkpoint

    s = score_checkpoint(ckpt, "dark_zurich", data / "dark_zurich")
    out = {"mIoU": s["mIoU"], "per_class_iou": {k: v["iou"] for k, v in s["per_class"].items()},
           "mEF1": s["exposure"]["mEF1"]}
    cache.write_text(json.dumps(out))
    return out


def oracle_score(ckpt: Path, data: Path, cache: Path, min_area: int = 4) -> dict[str, Any]:
    """Return (cached) Dark Zurich night val scores of NightLab merging on the ground-truth boxes of the hard
    objects instead of the detector's proposals: the merge's upper bound for this Phi_R."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from nightseg.data import build_dataset
    from nightseg.evaluation.metrics import ConfusionMatrix, segmentation_scores
    from nightseg.inference import load_inference_net
    from nightseg.models.nightlab import boxes_from_label

    net = load_inference_net(ckpt)[0].segmenter
    dataset = build_dataset("dark_zurich", data / "dark_zurich", "val")
    cm = ConfusionMatrix()
    for i in range(len(dataset)):
        sample = dataset[i]
        boxes = boxes_from_label(sample["label"], net.hard_classes, min_area)[0]
        with torch.no_grad():
            logits = net.forward_details(sample["image"][None], [(boxes, torch.ones(len(boxes)))])["logits"]
        cm.update(logits.argmax(1)[0], sample["label"])
    s = segmentation_scores(cm)
    out = {"mIoU": s["mIoU"], "per_class_iou": {k: v["iou"] for k, v in s["per_class"].items()}}
    cache.write_text(json.dumps(out))
    return out


def run_one(config: str, data: Path, out: Path, seed: int, extra: list[str]) -> dict[str, Any]:
    """Run the NightLab pipeline (resumable) and score its three models; return the result dict."""
    from nightseg.pipelines.nightlab import run_nightlab

    started = time.perf_counter()
    overrides = [f"data.root={data}", f"seed={seed}", "train.progress=false", *extra]
    summary = run_nightlab(ROOT / "configs" / config, overrides, out)
    ckpts = {"image": Path(summary["image_checkpoint"]), "nightlab_rdn": Path(summary["nightlab_rdn"]),
             "nightlab": Path(summary["nightlab"])}
    scores = {k: score(p, data, out / f"score_{k}.json") for k, p in ckpts.items()}
    scores["oracle"] = oracle_score(ckpts["nightlab"], data, out / "score_oracle.json")
    hard = json.loads((out / "hard.json").read_text())
    timing = out / "seconds.json"
    if not timing.is_file():
        timing.write_text(json.dumps(round(time.perf_counter() - started)))
    return {"seed": seed, "hard_classes": hard["hard_classes"], "hard_names": hard["hard_names"],
            "hdm": summary.get("hdm"), "scores": scores, "checkpoints": {k: str(v) for k, v in ckpts.items()},
            "seconds": json.loads(timing.read_text())}


def _pct(values: list[float], digits: int = 1) -> str:
    values = [100 * v for v in values if v is not None and v == v]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"


def tables(results: list[dict[str, Any]], ablation: dict[str, dict[str, Any]]) -> str:
    """Return the Markdown tables: summary, per-class IoU (hard classes marked), threshold ablation."""
    from nightseg.core.classes import CLASS_NAMES

    n = len(results)
    lines = [f"| model | night mIoU (Dark Zurich val, {n} seed{'s' if n > 1 else ''}) |", "|---|---|"]
    for key, title in ROWS.items():
        lines.append(f"| {title} | {_pct([r['scores'][key]['mIoU'] for r in results], digits=2)} |")
    lines += ["", "HDM: positive anchors kept / matched on the HDM split per seed: " + ", ".join(
        f"{r['hdm']['kept']}/{r['hdm']['positive']}" for r in results if r.get("hdm")), "",
        "Per-class IoU (mean ± std over seeds); **bold** = hard class (k/n: selected in k of n seeds):", "",
        "| class | " + " | ".join(ROWS.values()) + " |", "|---|" + "---|" * len(ROWS)]
    for cls, name in enumerate(CLASS_NAMES):
        k = sum(cls in r["hard_classes"] for r in results)
        label = f"**{name}** ({k}/{n})" if k else name
        cells = [_pct([r["scores"][key]["per_class_iou"][name] for r in results]) for key in ROWS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if ablation:
        seeds = len(next(iter(ablation.values())))
        lines += ["", f"Threshold ablation (seed Table 1; {seeds} seed{'s' if seeds > 1 else ''}, each seed's Phi_I "
                  "shared by its thresholds; Dark Zurich night val mIoU; hard classes of the first seed):", "",
                  "| threshold | hard classes | " + " | ".join(ROWS.values()) + " |", "|---|---|" + "---|" * len(ROWS)]
        for t, runs in sorted(ablation.items(), key=lambda kv: float(kv[0])):
            cells = [_pct([r["scores"][key]["mIoU"] for r in runs], digits=2) for key in ROWS]
            lines.append(f"| {t} | {', '.join(runs[0]['hard_names']) or '(none)'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(result: dict[str, Any], data: Path, path: Path, rows: int = 4, zoom: int = 3) -> Path:
    """Draw ``image + RDN proposals | image + HDM proposals | Phi_I | NightLab merged | ground truth``."""
    import cv2

    from nightseg.core.classes import colorize
    from nightseg.core.io import read_image, read_label, write_png
    from nightseg.inference import load_inference_net

    nets = {k: load_inference_net(result["checkpoints"][k])[0].segmenter for k in ("nightlab_rdn", "nightlab")}
    val = data / "dark_zurich"
    images = sorted((val / "rgb_anon" / "val" / "night").rglob("*_rgb_anon.png"))
    picked = []
    for path_img in images:  # frames where HDM selects at least one proposal first
        x = torch.from_numpy(read_image(path_img)).permute(2, 0, 1).float().div(255)[None]
        with torch.no_grad():
            d = nets["nightlab"].forward_details(x)
        picked.append((len(d["proposals"][0][0]) == 0, path_img))
        if sum(not empty for empty, _ in picked) >= rows:
            break
    picked = [p for _, p in sorted(picked, key=lambda t: t[0])][:rows]

    def big(a: np.ndarray) -> np.ndarray:
        return cv2.resize(a, (a.shape[1] * zoom, a.shape[0] * zoom), interpolation=cv2.INTER_NEAREST)

    lines = []
    for path_img in picked:
        image = read_image(path_img)
        x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]
        cells = []
        with torch.no_grad():
            details = {k: net.forward_details(x) for k, net in nets.items()}
        for key, colour in (("nightlab_rdn", (255, 160, 0)), ("nightlab", (0, 255, 255))):
            canvas = big(np.clip(image.astype(np.float32) * 2.5, 0, 255).astype(np.uint8))  # brightened night frame
            for box in details[key]["proposals"][0][0].tolist():
                x1, y1, x2, y2 = (round(v * zoom) for v in box)
                cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), colour, 1)
            cells.append(canvas)
        cells.append(big(colorize(details["nightlab"]["image_logits"].argmax(1)[0].numpy().astype(np.uint8))))
        merged = colorize(details["nightlab"]["logits"].argmax(1)[0].numpy().astype(np.uint8))
        cells.append(big(merged))
        stem = path_img.name.replace("_rgb_anon.png", "")
        gt = next((val / "gt" / "val" / "night").rglob(f"{stem}_gt_labelTrainIds.png"))
        cells.append(big(colorize(read_label(gt))))
        lines.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in cells], axis=1))
    return write_png(path, np.concatenate(lines, axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/mini"), help="synthetic set (64x128 frames)")
    parser.add_argument("--out", type=Path, default=Path("runs/nightlab_bench"))
    parser.add_argument("--config", default="cpu/nightlab_mini.yaml", help="recipe, relative to configs/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.3, 0.4, 0.6],
                        help="extra hard-class thresholds for the ablation, run for every seed (0.5 is the main run)")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "images" / "nightlab_proposals.png")
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides for every run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    results = [run_one(args.config, args.data, args.out / f"seed{s}", s, args.override) for s in args.seeds]
    first = results[0]
    ablation = {"0.5": results}
    for t in args.thresholds:
        ablation[str(t)] = []
        for seed, result in zip(args.seeds, results):
            extra = [*args.override, f"method.hard_threshold={t}",
                     f"method.image_checkpoint={result['checkpoints']['image']}"]
            ablation[str(t)].append(run_one(args.config, args.data, args.out / f"seed{seed}_t{t}", seed, extra))
    fig = figure(first, args.data, args.figure)
    text = tables(results, ablation if args.thresholds else {})
    (args.out / "results.json").write_text(json.dumps({"seeds": results, "ablation": ablation}, indent=1))
    print(text)
    print(f"\nfigure: {fig}\nseconds per run: {[r['seconds'] for r in results]}")


if __name__ == "__main__":
    main()
