"""Measured properties of the synthetic day/night benchmark (issue 3), printed as Markdown.

1. Class pixel frequencies of the labelled day scenes vs the Cityscapes frequencies (KL divergence,
   every class present), and of the labelled night scenes vs the 87 real BDD100K night label maps in
   ../shared/realdata/bdd100k_night (per-class frequency, and where each class sits in the frame: its
   distribution over 10 row bins (vertical profile) and over 10 column bins (horizontal profile), compared
   by total-variation distance).
2. Exposure: histograms of HSV V = max(R,G,B) over 10 bins, day vs night (as in the EGNet paper, Fig. 4), next to
   the real frames of ../shared/realdata/README.md; where over-exposed night pixels come from (light
   sources vs sky).
3. Day/night pairs: static-class agreement after undoing the camera offset; dynamic objects differ.
4. Invalid (too dark) share of the labelled night val frames.
5. With ``--gap STEPS``: a quick domain-gap check (issue 6, item 5): a small segmenter (pspnet_tiny, from
   scratch, SGD, batch 4, full 128x256 frames, flips) trained for STEPS steps on 200 synthetic day
   scenes is scored on synthetic day val and night val; one trained on 200 labelled synthetic night
   scenes on night val. Targets: day model keeps < 50 % of its day mIoU at night; night model reaches
   >= 80 % of the day model's day mIoU. Single-threaded; about 15 min for 600 steps on a free core.

Everything is generated in memory with the Python API (same scenes as `nightseg synth --seed`).

    .venv/bin/python bench/synthetic_stats.py [--n 300] [--size 128x256] [--seed 0] [--json stats.json]
        [--figures docs/images] [--gap 600]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from nightseg.core.classes import CLASS_NAMES, DYNAMIC_CLASSES, NUM_CLASSES, STATIC_CLASSES, colorize
from nightseg.synthetic.generator import make_sample

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
CITYSCAPES_FREQ = np.array([0.3687, 0.0608, 0.2282, 0.0066, 0.0088, 0.0123, 0.0021, 0.0055, 0.1593, 0.0116, 0.0402,
                            0.0122, 0.0014, 0.0699, 0.0027, 0.0024, 0.0023, 0.0010, 0.0041])
"""Cityscapes class pixel frequencies (trainId order) as used by DANNet, from ../shared/realdata/README.md."""
REAL_EXPOSURE = {  # ../shared/realdata/README.md: mean V and % of pixels per V bin
    "Dark Zurich night GP010375_000036": (0.329, [9.3, 16.4, 34.7, 15.9, 7.1, 5.4, 2.2, 1.6, 1.2, 6.3]),
    "BDD100K night sample": (0.224, [14.8, 43.1, 23.1, 8.9, 4.0, 1.8, 1.1, 0.7, 0.7, 1.8]),
    "Dark Zurich day GOPR0374_000801": (0.413, [1.5, 6.8, 39.6, 16.0, 12.6, 5.5, 2.6, 1.9, 1.5, 12.0]),
    "Cityscapes val frankfurt_000294": (0.379, [2.5, 27.0, 15.2, 10.9, 24.6, 8.0, 2.1, 1.1, 1.5, 7.0]),
    "Cityscapes val frankfurt_000576": (0.370, [5.9, 14.6, 32.2, 22.8, 3.4, 3.3, 1.9, 3.1, 6.6, 6.3]),
}
ROW_BINS = 10


def kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-6) -> float:
    """KL(p || q) in nats over the classes where p > 0 (q floored at eps)."""
    p = p / p.sum()
    q = q / q.sum()
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], eps))))


def v_hist(img: np.ndarray) -> np.ndarray:
    """Share of pixels in 10 equal bins of HSV V = max(R,G,B)/255."""
    v = img.max(axis=2).astype(np.int32)
    return np.bincount(np.minimum(v * ROW_BINS // 255, ROW_BINS - 1).ravel(), minlength=ROW_BINS) / v.size


class LabelStats:
    """Per-class pixel counts and per-class counts by image row bin and by image column bin (vertical and
    horizontal position profiles; bins are fractions of the frame height / width, so frames of any size or
    aspect ratio compare)."""

    def __init__(self) -> None:
        self.pixels = np.zeros(NUM_CLASSES)
        self.rows = np.zeros((NUM_CLASSES, ROW_BINS))
        self.cols = np.zeros((NUM_CLASSES, ROW_BINS))
        self.images_with = np.zeros(NUM_CLASSES)
        self.n = 0

    def add(self, train_ids: np.ndarray) -> None:
        h, w = train_ids.shape
        rb = np.minimum(np.arange(h) * ROW_BINS // h, ROW_BINS - 1)
        cb = np.minimum(np.arange(w) * ROW_BINS // w, ROW_BINS - 1)
        t = train_ids.astype(np.int64)
        valid = t < NUM_CLASSES
        idx = (t * ROW_BINS + rb[:, None])[valid]
        c = np.bincount(idx, minlength=NUM_CLASSES * ROW_BINS).reshape(NUM_CLASSES, ROW_BINS)
        self.rows += c
        idx = (t * ROW_BINS + cb[None, :])[valid]
        self.cols += np.bincount(idx, minlength=NUM_CLASSES * ROW_BINS).reshape(NUM_CLASSES, ROW_BINS)
        self.pixels += c.sum(axis=1)
        self.images_with += c.sum(axis=1) > 0
        self.n += 1

    def freq(self) -> np.ndarray:
        return self.pixels / max(self.pixels.sum(), 1)

    def profile(self) -> np.ndarray:
        """Per class, the share of its pixels in each of 10 row bins (top to bottom)."""
        return self.rows / np.maximum(self.rows.sum(axis=1, keepdims=True), 1)

    def col_profile(self) -> np.ndarray:
        """Per class, the share of its pixels in each of 10 column bins (left to right)."""
        return self.cols / np.maximum(self.cols.sum(axis=1, keepdims=True), 1)

    def mean_row(self) -> np.ndarray:
        """Per class, the mean row of its pixels (0 top, 1 bottom); NaN for absent classes."""
        centers = (np.arange(ROW_BINS) + 0.5) / ROW_BINS
        return np.where(self.pixels > 0, (self.profile() * centers).sum(axis=1), np.nan)

    def mean_col(self) -> np.ndarray:
        """Per class, the mean column of its pixels (0 left, 1 right); NaN for absent classes."""
        centers = (np.arange(ROW_BINS) + 0.5) / ROW_BINS
        return np.where(self.pixels > 0, (self.col_profile() * centers).sum(axis=1), np.nan)


def profile_tv(a: np.ndarray, b: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per class, the total-variation distance between two position profiles (NaN where a class is absent)."""
    return np.where(present, 0.5 * np.abs(a - b).sum(axis=1), np.nan)


def undo_offset(day, night, labels: np.ndarray) -> np.ndarray:
    """Warp a day-frame map into the night frame by undoing the pair's zoom and principal-point shift."""
    cd, cn = day.camera, night.camera
    k = cd.f / cn.f
    m = np.array([[k, 0, cd.cx - k * cn.cx], [0, k, cd.cy - k * cn.cy]])
    h, w = labels.shape
    return cv2.warpAffine(labels, m, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=255)


def measure(n: int, size: tuple[int, int], seed: int) -> tuple[dict, dict]:
    """Generate the scenes and return (numbers, examples for figures)."""
    day_lab, night_lab = LabelStats(), LabelStats()
    hist = {"day": np.zeros(ROW_BINS), "night": np.zeros(ROW_BINS)}
    meanv = {"day": [], "night": []}
    over = {"day": np.zeros(3), "night": np.zeros(3)}  # V>=0.9 pixels: total, sky, near a light source
    agree, agree_raw, dyn_iou, dyn_changed = [], [], [], []
    invalid = []
    examples: dict[str, list] = {"pairs": [], "cityscapes": [], "night_val": [], "nightcity": []}
    n_pairs = max(n // 3, 10)
    for i in range(n):
        s = make_sample("train", i, seed, size)
        day_lab.add(s.frame.train_ids)
        if i < 3:
            examples["cityscapes"].append(s.frame)
    for i in range(n):
        s = make_sample("night_train", i, seed, size)
        night_lab.add(s.frame.train_ids)
        if i < 3:
            examples["nightcity"].append(s.frame)
    kernel = np.ones((5, 5), np.uint8)
    for i in range(n_pairs):
        s = make_sample("pairs", i, seed, size)
        d, nt = s.day, s.night
        for key, f in (("day", d), ("night", nt)):
            hist[key] += v_hist(f.image)
            meanv[key].append(f.image.max(axis=2).mean() / 255)
            o = f.image.max(axis=2) >= 230
            over[key][0] += o.sum()
            over[key][1] += (o & (f.train_ids == 10)).sum()
            if f.sources is not None:
                near = cv2.dilate(f.sources.astype(np.uint8), kernel, iterations=max(1, size[1] // 128)) > 0
                over[key][2] += (o & near).sum()
        warped = undo_offset(d, nt, d.train_ids)
        both = (warped <= 10) & (nt.train_ids <= 10)
        agree.append(float((warped[both] == nt.train_ids[both]).mean()))
        raw = (d.train_ids <= 10) & (nt.train_ids <= 10)
        agree_raw.append(float((d.train_ids[raw] == nt.train_ids[raw]).mean()))
        dd = np.isin(warped, DYNAMIC_CLASSES)
        dn = np.isin(nt.train_ids, DYNAMIC_CLASSES)
        dyn_iou.append(float((dd & dn).sum() / max((dd | dn).sum(), 1)))
        dyn_changed.append(float((dd ^ dn).mean()))
        if i < 4:
            examples["pairs"].append(s)
    for i in range(max(n // 6, 10)):
        s = make_sample("night_val", i, seed, size)
        invalid.append(float(s.frame.invalid.mean()))
        if i < 3:
            examples["night_val"].append(s.frame)
    bdd = LabelStats()
    halves = (LabelStats(), LabelStats())  # even / odd maps: how far two halves of the real set differ
    bdd_dir = REALDATA / "bdd100k_night" / "night_labels_train_id"
    for j, p in enumerate(sorted(bdd_dir.rglob("*.png"))):
        t = np.asarray(Image.open(p))
        bdd.add(t)
        halves[j % 2].add(t)
    f_day, f_night = day_lab.freq(), night_lab.freq()
    res = {
        "n_scenes": n, "n_pairs": n_pairs, "size": list(size), "seed": seed,
        "class_freq_day": f_day.tolist(), "class_freq_night": f_night.tolist(),
        "kl_cityscapes_day": kl(CITYSCAPES_FREQ, f_day), "kl_cityscapes_night": kl(CITYSCAPES_FREQ, f_night),
        "classes_present_day": int((f_day > 0).sum()), "classes_present_night": int((f_night > 0).sum()),
        "images_with_class_day": (day_lab.images_with / n).tolist(),
        "v_hist": {k: (v / n_pairs).tolist() for k, v in hist.items()},
        "mean_v": {k: float(np.mean(v)) for k, v in meanv.items()},
        "overexposed": {k: {"share_of_pixels": float(v[0] / (n_pairs * size[0] * size[1])),
                            "from_sky": float(v[1] / max(v[0], 1)), "near_light_source": float(v[2] / max(v[0], 1))}
                        for k, v in over.items()},
        "static_agreement": float(np.mean(agree)), "static_agreement_min": float(np.min(agree)),
        "static_agreement_raw": float(np.mean(agree_raw)),
        "dynamic_iou": float(np.mean(dyn_iou)), "dynamic_changed_share": float(np.mean(dyn_changed)),
        "invalid_share": float(np.mean(invalid)),
    }
    if bdd.n:
        both = (bdd.pixels > 0) & (night_lab.pixels > 0)
        res["bdd"] = {
            "n_maps": bdd.n, "class_freq": bdd.freq().tolist(), "maps_with_class": bdd.images_with.tolist(),
            "kl_bdd_synth_night": kl(bdd.freq(), f_night),
            "mean_row_bdd": bdd.mean_row().tolist(), "mean_row_synth_night": night_lab.mean_row().tolist(),
            "profile_tv": profile_tv(bdd.profile(), night_lab.profile(), both).tolist(),
            "profile_bdd": bdd.profile().tolist(), "profile_synth_night": night_lab.profile().tolist(),
            "mean_col_bdd": bdd.mean_col().tolist(), "mean_col_synth_night": night_lab.mean_col().tolist(),
            "col_profile_tv": profile_tv(bdd.col_profile(), night_lab.col_profile(), both).tolist(),
            "col_profile_bdd": bdd.col_profile().tolist(), "col_profile_synth_night": night_lab.col_profile().tolist(),
            "split_half_tv": profile_tv(halves[0].profile(), halves[1].profile(),
                                        (halves[0].pixels > 0) & (halves[1].pixels > 0)).tolist(),
            "split_half_col_tv": profile_tv(halves[0].col_profile(), halves[1].col_profile(),
                                            (halves[0].pixels > 0) & (halves[1].pixels > 0)).tolist(),
        }
    return res, examples


def _f(v: float, fmt: str = ".2f") -> str:
    return "-" if v is None or v != v else format(v, fmt)


def report(r: dict) -> str:
    """Markdown tables of the measured properties."""
    out = []
    out.append(f"Scenes: {r['n_scenes']} labelled day + {r['n_scenes']} labelled night + {r['n_pairs']} pairs at "
               f"{r['size'][0]}x{r['size'][1]}, seed {r['seed']}.\n\n")
    out.append(f"**Class frequencies.** KL(Cityscapes || synthetic day) = **{r['kl_cityscapes_day']:.3f} nats** "
               f"(night: {r['kl_cityscapes_night']:.3f}); classes present: {r['classes_present_day']}/19 by day, "
               f"{r['classes_present_night']}/19 by night.")
    if "bdd" in r:
        out.append(f" KL(BDD100K night || synthetic night) = {r['bdd']['kl_bdd_synth_night']:.3f} nats over "
                   f"{r['bdd']['n_maps']} real night label maps.")
    out.append("\n\n| class | Cityscapes | synth day | ratio | images with it | BDD night | synth night | "
               "mean row BDD | mean row synth | row-profile TV | mean col BDD | mean col synth | column-profile TV |"
               "\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in range(NUM_CLASSES):
        p, q = CITYSCAPES_FREQ[k] / CITYSCAPES_FREQ.sum(), r["class_freq_day"][k]
        row = f"\n| {CLASS_NAMES[k]} | {100 * p:.2f} % | {100 * q:.2f} % | {q / p:.2f} | " \
              f"{100 * r['images_with_class_day'][k]:.0f} % |"
        if "bdd" in r:
            b = r["bdd"]
            row += (f" {100 * b['class_freq'][k]:.2f} % | {100 * r['class_freq_night'][k]:.2f} % | "
                    f"{_f(b['mean_row_bdd'][k])} | {_f(b['mean_row_synth_night'][k])} | {_f(b['profile_tv'][k])} | "
                    f"{_f(b['mean_col_bdd'][k])} | {_f(b['mean_col_synth_night'][k])} | {_f(b['col_profile_tv'][k])} |")
        else:
            row += " - | - | - | - | - | - | - | - |"
        out.append(row)
    out.append("\n\nMean row: 0 = top of the frame, 1 = bottom; mean col: 0 = left edge, 1 = right edge. Row- and "
               "column-profile TV: total-variation distance between the class's distributions over 10 row bins "
               "(10 column bins), BDD100K night vs synthetic night (0 = same place in the frame, 1 = disjoint).\n")
    if "bdd" in r:
        b = r["bdd"]
        tv = np.array([b["profile_tv"], b["col_profile_tv"]], dtype=float)
        maps = np.array(b["maps_with_class"])
        m = ~np.isnan(tv).any(axis=0) & (maps >= 10)
        few = [f"{CLASS_NAMES[k]} ({int(maps[k])})" for k in range(NUM_CLASSES) if maps[k] < 10]

        half = np.array([b["split_half_tv"], b["split_half_col_tv"]], dtype=float)
        # farther than 0.2, and by >= 0.05 farther than two halves of the real maps are from each other (a
        # conservative noise scale: each half has half the maps, the synthetic side is 300 scenes)
        far = (tv > 0.2) & (tv >= np.nan_to_num(half) + 0.05)

        def names(sel) -> str:
            return ", ".join(f"{CLASS_NAMES[k]} ({tv[0, k]:.2f} / {tv[1, k]:.2f}; real halves {half[0, k]:.2f} / "
                             f"{half[1, k]:.2f})" for k in range(NUM_CLASSES) if sel[k]) or "none"

        out.append(f"\nOver the {int(m.sum())} classes in at least 10 of the {b['n_maps']} BDD100K maps: mean "
                   f"row-profile TV {np.mean(tv[0, m]):.2f}, mean column-profile TV {np.mean(tv[1, m]):.2f}; for "
                   f"scale, the even and the odd half of the real maps differ by {np.nanmean(half[0, m]):.2f} (rows) "
                   f"and {np.nanmean(half[1, m]):.2f} (columns) on the same classes. Per class (row / column TV, "
                   f"synthetic vs real; then real even vs odd maps):\n\n"
                   f"- same place (TV <= 0.2 on both): {names(m & (tv.max(0) <= 0.2))};\n"
                   f"- different place (TV > 0.2 and >= 0.05 above the real halves' TV, on rows or columns): "
                   f"{names(m & far.any(0))};\n"
                   f"- not resolved (TV > 0.2 but within 0.05 of, or below, the real halves' TV): "
                   f"{names(m & (tv.max(0) > 0.2) & ~far.any(0))};\n"
                   f"- too few real maps to judge (maps with the class): {', '.join(few)}.\n")
    out.append("\n**Exposure** (% of pixels per HSV V bin):\n\n| frame | mean V | " +
               " | ".join(f"[{b / 10:.1f},{(b + 1) / 10:.1f}{')' if b < ROW_BINS - 1 else ']'}" for b in range(ROW_BINS))
               + " |\n|---|---|" +
               "---|" * ROW_BINS)
    for key in ("night", "day"):
        out.append(f"\n| **synthetic {key}** (mean of {r['n_pairs']}) | {r['mean_v'][key]:.3f} | " +
                   " | ".join(f"{100 * v:.1f}" for v in r["v_hist"][key]) + " |")
    for name, (mv, hh) in REAL_EXPOSURE.items():
        out.append(f"\n| real: {name} | {mv:.3f} | " + " | ".join(f"{v:.1f}" for v in hh) + " |")
    od, on = r["overexposed"]["day"], r["overexposed"]["night"]
    out.append(f"\n\nOver-exposed pixels (V >= 0.9): day {100 * od['share_of_pixels']:.1f} % of the frame, "
               f"{100 * od['from_sky']:.0f} % of them sky; night {100 * on['share_of_pixels']:.1f} %, "
               f"{100 * on['from_sky']:.1f} % sky and {100 * on['near_light_source']:.0f} % on or next to a light "
               "source (lamp, head/tail light, traffic light, lit window or shop front).\n")
    out.append(f"\n**Pairs.** Static-class agreement after undoing the offset: **{100 * r['static_agreement']:.1f} %** "
               f"(worst pair {100 * r['static_agreement_min']:.1f} %; {100 * r['static_agreement_raw']:.1f} % without "
               f"undoing it). Dynamic objects differ: IoU of the day and night dynamic-class masks "
               f"{r['dynamic_iou']:.2f}, {100 * r['dynamic_changed_share']:.1f} % of pixels change dynamic/non-dynamic.\n")
    out.append(f"\n**Invalid** (too dark, `_gt_invIds` = 1) share of labelled night val pixels: "
               f"{100 * r['invalid_share']:.1f} %.\n")
    return "".join(out)


def _save_png(path: Path, img: np.ndarray) -> None:
    """Small PNG for the docs: 256-colour palette."""
    Image.fromarray(img).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)


def figures(ex: dict, r: dict, folder: Path) -> list[Path]:
    """Picture grids (pairs with labels, the three datasets) and the exposure / position plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nightseg.evaluation.report import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [np.concatenate([s.day.image, colorize(s.day.train_ids), s.night.image, colorize(s.night.train_ids)], 1)
            for s in ex["pairs"]]
    p = folder / "synthetic_pairs.png"
    _save_png(p, np.concatenate(rows, 0))
    written.append(p)
    tiles = []
    for f in ex["night_val"]:
        inv = f.image.copy()
        inv[f.invalid] = (inv[f.invalid] * 0.3 + np.array([255, 0, 255]) * 0.7).astype(np.uint8)
        tiles.append(np.concatenate([f.image, colorize(f.train_ids), inv], 1))
    p = folder / "synthetic_night_val.png"
    _save_png(p, np.concatenate(tiles, 0))
    written.append(p)
    tiles = [np.concatenate([a.image, colorize(a.train_ids), b.image, colorize(b.train_ids)], 1)
             for a, b in zip(ex["cityscapes"], ex["nightcity"])]
    p = folder / "synthetic_cityscapes_nightcity.png"
    _save_png(p, np.concatenate(tiles, 0))
    written.append(p)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    x = np.arange(ROW_BINS)
    names = list(REAL_EXPOSURE)
    for j, (key, real) in enumerate((("night", names[:2]), ("day", names[2:]))):
        ax[j].bar(x, 100 * np.array(r["v_hist"][key]), color="tab:blue" if key == "day" else "midnightblue",
                  alpha=0.7, label=f"synthetic {key}")
        for nm in real:
            ax[j].plot(x, REAL_EXPOSURE[nm][1], marker="o", label=f"real: {nm}")
        ax[j].set_xticks(x, [f"{b / 10:.1f}" for b in range(ROW_BINS)])
        ax[j].set_xlabel("HSV V bin (lower edge)")
        ax[j].set_ylabel("% of pixels")
        ax[j].legend(fontsize=7)
    fig.tight_layout()
    p = folder / "synthetic_exposure.png"
    save_figure(fig, p, dpi=90)
    written.append(p)
    if "bdd" in r:
        fig, ax = plt.subplots(1, 1, figsize=(10, 3.2))
        k = np.arange(NUM_CLASSES)
        ax.scatter(k, r["bdd"]["mean_row_bdd"], label="real BDD100K night (87 maps)", marker="o")
        ax.scatter(k, r["bdd"]["mean_row_synth_night"], label="synthetic night", marker="x")
        ax.set_xticks(k, CLASS_NAMES, rotation=60, fontsize=7)
        ax.set_ylabel("mean row (0 top, 1 bottom)")
        ax.invert_yaxis()
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = folder / "synthetic_rows.png"
        save_figure(fig, p, dpi=90)
        written.append(p)
        fig, ax = plt.subplots(1, 1, figsize=(10, 3.2))
        tv = np.array(r["bdd"]["profile_tv"], dtype=float), np.array(r["bdd"]["col_profile_tv"], dtype=float)
        few = np.array(r["bdd"]["maps_with_class"]) < 10
        alpha = np.where(few, 0.35, 1.0)
        for dx, t, c, lab in ((-0.2, tv[0], "tab:blue", "rows (vertical)"), (0.2, tv[1], "tab:orange",
                                                                           "columns (horizontal)")):
            for j in k:
                ax.bar(j + dx, t[j], width=0.4, color=c, alpha=alpha[j], label=lab if j == 0 else None)
        ax.scatter(k - 0.2, r["bdd"]["split_half_tv"], marker="_", color="k", s=60,
                   label="real even vs odd maps (noise scale)")
        ax.scatter(k + 0.2, r["bdd"]["split_half_col_tv"], marker="_", color="k", s=60)
        ax.set_xticks(k, CLASS_NAMES, rotation=60, fontsize=7)
        ax.set_ylabel("TV distance")
        ax.set_title("Position profiles, BDD100K night vs synthetic night (pale: class in < 10 real maps)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = folder / "synthetic_position_tv.png"
        save_figure(fig, p, dpi=90)
        written.append(p)
    return written


def domain_gap(steps: int, seed: int, size: tuple[int, int], n_train: int = 200, n_val: int = 60) -> dict:
    """Train a day model and a night model briefly and return their day / night val mIoU (see module doc)."""
    import torch
    import torch.nn.functional as F

    from nightseg.models import build_segmenter

    torch.set_num_threads(1)

    def load(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames = [make_sample(split, i, seed, size).frame for i in range(n)]
        x = torch.from_numpy(np.stack([f.image for f in frames])).permute(0, 3, 1, 2).float() / 255
        return x, torch.from_numpy(np.stack([f.train_ids for f in frames])).long()

    def miou(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
        model.eval()
        conf = torch.zeros(NUM_CLASSES * NUM_CLASSES)
        with torch.no_grad():
            for i in range(0, len(data[0]), 10):
                pred, tgt = model(data[0][i:i + 10]).argmax(1), data[1][i:i + 10]
                m = tgt < NUM_CLASSES
                conf += torch.bincount(tgt[m] * NUM_CLASSES + pred[m], minlength=NUM_CLASSES ** 2).float()
        conf = conf.reshape(NUM_CLASSES, NUM_CLASSES)
        iou = conf.diag() / (conf.sum(0) + conf.sum(1) - conf.diag()).clamp(min=1)
        return float(iou[conf.sum(1) > 0].mean() * 100)

    def train(data: tuple[torch.Tensor, torch.Tensor]) -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_segmenter("pspnet_tiny", NUM_CLASSES, pretrained=False)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(0)
        for step in range(steps):
            for pg in opt.param_groups:
                pg["lr"] = 1e-2 * (1 - step / steps) ** 0.9
            idx = torch.randint(0, len(data[0]), (4,), generator=g)
            x, y = data[0][idx], data[1][idx]
            if step % 2:
                x, y = x.flip(-1), y.flip(-1)
            loss = F.cross_entropy(model(x), y, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    day_val, night_val = load("val", n_val), load("night_val", n_val)
    day_model = train(load("train", n_train))
    night_model = train(load("night_train", n_train))
    r = {"steps": steps, "day_model_day": miou(day_model, day_val), "day_model_night": miou(day_model, night_val),
         "night_model_night": miou(night_model, night_val)}
    r["day_keeps"] = r["day_model_night"] / r["day_model_day"]
    r["night_reaches"] = r["night_model_night"] / r["day_model_day"]
    return r


def _nan_to_none(v):
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return None if isinstance(v, float) and v != v else v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="labelled day and night scenes (pairs: n/3)")
    ap.add_argument("--size", default="128x256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers as JSON")
    ap.add_argument("--figures", type=Path, help="write the picture grids and plots into this folder")
    ap.add_argument("--gap", type=int, metavar="STEPS", help="also run the quick domain-gap check (slow)")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    t0 = time.perf_counter()
    r, ex = measure(args.n, (h, w), args.seed)
    print(report(r))
    print(f"(measured in {time.perf_counter() - t0:.0f} s; static classes {list(STATIC_CLASSES)})")
    if args.figures:
        for p in figures(ex, r, args.figures):
            print(f"wrote {p} ({p.stat().st_size // 1024} KB)")
    if args.gap:
        g = domain_gap(args.gap, args.seed, (h, w))
        r["domain_gap"] = g
        print(f"\n**Domain gap** ({g['steps']} steps): day model {g['day_model_day']:.1f} mIoU by day, "
              f"{g['day_model_night']:.1f} at night (keeps {100 * g['day_keeps']:.0f} %, target < 50 %); night "
              f"model {g['night_model_night']:.1f} at night ({100 * g['night_reaches']:.0f} % of the day model's "
              "day mIoU, target >= 80 %).")
    if args.json:
        args.json.write_text(json.dumps(_nan_to_none(r), indent=1))


if __name__ == "__main__":
    main()
