"""Is any synthetic class identifiable by colour alone? (issue 3: "shape and context must matter")

A colour-only, per-pixel classifier sees one pixel's colour and nothing around it. If it reached a spatial
segmenter's IoU on a class, that class would be recognisable from its colour, not from its shape or context.
Three colour-only classifiers, all without any spatial input:

- ``lookup``: the Bayes colour classifier, a table of RGB (quantised to 32 levels per channel, falling back to
  16, 8 and 4 levels where a cell saw fewer than 5 training pixels) -> most frequent class. It maximises pixel
  accuracy among all colour-only classifiers (up to quantisation), so it is the strongest test.
- ``lookup-bal``: the same table, argmax of p(colour | class) (class prior removed): favours rare classes.
- ``mlp``: a small MLP (7 -> 64 -> 64 -> 19) on RGB + HSV (hue as cos/sin weighted by saturation, S, V),
  cross-entropy, Adam.

Protocols:

1. **cross-image** (the main number): fit on the pixels of N synthetic day train scenes (Cityscapes layout),
   score on M synthetic day val scenes (other cities, other scenes).
2. **within-image** (the honest reference against real data): only one real Cityscapes frame with labels is
   available (``../shared/realdata/cityscapes_samples/tiny_128x256_with_gt``, 128x256), so the classifiers
   are fitted on half of one image's 16x16 blocks (checkerboard) and scored on the other half, for the real
   frame and, with the same protocol, for each synthetic day val frame (confusions summed over frames).
   Within one image colour is far more telling than across images (one car, one facade, one light),
   so these numbers are higher than the cross-image ones; they are compared with each other only.

IoU in %, mIoU over the classes present in the scored labels. Single-threaded; about 1-2 minutes.

    .venv/bin/python bench/synthetic_colour_baseline.py [--train 300] [--val 60] [--size 128x256] [--seed 0]
        [--json colour.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from nightseg.core.classes import CLASS_NAMES, NUM_CLASSES
from nightseg.synthetic.generator import make_sample

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
REAL_CS = REALDATA / "cityscapes_samples" / "tiny_128x256_with_gt"
REAL_STEM = "frankfurt_000000_000294"
LEVELS = (32, 16, 8, 4)
MIN_COUNT = 5
SPATIAL_DAY = {"road": 93, "sidewalk": 55, "building": 72, "vegetation": 81, "sky": 76, "terrain": 34, "car": 69}
"""Per-class day-val IoU (%) of the spatial pspnet_tiny day model of docs/synthetic.md ("Domain gap", final
generator; 26.4 mIoU over the classes present); the classes it does not list scored lower."""
SPATIAL_DAY_MIOU = 26.4


def features(img: np.ndarray) -> np.ndarray:
    """Per pixel: R, G, B, S*cos(H), S*sin(H), S, V (all in [-1, 1] or [0, 1]); shape (H*W, 7) float32."""
    rgb = img.reshape(-1, 3).astype(np.float32) / 255
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float32)
    h, s, v = hsv[:, 0] * (np.pi / 90), hsv[:, 1] / 255, hsv[:, 2] / 255
    return np.concatenate([rgb, np.stack([s * np.cos(h), s * np.sin(h), s, v], 1)], 1)


class ColourLookup:
    """RGB cell -> class counts at several quantisations; predicts from the finest cell with enough pixels."""

    def __init__(self) -> None:
        self.counts = [np.zeros((q ** 3, NUM_CLASSES)) for q in LEVELS]

    @staticmethod
    def _cells(rgb: np.ndarray, q: int) -> np.ndarray:
        c = rgb.astype(np.int64) * q // 256
        return (c[:, 0] * q + c[:, 1]) * q + c[:, 2]

    def add(self, rgb: np.ndarray, y: np.ndarray) -> None:
        m = y < NUM_CLASSES
        rgb, y = rgb[m], y[m].astype(np.int64)
        for q, cnt in zip(LEVELS, self.counts):
            cnt += np.bincount(self._cells(rgb, q) * NUM_CLASSES + y, minlength=q ** 3 * NUM_CLASSES).reshape(
                q ** 3, NUM_CLASSES)

    def predict(self, rgb: np.ndarray, balanced: bool = False) -> np.ndarray:
        prior = self.counts[-1].sum(0)
        out = np.full(len(rgb), int(prior.argmax()))
        done = np.zeros(len(rgb), bool)
        for q, cnt in zip(LEVELS, self.counts):
            table = cnt / np.maximum(prior, 1) if balanced else cnt
            cell = self._cells(rgb, q)
            ok = ~done & (cnt.sum(1)[cell] >= MIN_COUNT)
            out[ok] = table[cell[ok]].argmax(1)
            done |= ok
        return out


def fit_mlp(x: np.ndarray, y: np.ndarray, steps: int, seed: int):
    """Train a 7-64-64-19 MLP with cross-entropy on (x, y); returns a predict(x) -> labels function."""
    import torch

    torch.manual_seed(seed)
    m = y < NUM_CLASSES
    xt, yt = torch.from_numpy(x[m]), torch.from_numpy(y[m].astype(np.int64))
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, NUM_CLASSES))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = 3e-3 * (1 - step / steps)
        idx = torch.randint(0, len(xt), (4096,), generator=g)
        loss = torch.nn.functional.cross_entropy(net((xt[idx] - mean) / std), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    def predict(xs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net((torch.from_numpy(xs) - mean) / std).argmax(1).numpy()

    return predict


def confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    m = y < NUM_CLASSES
    return np.bincount(y[m].astype(np.int64) * NUM_CLASSES + pred[m], minlength=NUM_CLASSES ** 2).reshape(
        NUM_CLASSES, NUM_CLASSES)


def iou(conf: np.ndarray) -> tuple[list, float]:
    """Per-class IoU in % (NaN for classes absent from the labels) and their mean."""
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0
    v = np.where(present, 100 * inter / np.maximum(union, 1), np.nan)
    return v.tolist(), float(np.nanmean(v))


def checkerboard(shape: tuple[int, int], block: int = 16) -> np.ndarray:
    r, c = np.indices(shape) // block
    return ((r + c) % 2 == 0).ravel()


def within_image(frames: list[tuple[np.ndarray, np.ndarray]], mlp_steps: int, seed: int) -> dict:
    """Fit on the even 16x16 blocks of each image, score on the odd ones; confusions summed over images."""
    conf = {k: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for k in ("lookup", "lookup-bal", "mlp")}
    for img, lab in frames:
        tr = checkerboard(lab.shape)
        rgb, y, x = img.reshape(-1, 3), lab.ravel(), features(img)
        lk = ColourLookup()
        lk.add(rgb[tr], y[tr])
        conf["lookup"] += confusion(y[~tr], lk.predict(rgb[~tr]))
        conf["lookup-bal"] += confusion(y[~tr], lk.predict(rgb[~tr], balanced=True))
        conf["mlp"] += confusion(y[~tr], fit_mlp(x[tr], y[tr], mlp_steps, seed)(x[~tr]))
    return {k: dict(zip(("iou", "miou"), iou(c))) for k, c in conf.items()}


def measure(n_train: int, n_val: int, size: tuple[int, int], seed: int, mlp_steps: int = 3000) -> dict:
    import torch

    torch.set_num_threads(1)
    train = [make_sample("train", i, seed, size).frame for i in range(n_train)]
    val = [(f.image, f.train_ids) for f in (make_sample("val", i, seed, size).frame for i in range(n_val))]
    lk = ColourLookup()
    for f in train:
        lk.add(f.image.reshape(-1, 3), f.train_ids.ravel())
    # MLP: a fixed random subsample of the train pixels (every pixel of every frame would not add much)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for f in train:
        pick = rng.choice(f.train_ids.size, size=min(4096, f.train_ids.size), replace=False)
        xs.append(features(f.image)[pick])
        ys.append(f.train_ids.ravel()[pick])
    mlp = fit_mlp(np.concatenate(xs), np.concatenate(ys), mlp_steps, seed)
    rgb = np.concatenate([im.reshape(-1, 3) for im, _ in val])
    y = np.concatenate([lab.ravel() for _, lab in val])
    x = np.concatenate([features(im) for im, _ in val])
    cross = {"lookup": iou(confusion(y, lk.predict(rgb))), "lookup-bal": iou(confusion(y, lk.predict(rgb, True))),
             "mlp": iou(confusion(y, mlp(x)))}
    res = {"n_train": n_train, "n_val": n_val, "size": list(size), "seed": seed,
           "val_share": (np.bincount(y[y < NUM_CLASSES], minlength=NUM_CLASSES) / (y < NUM_CLASSES).sum()).tolist(),
           "cross_image": {k: {"iou": v[0], "miou": v[1]} for k, v in cross.items()},
           "within_synthetic": within_image(val, 300, seed)}
    img_p = REAL_CS / "leftImg8bit" / f"{REAL_STEM}_leftImg8bit.png"
    if img_p.is_file():
        real = (np.asarray(Image.open(img_p).convert("RGB")),
                np.asarray(Image.open(REAL_CS / "gtFine" / f"{REAL_STEM}_gtFine_labelTrainIds.png")))
        res["within_real_cityscapes"] = within_image([real], 300, seed)
    return res


def _f(v) -> str:
    return "-" if v is None or v != v else f"{v:.0f}"


def report(r: dict) -> str:
    c, ws, wr = r["cross_image"], r["within_synthetic"], r.get("within_real_cityscapes")
    out = [f"Colour-only classifiers: fitted on {r['n_train']} synthetic day train scenes, scored on "
           f"{r['n_val']} day val scenes ({r['size'][0]}x{r['size'][1]}, seed {r['seed']}). IoU in %.\n\n"
           "| class | val share | cross-image lookup | lookup-bal | mlp | spatial pspnet_tiny | "
           "within-image synth (lookup / mlp) | within-image real Cityscapes (lookup / mlp) |\n"
           "|---|---|---|---|---|---|---|---|"]
    for k, name in enumerate(CLASS_NAMES):
        real = f"{_f(wr['lookup']['iou'][k])} / {_f(wr['mlp']['iou'][k])}" if wr else "-"
        out.append(f"\n| {name} | {100 * r['val_share'][k]:.2f} % | {_f(c['lookup']['iou'][k])} | "
                   f"{_f(c['lookup-bal']['iou'][k])} | {_f(c['mlp']['iou'][k])} | {SPATIAL_DAY.get(name, '-')} | "
                   f"{_f(ws['lookup']['iou'][k])} / {_f(ws['mlp']['iou'][k])} | {real} |")
    real = f"{wr['lookup']['miou']:.1f} / {wr['mlp']['miou']:.1f}" if wr else "-"
    out.append(f"\n| **mIoU** | | **{c['lookup']['miou']:.1f}** | {c['lookup-bal']['miou']:.1f} | "
               f"**{c['mlp']['miou']:.1f}** | {SPATIAL_DAY_MIOU} | {ws['lookup']['miou']:.1f} / "
               f"{ws['mlp']['miou']:.1f} | {real} |\n")
    if wr:
        common = ~np.isnan(np.array(wr["lookup"]["iou"], dtype=float))
        sub = {k: np.nanmean(np.array(ws[k]["iou"], dtype=float)[common]) for k in ("lookup", "mlp")}
        out.append(f"\nWithin-image mIoU over the {int(common.sum())} classes of the real frame: synthetic "
                   f"{sub['lookup']:.1f} / {sub['mlp']:.1f}, real {wr['lookup']['miou']:.1f} / "
                   f"{wr['mlp']['miou']:.1f} (lookup / mlp).\n")
    best = np.nan_to_num(np.array([c[k]["iou"] for k in c], dtype=float), nan=-1).max(axis=0)
    above = [f"{CLASS_NAMES[k]} ({best[k]:.0f})" for k in range(NUM_CLASSES) if best[k] >= 50]
    out.append(f"\nClasses at or above 50 IoU from colour alone (best cross-image classifier): "
               f"{', '.join(above) or 'none'}.\n")
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=300, help="synthetic day train scenes to fit on")
    ap.add_argument("--val", type=int, default=60, help="synthetic day val scenes to score on")
    ap.add_argument("--size", default="128x256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    t0 = time.perf_counter()
    r = measure(args.train, args.val, (h, w), args.seed)
    print(report(r))
    print(f"(measured in {time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1, default=lambda v: None).replace("NaN", "null"))


if __name__ == "__main__":
    main()
