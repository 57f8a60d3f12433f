"""Speed of the synthetic street-scene generator (`nightseg synth`) on ONE CPU core.

Times, at 256x512 (issue 3 target: >= 20 day+night pairs per second on one core):
  - a day/night pair rendered in memory (scene layout + two traffic sets + day render + night render),
  - the same plus PNG encoding and atomic writing of both frames,
  - a labelled day scene and a labelled night scene (in memory),
and the wall time of whole presets written to a temporary folder (tiny by default; add small with
``--presets tiny,small``). OpenCV and BLAS are limited to one thread. Each item is timed `--repeats`
times in a row; "best" is the mean over items of each item's fastest run (the least disturbed by
other processes on a shared machine), "median" the median of all runs.

``--profile`` also prints the CPU time of each stage of a pair (best of 4 repeats over 8 pairs).

    .venv/bin/python bench/bench_synthetic.py [--size 256x512] [--pairs 20] [--repeats 3] [--presets tiny]
        [--profile]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from nightseg.core.io import write_png
from nightseg.synthetic.generator import generate, make_sample
from nightseg.synthetic.render import noise_tiles


def _time(fn, n: int, repeats: int) -> tuple[float, float, float]:
    """Time n items, each `repeats` times in a row (same item, same output).

    Returns seconds per item: the mean over items of each item's fastest run (the least disturbed by
    other processes on a shared machine), the median of all runs, and the mean CPU time of all runs.
    """
    best, walls, cpus = [], [], []
    for i in range(n):
        times = []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn(i)
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        best.append(min(times))
        walls.extend(times)
    return float(np.mean(best)), statistics.median(walls), float(np.mean(cpus))


def profile_stages(h: int, w: int, n: int = 8, repeats: int = 4) -> dict[str, float]:
    """CPU ms per pair spent in each stage (build, merge, rasterise, ...), best of `repeats`."""
    import nightseg.synthetic.render as R
    import nightseg.synthetic.scene as SC

    spent: dict[str, float] = {}
    stages = {"layout + 2 traffic sets": (SC, "build_scene"), "merge primitives": (R, "merge"),
              "rasterise": (R, "rasterize"), "facades": (R, "_facade"), "surface (incl. the two above)": (R, "surface"),
              "day shading": (R, "shade_day"), "day exposure": (R, "expose_day"), "night shading": (R, "shade_night"),
              "night exposure, noise, bloom": (R, "expose_night")}
    originals = {}
    for name, (mod, fn) in stages.items():
        f = getattr(mod, fn)
        originals[(mod, fn)] = f

        def timed(*a, _f=f, _name=name, **k):
            c = time.process_time()
            out = _f(*a, **k)
            spent[_name] = spent.get(_name, 0.0) + time.process_time() - c
            return out

        setattr(mod, fn, timed)
    import nightseg.synthetic.generator as S

    S.build_scene = SC.build_scene
    best: dict[str, float] = {}
    try:
        for _ in range(repeats):
            spent.clear()
            c0 = time.process_time()
            for i in range(n):
                make_sample("pairs", i, seed=1, size=(h, w))
            spent["TOTAL"] = time.process_time() - c0
            for k, v in spent.items():
                best[k] = min(best.get(k, 1e9), v / n * 1e3)
    finally:
        for (mod, fn), f in originals.items():
            setattr(mod, fn, f)
        S.build_scene = originals[(SC, "build_scene")]
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--pairs", type=int, default=20, help="items per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", default="tiny", help="comma-separated presets to time end to end ('' for none)")
    ap.add_argument("--profile", action="store_true", help="also print the CPU time of each stage")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    h, w = (int(v) for v in args.size.lower().split("x"))
    noise_tiles(h, w)  # built once per process and size
    make_sample("pairs", 0, size=(h, w))  # warm-up
    print(f"synthetic generator, one core, {h}x{w}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))

    def pair(i: int) -> None:
        make_sample("pairs", i, seed=1, size=(h, w))

    def pair_write(i: int) -> None:
        s = make_sample("pairs", i, seed=1, size=(h, w))
        write_png(tmp / f"d{i}.png", s.day.image)
        write_png(tmp / f"n{i}.png", s.night.image)

    rows = [
        ("day+night pair, in memory", pair),
        ("day+night pair + PNG writing", pair_write),
        ("labelled day scene, in memory", lambda i: make_sample("train", i, seed=1, size=(h, w))),
        ("labelled night scene, in memory", lambda i: make_sample("night_train", i, seed=1, size=(h, w))),
    ]
    print(f"{'case':36s} {'best ms':>8s} {'median ms':>10s} {'CPU ms':>7s} {'best /s':>8s} {'median /s':>10s}")
    for name, fn in rows:
        best, med, cpu = _time(fn, args.pairs, args.repeats)
        print(f"{name:36s} {best * 1e3:8.1f} {med * 1e3:10.1f} {cpu * 1e3:7.1f} {1 / best:8.1f} {1 / med:10.1f}")
    if args.profile:
        print("CPU ms per pair by stage (best of 4 repeats over 8 pairs):")
        for k, v in profile_stages(h, w).items():
            print(f"  {k:32s} {v:6.1f}")
    for preset in [p for p in args.presets.split(",") if p]:
        out = tmp / preset
        t0 = time.perf_counter()
        m = generate(out, preset=preset, progress=False)
        dt = time.perf_counter() - t0
        n = sum(m["counts"].values())
        print(f"preset {preset}: {n} scenes at {m['size'][0]}x{m['size'][1]} written in {dt:.1f} s "
              f"({n / dt:.1f} scenes/s, 1 process)")


if __name__ == "__main__":
    main()
