"""Step-indexed training streams: the data a training step sees is a pure function of the seed and the step.

A config names up to two training streams (``data.source``, ``data.target``) and a validation set
(``data.val``). `StreamData` turns them into Lightning dataloaders: an infinite `StepSampler` hands out
global sample *positions*; position ``p`` of a stream is sample ``perm_e[p mod N]`` of epoch
``e = p // N`` with a permutation seeded by ``(seed, stream, e)``, and the random augmentation of that
sample is seeded by ``(seed, stream, p)``. With DDP, rank ``r`` of ``W`` takes positions
``(step*W + r)*B ... + B-1``. Resume is therefore exact and independent of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.transforms import v2

from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.core.factory import import_factory
from nightseg.core.seeding import seeded, step_seed
from nightseg.data.registry import build_dataset
from nightseg.data.transforms import Resize, train_steps

STREAMS = ("source", "target")


class StepStreams(Dataset):
    """Maps a global sample position to one sample of every stream: ``{name: sample}``.

    Position ``p`` of a stream of ``N`` samples is its sample ``perm_e[p % N]`` in epoch ``e = p // N``;
    the permutation is seeded by ``(seed, stream index, e)`` and the sample's random augmentation by
    ``(seed, stream index, p)``. So the data seen at each step is fixed by the seed alone.
    """

    def __init__(self, streams: dict[str, Dataset], seed: int) -> None:
        if not streams:
            raise ValueError("StepStreams needs at least one stream")
        self.streams = streams
        self.seed = int(seed)
        self._perms: dict[tuple[int, int], torch.Tensor] = {}

    def __len__(self) -> int:  # informative only: the sampler is infinite
        return max(len(ds) for ds in self.streams.values())

    def _perm(self, stream: int, n: int, epoch: int) -> torch.Tensor:
        key = (stream, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            gen = torch.Generator().manual_seed(step_seed(self.seed, 1, stream, epoch))
            self._perms[key] = torch.randperm(n, generator=gen)
        return self._perms[key]

    def __getitem__(self, position: int) -> dict[str, Any]:
        out = {}
        for i, (name, dataset) in enumerate(self.streams.items()):
            n = len(dataset)
            epoch, offset = divmod(int(position), n)
            index = int(self._perm(i, n, epoch)[offset])
            with seeded(step_seed(self.seed, 2, i, int(position))):
                out[name] = dataset[index]
        return out


class StepSampler(Sampler[int]):
    """Infinite sampler of global positions for one rank, starting at training step `start_step`.

    Step ``s`` of rank ``r`` (of ``world_size``) gets positions ``(s*W + r)*B`` to ``(s*W + r)*B + B - 1``.
    """

    def __init__(self, batch_size: int, start_step: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.batch_size = int(batch_size)
        self.start_step = int(start_step)
        self.rank = int(rank)
        self.world_size = int(world_size)

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            base = (step * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            step += 1


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, rank + 2W, ...`` of a dataset of `n` samples: every sample exactly once
    across ranks (no padding, so the summed confusion matrix equals a single-process one)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(int(rank), int(n), int(world_size)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_transform(stream: Any, train: bool) -> Any:
    """Return the joint transform of a stream config: resize, then (training) the random
    scale-crop, resize of the crop to ``out_size`` and flip (`train_steps`) (random draws from torch's generator)."""
    steps: list[Any] = []
    if stream.resize is not None:
        steps.append(Resize(list(stream.resize)))
    if train:
        if stream.crop is None and tuple(stream.scale) != (1.0, 1.0):
            raise UserError(f"data stream {stream.dataset}: 'scale' {stream.scale} needs a 'crop' size as well")
        crop = list(stream.crop) if stream.crop is not None else None
        steps.extend(train_steps(crop, tuple(stream.scale), stream.flip, stream.out_size))
    return v2.Compose(steps) if steps else None


def build_stream_dataset(stream: Any, data_root: str, train: bool) -> Dataset:
    """Return the dataset of one stream config (`nightseg.data.build_dataset` or a ``module:factory``)."""
    root = Path(data_root) / stream.root if stream.root is not None else Path(data_root)  # absolute root stays
    transform = build_transform(stream, train)
    if ":" in stream.dataset:
        dataset = import_factory(stream.dataset, "dataset")(root, stream.split, transform=transform, **stream.options)
    else:
        dataset = build_dataset(stream.dataset, root, stream.split, transform=transform, **stream.options)
    if stream.limit is not None and stream.limit < len(dataset):
        dataset = Subset(dataset, range(stream.limit))
    return dataset


class StreamData(L.LightningDataModule):
    """Training streams and validation set of a config as Lightning dataloaders (see `StepStreams`)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set: StepStreams | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str) -> None:
        data = self.cfg.data
        if stage == "fit" and self.train_set is None:
            streams = {name: build_stream_dataset(getattr(data, name), data.root, train=True)
                       for name in STREAMS if getattr(data, name).dataset is not None}
            self.train_set = StepStreams(streams, self.cfg.seed)
        if self.val_set is None and data.val.dataset is not None:
            self.val_set = build_stream_dataset(data.val, data.root, train=False)

    def _loader(self, dataset: Dataset, sampler: Sampler, batch_size: int, persistent: bool) -> DataLoader:
        workers = self.cfg.data.workers
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=persistent and workers > 0,
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = StepSampler(self.cfg.data.batch_size, trainer.global_step, trainer.global_rank, trainer.world_size)
        return self._loader(self.train_set, sampler, self.cfg.data.batch_size, persistent=False)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        if len(self.val_set) < self.trainer.world_size:  # every rank must validate (the reduction is collective)
            raise UserError(f"data.val: {len(self.val_set)} validation images for {self.trainer.world_size} "
                            "processes; each process needs at least one")
        sampler = ShardSampler(len(self.val_set), self.trainer.global_rank, self.trainer.world_size)
        return self._loader(self.val_set, sampler, self.cfg.data.val_batch_size, persistent=True)
