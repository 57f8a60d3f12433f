"""CycleGAN networks for unpaired day <-> night translation (Zhu et al., ICCV 2017), used by See Clearer at Night
(Sun et al., "See Clearer at Night", 2019) to translate night images to day and day images to night.

* `ResnetGenerator`: c7s1-C, d2C, d4C, `blocks` x R4C, u2C, uC, c7s1-3 with instance norm, reflection
  padding and tanh (CycleGAN's ``resnet_9blocks`` with ``channels=64, blocks=9``; a CPU-sized one with
  ``channels=32, blocks=3..6``). Works on images in [-1, 1], as the official code.
* `PatchDiscriminator`: the 70x70 PatchGAN (C64-C128-C256-C512, 4x4 convs, LeakyReLU 0.2, instance
  norm except on the first layer) giving one real/fake score per overlapping patch; ``channels`` scales it.
* `ImagePool`: the history of generated images of Shrivastava et al. that CycleGAN shows the
  discriminators (50 images; once full, each query returns a stored image with probability 1/2 and
  stores the new one in its place).
* `UnitRangeTranslator`: a generator wrapped to the NightSeg image contract ([0,1] in and out, any
  size): what `nightseg translate apply` and ``nightseg predict --night2day`` run.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nightseg.core.checkpoint import load_checkpoint, load_state_into
from nightseg.core.errors import UserError

TRANSLATOR_NAME = "cyclegan_translator"
DIRECTIONS = ("day2night", "night2day")


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)  # CycleGAN's "instance" norm


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convs with instance norm and an identity shortcut (CycleGAN R_k)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator; maps [B,3,H,W] in [-1,1] to [-1,1] (H, W multiples of 4)."""

    def __init__(self, channels: int = 64, blocks: int = 9) -> None:
        super().__init__()
        c = channels
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, c, 7), _norm(c), nn.ReLU(True)]
        for mult in (1, 2):  # two stride-2 downsamplings
            layers += [nn.Conv2d(c * mult, c * mult * 2, 3, stride=2, padding=1), _norm(c * mult * 2), nn.ReLU(True)]
        layers += [ResidualBlock(c * 4) for _ in range(blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(c * mult, c * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       _norm(c * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.config = {"channels": channels, "blocks": blocks}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """The PatchGAN discriminator (CycleGAN ``basic``, 70x70 receptive field with ``layers=3``).

    Returns a map of raw scores [B,1,h,w], one per image patch (no sigmoid: the LSGAN loss is used).
    """

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        c = channels
        seq: list[nn.Module] = [nn.Conv2d(3, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [nn.Conv2d(c * prev, c * mult, 4, stride=stride, padding=1), _norm(c * mult), nn.LeakyReLU(0.2, True)]
        seq.append(nn.Conv2d(c * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*seq)
        self.config = {"channels": channels, "layers": layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise conv weights N(0, 0.02) and biases 0 from `generator` (CycleGAN's ``normal`` init); return it."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()
    return module


class ImagePool:
    """History buffer of generated images (CycleGAN's ``ImagePool``, Shrivastava et al. 2017).

    `query(images)` returns a batch of the same size: while the pool holds fewer than `size` images each
    new image is stored and returned; afterwards, with probability 1/2 a random stored image is returned
    and replaced by the new one, otherwise the new image itself is returned. ``size=0`` disables the
    pool. Randomness comes from the `generator` given to each query (deterministic by seed).
    """

    def __init__(self, size: int = 50) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1, generator=generator).item() > 0.5:
                index = int(torch.randint(0, self.size, (1,), generator=generator))
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state(self) -> torch.Tensor:
        """Return the stored images as one tensor [N,3,H,W] (N may be 0), for the training state."""
        return torch.cat(self.images, 0) if self.images else torch.zeros(0)

    def load(self, images: torch.Tensor) -> None:
        """Restore the images saved by `state`."""
        self.images = [im.unsqueeze(0).clone() for im in images] if images.numel() else []


class UnitRangeTranslator(nn.Module):
    """A generator for NightSeg images: [B,3,H,W] in [0,1] in and out, any H and W (reflect-padded to 4)."""

    def __init__(self, generator: ResnetGenerator, direction: str = "night2day") -> None:
        super().__init__()
        self.generator = generator
        self.direction = direction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 4, -w % 4
        y = x * 2.0 - 1.0
        if pad_h or pad_w:
            y = F.pad(y, (0, pad_w, 0, pad_h), mode="reflect" if min(h, w) > max(pad_h, pad_w) else "replicate")
        y = self.generator(y)[..., :h, :w]
        return ((y + 1.0) * 0.5).clamp(0.0, 1.0)


def generator_key(direction: str) -> str:
    """Return the tensor-name prefix of the generator of `direction` in a translator checkpoint."""
    if direction not in DIRECTIONS:
        raise UserError(f"--direction {direction}: expected one of {', '.join(DIRECTIONS)}")
    return f"G_{direction}"


def load_translator(path: str | os.PathLike, direction: str = "night2day") -> UnitRangeTranslator:
    """Return the eval-mode [0,1] generator of `direction` from a ``nightseg translate train`` checkpoint."""
    path = Path(path)
    tensors, meta = load_checkpoint(path)
    config = meta.get("model") or {}
    if config.get("name") != TRANSLATOR_NAME:
        raise UserError(f"{path}: not a day/night translator checkpoint (model name {config.get('name')!r}, "
                        f"expected {TRANSLATOR_NAME!r}); train one with `nightseg translate train`")
    prefix = generator_key(direction) + "."
    net = ResnetGenerator(**config["generator"])
    load_state_into(net, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, path)
    out = UnitRangeTranslator(net.eval(), direction).eval()
    out.requires_grad_(False)
    return out
