"""Lightning DataModules over the NightSeg datasets.

`SegmentationDataModule` serves one dataset by name (train with the dataset's preset joint transform,
val/test untransformed at full size); `DomainAdaptationDataModule` combines a labelled source (e.g.
Cityscapes) and a target (e.g. Dark Zurich pairs) into ``{"source": batch, "target": batch}`` training
batches, validating on the target's val set, as the day->night adaptation methods train.

Loaders are deterministic by `seed`: each DataLoader gets its own ``torch.Generator`` (shuffling order
and the per-worker torch seeds that drive the random crops and flips derive from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from nightseg.data import build_dataset
from nightseg.data.transforms import preset_transform

VAL_DATASET = {"dark_zurich_pairs": "dark_zurich"}
"""Datasets whose val set is another loader (the Dark Zurich pairs validate on labelled Dark Zurich val)."""


class SegmentationDataModule(L.LightningDataModule):
    """Train/val/test loaders for dataset `name` at `root`.

    ``crop_size``/``scale_range``/``hflip`` override the dataset's preset (`TRAIN_PRESETS`);
    ``dataset_kw`` go to every dataset built (e.g. ``{"conditions": "night"}`` for ACDC). A split set to
    None is not served.
    """

    def __init__(
        self,
        name: str,
        root: str | Path,
        *,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 2,
        crop_size: int | tuple[int, int] | None = None,
        scale_range: tuple[float, float] | None = None,
        hflip: bool = True,
        seed: int = 0,
        skip_bad: bool = False,
        pin_memory: bool = False,
        dataset_kw: dict[str, Any] | None = None,
        val_root: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.name, self.root = name, Path(root)
        self.val_root = Path(val_root) if val_root else self.root
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory, self.seed, self.skip_bad = num_workers, pin_memory, seed, skip_bad
        overrides = {k: v for k, v in {"crop_size": crop_size, "scale_range": scale_range}.items() if v is not None}
        self.train_transform = preset_transform(name, hflip=hflip, **overrides)
        self.dataset_kw = dict(dataset_kw or {})
        self.datasets: dict[str, Dataset] = {}

    def build(self, stage: str) -> Dataset | None:
        """Build (once) and return the dataset of `stage` ('train', 'val' or 'test'), or None if not served."""
        split = self.splits[stage]
        if split is None:
            return None
        if stage not in self.datasets:
            if stage == "train":
                ds = build_dataset(self.name, self.root, split, transform=self.train_transform,
                                   skip_bad=self.skip_bad, **self.dataset_kw)
            else:
                name = VAL_DATASET.get(self.name, self.name)
                kw = self.dataset_kw if name == self.name else {}
                ds = build_dataset(name, self.val_root, split, skip_bad=self.skip_bad, **kw)
            self.datasets[stage] = ds
        return self.datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for part in wanted.get(stage or "fit", ("train", "val")):
            self.build(part)

    def _loader(self, stage: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.build(stage)
        if dataset is None:
            raise ValueError(f"{self.name}: no {stage} split configured")
        generator = torch.Generator().manual_seed(self.seed + {"train": 0, "val": 1, "test": 2}[stage])
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, drop_last=shuffle, generator=generator,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)


class DomainAdaptationDataModule(L.LightningDataModule):
    """Labelled source + unlabelled target: train batches ``{"source": ..., "target": ...}``.

    The two train loaders are cycled together until the longer one is exhausted (Lightning's
    ``max_size_cycle``); validation and test use the target module's loaders.
    """

    def __init__(self, source: SegmentationDataModule, target: SegmentationDataModule) -> None:
        super().__init__()
        self.source, self.target = source, target

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.source.build("train")
        self.target.setup(stage)

    def train_dataloader(self) -> CombinedLoader:
        loaders = {"source": self.source.train_dataloader(), "target": self.target.train_dataloader()}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return self.target.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.target.test_dataloader()
