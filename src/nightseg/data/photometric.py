"""Batched photometric augmentation for consistency training (ULCA, Sec. 3.3, after FixMatch).

The prediction on a *weakly* augmented night image supervises the prediction on a *strongly* augmented
copy: "weak Gaussian noise is used for weakly augmentation, while Gaussian blur, color shift, brightness
contrast shift, and a series of data augmentation methods are used for strongly augmentation".

Both work on a batch ``x`` of float images ``[B,3,H,W]`` in [0,1] on any device (CPU or GPU), with
per-sample random parameters drawn from a ``torch.Generator``: the same generator state gives the same
output on a given device (the noise of a CUDA batch comes from a CUDA generator seeded from it). Geometry is never changed, so the weak and strong views stay pixel-aligned and
the pseudo-label of one supervises the other directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class WeakConfig:
    """Weak view: additive Gaussian noise with a per-sample std drawn from `noise_std`."""

    noise_std: tuple[float, float] = (0.0, 0.03)


@dataclass(frozen=True)
class StrongConfig:
    """Strong view: each operation is applied to a sample with probability `p`, in this order.

    brightness / contrast / saturation: multiplicative factors; colour shift: per-channel additive
    offset in ±`color_shift` (a colour cast, common at night); gamma: exponent; blur: Gaussian sigma in
    pixels (applied with probability `blur_p`); noise: additive Gaussian std.
    """

    p: float = 0.8
    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.6, 1.4)
    saturation: tuple[float, float] = (0.5, 1.5)
    color_shift: float = 0.08
    gamma: tuple[float, float] = (0.7, 1.5)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_std: tuple[float, float] = (0.0, 0.04)


def _as_batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.dim() == 3:
        return x.unsqueeze(0), True
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [B,3,H,W] or [3,H,W], got {tuple(x.shape)}")
    return x, False


def _uniform(n: int, bounds: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)


def _gate(values: torch.Tensor, p: float, identity: float, g: torch.Generator) -> torch.Tensor:
    on = torch.rand(values.shape[0], generator=g, device=g.device) < p
    return torch.where(on, values, torch.full_like(values, identity))


def _device_generator(g: torch.Generator, device: torch.device) -> torch.Generator:
    if g.device.type == device.type:
        return g
    seed = int(torch.randint(0, 2**62, (), generator=g, device=g.device))
    return torch.Generator(device=device).manual_seed(seed)


def _add_noise(x: torch.Tensor, std: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=_device_generator(g, x.device), device=x.device, dtype=x.dtype)
    return (x + noise * std.to(x.device, x.dtype).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def weak_augment(x: torch.Tensor, generator: torch.Generator | None = None,
                 config: WeakConfig = WeakConfig()) -> torch.Tensor:
    """Return the weak view of a batch: ``clamp(x + sigma_b * N(0,1), 0, 1)``, sigma_b per sample."""
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    xb, single = _as_batch(x)
    std = _uniform(xb.shape[0], config.noise_std, g)
    out = _add_noise(xb.clone(), std, g)
    return out[0] if single else out


def sample_strong_params(batch: int, generator: torch.Generator,
                         config: StrongConfig = StrongConfig()) -> dict[str, torch.Tensor]:
    """Draw the per-sample parameters of `strong_augment` (identity values where an op is skipped)."""
    g = generator
    params = {
        "brightness": _gate(_uniform(batch, config.brightness, g), config.p, 1.0, g),
        "contrast": _gate(_uniform(batch, config.contrast, g), config.p, 1.0, g),
        "saturation": _gate(_uniform(batch, config.saturation, g), config.p, 1.0, g),
        "gamma": _gate(_uniform(batch, config.gamma, g), config.p, 1.0, g),
        "blur_sigma": _gate(_uniform(batch, config.blur_sigma, g), config.blur_p, 0.0, g),
        "noise_std": _gate(_uniform(batch, config.noise_std, g), config.p, 0.0, g),
    }
    shift = (2 * torch.rand(batch, 3, generator=g, device=g.device) - 1) * config.color_shift
    on = torch.rand(batch, 1, generator=g, device=g.device) < config.p
    params["color_shift"] = shift * on
    return params


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``x [B,3,H,W]`` with its own Gaussian `sigma` (pixels; 0 = unchanged), separably."""
    sigma = sigma.to(x.device, x.dtype)
    if not bool((sigma > 0).any()):
        return x
    radius = max(1, math.ceil(3.0 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe = sigma.clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-(t.view(1, -1) ** 2) / (2 * safe**2))
    delta = (t == 0).to(x.dtype).expand_as(kernel)
    kernel = torch.where((sigma > 0).view(-1, 1), kernel, delta)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    b, c, h, w = x.shape
    k = kernel.repeat_interleave(c, dim=0)  # [B*C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


def apply_strong(x: torch.Tensor, params: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """Apply drawn strong parameters to ``x [B,3,H,W]`` in [0,1]; `generator` only feeds the noise."""
    p = {k: v.to(x.device, x.dtype) for k, v in params.items()}
    view = (-1, 1, 1, 1)
    y = (x * p["brightness"].view(view)).clamp(0.0, 1.0)
    mean = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = (mean + p["contrast"].view(view) * (y - mean)).clamp(0.0, 1.0)
    gray = _gray(y)
    y = (gray + p["saturation"].view(view) * (y - gray)).clamp(0.0, 1.0)
    y = (y + p["color_shift"].view(-1, 3, 1, 1)).clamp(0.0, 1.0)
    y = y.pow(p["gamma"].view(view))
    y = gaussian_blur(y, p["blur_sigma"])
    return _add_noise(y, p["noise_std"], generator)


def strong_augment(x: torch.Tensor, generator: torch.Generator | None = None,
                   config: StrongConfig = StrongConfig()) -> torch.Tensor:
    """Return the strong view of a batch (brightness, contrast, saturation, colour shift, gamma, blur, noise)."""
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    xb, single = _as_batch(x)
    out = apply_strong(xb, sample_strong_params(xb.shape[0], g, config), g)
    return out[0] if single else out


def hsv_value(image: torch.Tensor) -> torch.Tensor:
    """Return the HSV value ``V = max(R, G, B)`` of ``[..., 3, H, W]`` images as float32 in [0, 1] (EGNet paper, Sec. 3).

    uint8 images are divided by 255; floating-point images are taken to be in [0, 1] already.
    """
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ValueError(f"expected images [..., 3, H, W], got shape {tuple(image.shape)}")
    value = image.amax(dim=-3)
    if value.dtype == torch.uint8:
        return value.to(torch.float32) / 255.0
    if not value.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point in [0, 1], got dtype {image.dtype}")
    return value.to(torch.float32)


# --------------------------------------------------------------------------------------------- DACS
@dataclass(frozen=True)
class MixAugmentConfig:
    """The augmentation DACS (Tranheden et al., WACV 2021) and DAFormer apply to ClassMix images.

    Colour jitter with probability `jitter_p` (DAFormer: applied when ``U(0,1) > 0.2``): brightness,
    contrast and saturation factors in ``[1 - s, 1 + s]`` and a hue shift in ``[-s, s]`` (fraction of the
    colour circle), in a random order, as ``ColorJitter(s, s, s, s)``; then a Gaussian blur with
    probability `blur_p` and sigma in `blur_sigma` (DAFormer: ``U(0.15, 1.15)``, kernel about 10 % of the
    image, which a radius of ``3 sigma`` reproduces to float precision). DACS uses ``s = 0.25``, DAFormer
    ``s = 0.2``.
    """

    jitter_p: float = 0.8
    strength: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.15, 1.15)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Return ``x [B,3,H,W]`` with per-image ``factors [B,4]`` = (brightness, contrast, saturation, hue)
    applied in `order` (indices into the four), with torchvision's definitions; hue 0 / factor 1 = unchanged."""
    from torchvision.transforms.v2 import functional as TF

    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = []
    for image, f in zip(x, factors.tolist()):
        for k in order:
            image = ops[k](image, f[k])
        out.append(image.clamp(0.0, 1.0))
    return torch.stack(out)


def mix_augment(x: torch.Tensor, generator: torch.Generator, config: MixAugmentConfig = MixAugmentConfig()
                ) -> torch.Tensor:
    """Return DACS's colour jitter + Gaussian blur of a batch ``[B,3,H,W]`` in [0,1] (see `MixAugmentConfig`);
    every draw comes from `generator`, one set of parameters per image."""
    xb, single = _as_batch(x)
    b, s = xb.shape[0], config.strength
    factors = torch.stack([_uniform(b, (max(0.0, 1 - s), 1 + s), generator) for _ in range(3)]
                          + [_uniform(b, (-s, s), generator)], dim=1).cpu()
    jitter = (torch.rand(b, generator=generator, device=generator.device) < config.jitter_p).cpu()
    factors = torch.where(jitter[:, None], factors, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    order = torch.randperm(4, generator=generator, device=generator.device).tolist()
    out = color_jitter(xb, factors, order)
    sigma = _gate(_uniform(b, config.blur_sigma, generator), config.blur_p, 0.0, generator)
    out = gaussian_blur(out, sigma)
    return out[0] if single else out


# ------------------------------------------------------------------------------------- copy-paste
@dataclass(frozen=True)
class RegionJitterConfig:
    """Per-region colour jitter of pasted objects: brightness, contrast and saturation factors drawn from
    the ranges, a hue shift from ``[-hue, hue]`` (fraction of the colour circle), in a random order per region,
    with torchvision's definitions (`color_jitter`). Saturation reaches 0 (grey) and brightness well above 1,
    so a pasted object can look lit, unlit, grey or coloured whatever its class."""

    brightness: tuple[float, float] = (0.6, 1.5)
    contrast: tuple[float, float] = (0.6, 1.4)
    saturation: tuple[float, float] = (0.0, 1.2)
    hue: float = 0.1


def region_jitter(x: torch.Tensor, regions: torch.Tensor, generator: torch.Generator,
                  config: RegionJitterConfig = RegionJitterConfig(), ignore: int = 255) -> torch.Tensor:
    """Return ``x [B,3,H,W]`` in [0,1] with every region of ``regions [B,H,W]`` (pixels of one label value in
    one image; `ignore` left unchanged) colour-jittered by its own factors (`RegionJitterConfig`), regions
    visited in increasing label order and every draw from `generator`.

    The appearance randomisation of copy-paste augmentation applied per object class: the pasted objects'
    colours stop telling their class, so the student must recognise them by shape. Contrast blends with the
    mean grey of the whole image, as torchvision's ``adjust_contrast`` does."""
    xb, single = _as_batch(x)
    if regions.shape != (xb.shape[0], *xb.shape[-2:]):
        raise ValueError(f"regions must be [B,H,W] = {(xb.shape[0], *xb.shape[-2:])}, got {tuple(regions.shape)}")
    out = xb.clone()
    # the region ids come to the host once per batch, and each region is written with torch.where, not a
    # boolean-mask assignment: on a GPU every mask assignment waits for the device (a nonzero() sync), ~60
    # waits per ulca_st step; the values are the same either way
    present = [torch.unique(r).tolist() for r in regions.cpu()]
    for b in range(xb.shape[0]):
        for value in present[b]:
            if value == ignore:
                continue
            factors = torch.stack([_uniform(1, config.brightness, generator), _uniform(1, config.contrast, generator),
                                   _uniform(1, config.saturation, generator),
                                   _uniform(1, (-config.hue, config.hue), generator)], dim=1).cpu()
            order = torch.randperm(4, generator=generator, device=generator.device).tolist()
            jittered = color_jitter(xb[b : b + 1], factors, order)[0]
            out[b] = torch.where(regions[b] == value, jittered, out[b])
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------- FDA
def fourier_style(x: torch.Tensor, style: torch.Tensor, beta: float) -> torch.Tensor:
    """Return `x` ``[B,3,H,W]`` in [0,1] with the low-frequency amplitude of `style` (same shape): FDA
    (Yang & Soatto, CVPR 2020, Eq. 1-2), ``x' = F^-1([M_beta * |F(style)| + (1 - M_beta) * |F(x)|, phase(F(x))])``.

    M_beta is FDA's window: the ``b x b`` corners of the unshifted spectrum (the lowest positive and
    negative frequencies, DC included) with ``b = floor(beta * min(H, W))``, as in FDA's code. The global
    brightness and colour cast of `style` move onto `x` while its edges (the phase) stay; ``beta = 0`` or
    ``b = 0`` returns `x` unchanged. The result is clamped to [0, 1].
    """
    if x.shape != style.shape:
        raise ValueError(f"fourier_style needs equal shapes, got {tuple(x.shape)} and {tuple(style.shape)}")
    h, w = x.shape[-2:]
    b = math.floor(beta * min(h, w))
    if b <= 0:
        return x
    fx = torch.fft.fft2(x.float())
    amplitude, phase = fx.abs(), fx.angle()
    target = torch.fft.fft2(style.float()).abs()
    window = torch.zeros(h, w, dtype=torch.bool, device=x.device)
    for rows in (slice(0, b), slice(h - b, h)):
        for cols in (slice(0, b), slice(w - b, w)):
            window[rows, cols] = True
    amplitude = torch.where(window, target, amplitude)
    out = torch.fft.ifft2(torch.polar(amplitude, phase)).real
    return out.clamp(0.0, 1.0).to(x.dtype)
