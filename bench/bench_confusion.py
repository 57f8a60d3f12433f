"""Time one confusion-matrix update with a 1024x2048 prediction / label pair on one CPU core.

    .venv/bin/python bench/bench_confusion.py [--repeats 21] [--threads 1] [--device cpu]

Prints the median (and minimum) milliseconds per update for: uint8 inputs (as read from PNGs), with an invalid
mask, int64 inputs (the training data contract / argmax output), the exposure-binned variant from a
uint8 and a float image, and a naive boolean-mask + int64 bincount baseline for comparison.
The issue's target is <= 20 ms for the plain update on one core.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from nightseg.evaluation.exposure import ExposureConfusion
from nightseg.evaluation.metrics import ConfusionMatrix

H, W, C = 1024, 2048, 19


def make_inputs(device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A structured label map (blocks of classes, 5% ignore), a prediction that is ~80% right, an image."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, C, (H // 64, W // 64), generator=g, dtype=torch.uint8)
    target = blocks.repeat_interleave(64, 0).repeat_interleave(64, 1)
    target[torch.rand(H, W, generator=g) < 0.05] = 255
    pred = target.clone()
    wrong = torch.rand(H, W, generator=g) < 0.2
    pred[wrong] = torch.randint(0, C, (int(wrong.sum()),), generator=g, dtype=torch.uint8)
    pred[pred == 255] = 0
    image = torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8)
    invalid = torch.zeros(H, W, dtype=torch.bool)
    invalid[: H // 4] = True
    out = {"target": target, "pred": pred, "image": image, "invalid": invalid}
    return {k: v.to(device) for k, v in out.items()}


def time_ms(fn: Callable[[], object], repeats: int, device: str) -> tuple[float, float]:
    """Return (median, min) milliseconds of `fn` over `repeats` calls after one warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def naive_update(counts: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> None:
    """The textbook version: boolean mask, int64 index, bincount."""
    keep = target != 255
    index = target[keep].long() * C + pred[keep].long()
    counts += torch.bincount(index, minlength=C * C).view(C, C)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = make_inputs(args.device)
    pred64, target64 = x["pred"].long(), x["target"].long()
    image_f = x["image"].float() / 255
    cm = ConfusionMatrix(C, device=args.device)
    ec = ExposureConfusion(C, device=args.device)
    naive_counts = torch.zeros(C, C, dtype=torch.int64, device=args.device)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("ConfusionMatrix.update uint8", lambda: cm.update(x["pred"], x["target"])),
        ("ConfusionMatrix.update uint8 + invalid mask", lambda: cm.update(x["pred"], x["target"], x["invalid"])),
        ("ConfusionMatrix.update int64", lambda: cm.update(pred64, target64)),
        ("ExposureConfusion.update uint8 image", lambda: ec.update(x["pred"], x["target"], x["image"])),
        (
            "ExposureConfusion.update uint8 image + invalid",
            lambda: ec.update(x["pred"], x["target"], x["image"], invalid=x["invalid"]),
        ),
        ("ExposureConfusion.update float image", lambda: ec.update(x["pred"], x["target"], image_f)),
        ("naive mask + int64 bincount (baseline)", lambda: naive_update(naive_counts, x["pred"], x["target"])),
    ]
    print(f"{H}x{W} pair, {C} classes, device={args.device}, torch threads={torch.get_num_threads()}, "
          f"{args.repeats} runs: median (min) ms per update")
    for name, fn in cases:
        med, best = time_ms(fn, args.repeats, args.device)
        print(f"  {name:<48} {med:8.2f} ms ({best:.2f})")


if __name__ == "__main__":
    main()
