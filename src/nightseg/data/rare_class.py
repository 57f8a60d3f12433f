"""Rare class sampling (RCS) of DAFormer (Hoyer et al., CVPR 2022, Sec. 3.4) as a source-stream wrapper.

With the source class frequencies ``f_c`` (pixel shares over the whole source set), a sample first draws a
class with

    P(c) = exp((1 - f_c) / T) / sum_c' exp((1 - f_c') / T)              (Eq. 4, T = 0.01)

and then, uniformly, a source image that contains at least ``min_pixels`` pixels of c (Eq. 5; DAFormer's
``rcs_min_pixels = 3000``); the random crop is redrawn up to 10 times until it holds more than
``min_crop_pixels`` of c (DAFormer's code). Classes absent from the source never get drawn.

The engine's step streams map a global position to ``dataset[perm[p mod N]]`` with the global generators
seeded by ``(seed, stream, position)`` (`nightseg.data.streams.StepStreams`): the wrapper ignores the index
and draws class, image and crop from that generator, so what a step sees stays a pure function of
(seed, step) and resume is exact. Use it as a stream's dataset::

    source: {dataset: "nightseg.data.rare_class:rare_class_sampling", root: cityscapes, crop: [512, 512],
             options: {dataset: cityscapes, temperature: 0.01, min_pixels: 3000}}

The per-image class counts are computed once when the stream is built, straight from the label files
(no augmentation), like ULCA's ``class_frequencies: source``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from nightseg.core.classes import NUM_CLASSES
from nightseg.core.errors import UserError
from nightseg.core.io import read_label
from nightseg.data.registry import build_dataset


def rcs_probabilities(frequencies: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Return P(c) = softmax((1 - f_c) / T) over the classes with ``f_c > 0`` (0 for absent classes), float64;
    `frequencies` are pixel counts or shares (normalised here). DAFormer Eq. 4."""
    freq = torch.as_tensor(frequencies, dtype=torch.float64)
    if temperature <= 0:
        raise ValueError(f"rare class sampling temperature must be > 0, got {temperature}")
    present = freq > 0
    if not bool(present.any()):
        raise ValueError("rare class sampling: no class has any source pixel")
    share = freq / freq.sum()
    logits = torch.where(present, (1.0 - share) / temperature, torch.full_like(share, -torch.inf))
    return torch.softmax(logits, dim=0)


def per_image_counts(dataset: Dataset, num_classes: int = NUM_CLASSES, progress: bool = True) -> torch.Tensor:
    """Return the pixel count of each class in each sample ``[N, C]`` (int64): from the label files when the
    dataset lists them (`SegmentationDataset`), else from ``dataset[i]["label"]``."""
    records, label_map = getattr(dataset, "records", None), getattr(dataset, "label_map", None)
    counts = torch.zeros(len(dataset), num_classes, dtype=torch.int64)
    for i in tqdm(range(len(dataset)), desc="rare class sampling: class counts", disable=not progress, leave=False):
        if records is not None and label_map is not None:
            if records[i].label is None:
                continue
            label = torch.from_numpy(label_map.apply(read_label(records[i].label)).astype("int64"))
        else:
            label = torch.as_tensor(dataset[i]["label"])
        flat = label.reshape(-1).long()
        flat = flat[(flat >= 0) & (flat < num_classes)]
        counts[i] = torch.bincount(flat, minlength=num_classes)
    return counts


class RareClassSampling(Dataset):
    """A source dataset sampled by DAFormer's rare class sampling; see the module docstring."""

    def __init__(self, dataset: Dataset, counts: torch.Tensor, temperature: float = 0.01, min_pixels: int = 3000,
                 min_crop_pixels: int = 0, retries: int = 10) -> None:
        self.dataset = dataset
        self.counts = counts
        self.probs = rcs_probabilities(counts.sum(dim=0), temperature)
        self.min_crop_pixels = int(min_crop_pixels)
        self.retries = max(1, int(retries))
        self.samples = {c: torch.nonzero(counts[:, c] >= max(1, min_pixels)).flatten()
                        for c in range(counts.shape[1]) if self.probs[c] > 0}
        empty = [c for c, s in self.samples.items() if len(s) == 0]
        for c in empty:  # a class present but nowhere with min_pixels: fall back to every image showing it
            self.samples[c] = torch.nonzero(counts[:, c] > 0).flatten()

    def __len__(self) -> int:
        return len(self.dataset)

    def draw(self, generator: torch.Generator | None = None) -> tuple[int, int]:
        """Return ``(class, sample index)`` drawn with P(c) and uniformly among the images holding c."""
        c = int(torch.multinomial(self.probs, 1, generator=generator))
        candidates = self.samples[c]
        return c, int(candidates[int(torch.randint(len(candidates), (1,), generator=generator))])

    def __getitem__(self, index: int) -> dict[str, Any]:
        c, i = self.draw()
        for _ in range(self.retries):  # redraw the random crop until it shows the class (DAFormer's code)
            sample = self.dataset[i]
            if self.min_crop_pixels <= 0 or int((torch.as_tensor(sample["label"]) == c).sum()) > self.min_crop_pixels:
                break
        return sample


def rare_class_sampling(root: str | Path, split: str, transform: Callable | None = None, *, dataset: str = "cityscapes",
                        temperature: float = 0.01, min_pixels: int = 3000, min_crop_pixels: int = 0,
                        num_classes: int = NUM_CLASSES, progress: bool = True, **options: Any) -> RareClassSampling:
    """Return `dataset` (a registry name or ``module:factory``) at `root`/`split` wrapped by `RareClassSampling`;
    the stream's dataset factory (``options`` are the wrapper's keys plus the inner dataset's)."""
    if ":" in dataset:
        from nightseg.core.factory import import_factory

        inner = import_factory(dataset, "dataset")(root, split, transform=transform, **options)
    else:
        inner = build_dataset(dataset, Path(root), split, transform=transform, **options)
    counts = per_image_counts(inner, num_classes, progress)
    if int(counts.sum()) == 0:
        raise UserError(f"{root}: rare class sampling found no labelled pixel in {dataset} {split}")
    try:
        return RareClassSampling(inner, counts, temperature, min_pixels, min_crop_pixels)
    except ValueError as exc:
        raise UserError(f"data.source.options: {exc}") from None


__all__ = ["RareClassSampling", "per_image_counts", "rare_class_sampling", "rcs_probabilities"]
