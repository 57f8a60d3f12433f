"""Joint geometric transforms (torchvision.transforms.v2 on tv_tensors) and ImageNet normalisation.

A transform is called on a whole sample dict; every ``tv_tensors.Image`` and ``tv_tensors.Mask`` in it
gets the same geometry (one scale, one crop box, one flip), strings pass through. Images are bilinear
(antialiased) resized, masks nearest; where a crop is larger than the scaled image, images are padded
with 0 and masks with 255 (ignore; an ``invalid`` mask padded with 255 reads as invalid).

Random draws use torch's global generator, so a sample's geometry is fixed by ``torch.manual_seed`` (and
in DataLoader workers by the per-worker seed torch derives from the loader's generator).

The training crops of a recipe are set in its YAML (``data.source.crop``/``scale``/``flip``/``out_size``) and
built by `nightseg.data.streams.build_transform` through `train_transform`; the paper recipes use ULCA's
settings (Sec. 4.1, following DANNet): Cityscapes random crop 512 at scale 0.5-1.0, Dark Zurich random crop
960 at scale 0.9-1.1, random horizontal flip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from nightseg.core.classes import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class RandomScaleCrop(v2.Transform):
    """Scale the sample by a factor drawn uniformly from `scale_range`, then take a random `crop_size` crop.

    `crop_size` is an int (square) or (H, W). Where the scaled sample is smaller than the crop it is
    padded at the bottom/right (images with 0, masks with 255), so the output is always `crop_size`.
    """

    def __init__(self, crop_size: int | Sequence[int], scale_range: Sequence[float] = (0.5, 1.0)) -> None:
        super().__init__()
        self.crop_size = _pair(crop_size)
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (lo, hi)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        sizes = {tuple(F.get_size(x)) for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask))}
        if len(sizes) != 1:
            raise ValueError(f"all images and masks of a sample must have one size for a joint crop, got {sizes}")
        (h, w), = sizes
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * float(torch.rand(()))
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        ch, cw = self.crop_size
        top = int(torch.randint(0, sh - ch + 1, ())) if sh > ch else 0
        left = int(torch.randint(0, sw - cw + 1, ())) if sw > cw else 0
        return {"size": [sh, sw], "top": top, "left": left,
                "pad": [0, 0, max(0, cw - sw), max(0, ch - sh)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        ch, cw = self.crop_size
        out = F.resize(inpt, params["size"], interpolation=InterpolationMode.BILINEAR, antialias=True)
        out = F.crop(out, params["top"], params["left"], min(ch, params["size"][0]), min(cw, params["size"][1]))
        if any(params["pad"]):
            fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0
            out = F.pad(out, params["pad"], fill=fill)
        return out


class Resize(v2.Transform):
    """Resize every image (bilinear) and mask (nearest) of a sample to `size` = (H, W) or a shorter side."""

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = [size] if isinstance(size, int) else list(size)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        return F.resize(inpt, self.size, interpolation=InterpolationMode.BILINEAR, antialias=True)


def train_steps(
    crop_size: int | Sequence[int] | None = 512,
    scale_range: Sequence[float] = (0.5, 1.0),
    hflip: bool = True,
    out_size: int | Sequence[int] | None = None,
) -> list[v2.Transform]:
    """Return the steps of the joint training transform: random scale-and-crop (none when `crop_size` is
    None), optional resize of the crop to `out_size` (DANNet's code resizes its 960 Dark Zurich crops to
    512x512), random horizontal flip."""
    steps: list[v2.Transform] = [RandomScaleCrop(crop_size, scale_range)] if crop_size is not None else []
    if out_size is not None:
        steps.append(Resize(list(_pair(out_size))))
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return steps


def train_transform(
    crop_size: int | Sequence[int] = 512,
    scale_range: Sequence[float] = (0.5, 1.0),
    hflip: bool = True,
    out_size: int | Sequence[int] | None = None,
) -> v2.Compose:
    """Return the joint training transform of `train_steps` (a crop is required here) as one callable."""
    return v2.Compose(train_steps(crop_size, scale_range, hflip, out_size))


def normalize_imagenet(x: torch.Tensor) -> torch.Tensor:
    """Return ``(x - mean) / std`` with the ImageNet statistics for images in [0,1], shape [..., 3, H, W]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def denormalize_imagenet(x: torch.Tensor) -> torch.Tensor:
    """Invert `normalize_imagenet`: return images in [0,1] (not clamped)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x * std + mean
