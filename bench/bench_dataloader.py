"""DataLoader throughput: images/s at 1024x512 (PNG decode + label mapping + joint scale-crop-flip).

Builds a temporary Cityscapes-layout copy of N 1024x512 frames (the real Cityscapes val frames from
../shared/realdata, downscaled, with real gtFine labelIds upscaled; noise images if those are absent)
and times full epochs of `Cityscapes(..., transform=train_transform(512, (0.5, 1.0)))` through a
DataLoader. Also times the batched strong photometric augmentation on the same batches (CPU).

    .venv/bin/python bench/bench_dataloader.py [--n 48] [--workers 2] [--batch 8] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nightseg.core.io import write_png
from nightseg.data import Cityscapes, train_transform
from nightseg.data.photometric import strong_augment

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "cityscapes_samples"
W, H = 1024, 512


def source_frames() -> tuple[list[np.ndarray], np.ndarray, str]:
    """Return 1024x512 RGB frames, a 1024x512 labelIds map, and where they came from."""
    full = sorted((REAL / "fullres_val_no_gt").glob("*_leftImg8bit.png"))
    lab = REAL / "tiny_128x256_with_gt/gtFine/frankfurt_000000_000294_gtFine_labelIds.png"
    if full and lab.is_file():
        frames = [np.asarray(Image.open(p).convert("RGB").resize((W, H), Image.BILINEAR)) for p in full]
        label = np.asarray(Image.open(lab).resize((W, H), Image.NEAREST))
        return frames, label, "real Cityscapes val frames"
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (H // 16, W // 16, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
    return [smooth], np.full((H, W), 7, dtype=np.uint8), "synthetic noise (../shared absent)"


def build_copy(root: Path, n: int) -> str:
    frames, label, origin = source_frames()
    for i in range(n):
        stem = f"bench/bench_{i:06d}_000019"
        frame = frames[i % len(frames)]
        frame = np.roll(frame, 7 * i, axis=1)  # distinct files, same content statistics
        write_png(root / "leftImg8bit/train" / f"{stem}_leftImg8bit.png", frame)
        write_png(root / "gtFine/train" / f"{stem}_gtFine_labelIds.png", np.roll(label, 7 * i, axis=1))
    return origin


def time_loader(ds: Cityscapes, workers: int, batch: int, epochs: int) -> tuple[float, float, list[torch.Tensor]]:
    """Return (images/s over all epochs incl. worker start-up, images/s after the first batch, batches)."""
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    seen, batches = 0, []
    start = time.perf_counter()
    first = None
    for _ in range(epochs):
        for b in loader:
            if first is None:
                first = time.perf_counter()
            seen += b["image"].shape[0]
            if len(batches) < 4:
                batches.append(b["image"])
    end = time.perf_counter()
    steady = (seen - batch) / (end - first) if first and seen > batch else float("nan")
    return seen / (end - start), steady, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="frames in the temporary copy")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        origin = build_copy(root, args.n)
        print(f"{args.n} frames {W}x{H} ({origin}); crop 512 at scale 0.5-1.0 + flip; batch {args.batch}; "
              f"torch threads {torch.get_num_threads()}; CPUs {os.cpu_count()}")
        plain = Cityscapes(root, "train")
        aug = Cityscapes(root, "train", transform=train_transform(512, (0.5, 1.0)))
        for name, ds, workers in (("decode only", plain, args.workers), ("decode + augment", aug, args.workers),
                                  ("decode + augment", aug, 0)):
            total, steady, batches = time_loader(ds, workers, args.batch, args.epochs)
            print(f"{name:18s} workers={workers}: {total:6.1f} images/s overall, {steady:6.1f} images/s steady")
        g = torch.Generator().manual_seed(0)
        strong_augment(batches[0], g)
        start = time.perf_counter()
        for b in batches:
            strong_augment(b, g)
        elapsed = time.perf_counter() - start
        count = sum(b.shape[0] for b in batches)
        print(f"strong photometric augmentation (CPU, 512x512 crops): {count / elapsed:6.1f} images/s")


if __name__ == "__main__":
    main()
