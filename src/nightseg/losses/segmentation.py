"""Loss terms of ULCA (Section 3.3-3.4) and the DANNet losses it builds on.

- `class_weights`: per-class weights from source class frequencies, Eq. 5 (``w_k = 1/a_k``) or DANNet's
  log-normalised weights (Wu et al., CVPR 2021, Eq. 6 of DANNet).
- `weighted_cross_entropy`: the source segmentation loss L_seg, Eq. 6.
- `static_loss`: DANNet's static loss L_static, Eq. 7-8: focal loss on the static classes where a class
  counts as correct if it appears anywhere in the 3x3 neighbourhood of the pseudo label.
- `consistency_kl`: the consistency term L_kl, Eq. 4: ``KL(Y_w || P_s)`` with the weak branch detached.
- `class_frequencies`: pixel frequencies a_k counted from label maps.

All functions take logits ``[B, C, H, W]`` and trainId labels ``[B, H, W]`` (255 = ignore).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nightseg.core.classes import IGNORE_INDEX, NUM_CLASSES, STATIC_CLASSES

CITYSCAPES_FREQUENCIES: tuple[float, ...] = (
    0.36869696, 0.06084986, 0.22824049, 0.00655399, 0.00877272, 0.01227341, 0.00207795,
    0.0055127, 0.15928651, 0.01157818, 0.04018982, 0.01218957, 0.00135122, 0.06994545,
    0.00267456, 0.00235192, 0.00232904, 0.00098658, 0.00413907,
)  # fmt: skip
"""Pixel frequencies a_k of the 19 train classes over Cityscapes train (trainId order), as used by DANNet
for its class weights (also listed in ``../shared/realdata/README.md``)."""

MIN_FREQUENCY = 1e-6
"""Frequencies are floored at this value so that a class absent from the source gets a finite weight."""

WeightScheme = Literal["inverse", "dannet_log", "none"]


def class_weights(
    frequencies: Sequence[float] | torch.Tensor,
    scheme: WeightScheme = "inverse",
    std: float = 0.05,
) -> torch.Tensor:
    """Return per-class loss weights ``[C]`` (float32) from source pixel frequencies a_k.

    - ``"inverse"`` (ULCA, Eq. 5): ``w_k = 1 / a_k``. Unnormalised on purpose: Eq. 6 divides the
      weighted sum by ``N * |C|``, and since ``sum_k a_k * (1/a_k) = |C|`` the expected weight of a source
      pixel is then exactly 1, so L_seg has the scale of a plain cross-entropy.
    - ``"dannet_log"`` (DANNet, Eq. 6 there and its released ``train.py``): ``l_k = log a_k``,
      ``w_k = (mean(l) - l_k) / std(l) * std + 1`` (unbiased std over the classes, ``std = 0.05``), i.e.
      weights around 1 that grow for rare classes; DANNet uses them in its cross-entropy, its static loss
      and its pseudo-label fusion.
    - ``"none"``: all ones.

    Frequencies need not sum to 1 (they are normalised); zeros are floored at `MIN_FREQUENCY`.
    """
    freq = torch.as_tensor(frequencies, dtype=torch.float64).flatten()
    if freq.numel() < 2 or bool((freq < 0).any()) or not bool(torch.isfinite(freq).all()):
        raise ValueError(f"class frequencies must be >= 2 finite non-negative numbers, got {freq.tolist()}")
    if float(freq.sum()) <= 0:
        raise ValueError("class frequencies are all zero: no labelled source pixel was counted")
    freq = (freq / freq.sum()).clamp_min(MIN_FREQUENCY)
    if scheme == "inverse":
        weights = 1.0 / freq
    elif scheme == "dannet_log":
        logf = freq.log()
        weights = (logf.mean() - logf) / logf.std() * std + 1.0
    elif scheme == "none":
        weights = torch.ones_like(freq)
    else:
        raise ValueError(f"unknown class-weight scheme {scheme!r}; expected inverse, dannet_log or none")
    return weights.float()


def class_frequencies(
    labels: Iterable[torch.Tensor], num_classes: int = NUM_CLASSES, progress: bool = True, total: int | None = None
) -> torch.Tensor:
    """Return the pixel frequency a_k of each class (float64 ``[C]``, sums to 1) over label maps.

    `labels` yields trainId tensors of any shape; pixels outside ``0..C-1`` (255 = ignore) are not counted.
    This is the a_k of ULCA, Eq. 5: "the proportion of all valid pixels in the source domain labeled
    as class k". `total` (the number of maps, if known) only sizes the progress bar.
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for label in tqdm(labels, desc="class frequencies", total=total, disable=not progress, leave=False):
        flat = torch.as_tensor(label).reshape(-1).long()
        flat = flat[(flat >= 0) & (flat < num_classes)]
        counts += torch.bincount(flat, minlength=num_classes).double()
    total = counts.sum()
    if total <= 0:
        raise ValueError("no labelled pixel found while counting class frequencies")
    return counts / total


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    normalization: Literal["paper", "weighted_mean", "mean"] = "paper",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Return the class-weighted cross-entropy L_seg of ULCA, Eq. 6 (a scalar).

    ``L = -1/(N |C|) * sum_k || w_k GT^(k) . log P^(k) ||_1`` with N the valid pixels and |C| the number of
    classes (``normalization="paper"``; with weights of Eq. 5 the expected per-pixel weight is 1).
    ``"weighted_mean"`` divides by ``sum_i w_{y_i}`` instead (PyTorch's weighted ``cross_entropy``, what
    DANNet's code does); ``"mean"`` divides by N. Without weights every variant is the plain mean CE.
    Pixels labelled `ignore_index` do not count; a batch without valid pixels gives a zero loss that
    still belongs to the graph.
    """
    num_classes = logits.shape[1]
    valid = target != ignore_index
    nll = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # [B,H,W]
    if weights is None:
        per_pixel, divisor = nll, valid.sum().to(nll.dtype)
    else:
        w = weights.to(device=logits.device, dtype=nll.dtype)
        pixel_w = w[target.clamp(0, num_classes - 1)] * valid
        per_pixel = nll * pixel_w
        count = valid.sum().to(nll.dtype)
        if normalization == "paper":
            divisor = count * num_classes
        elif normalization == "weighted_mean":
            divisor = pixel_w.sum()
        elif normalization == "mean":
            divisor = count
        else:
            raise ValueError(f"unknown normalization {normalization!r}; expected paper, weighted_mean or mean")
    return per_pixel.sum() / divisor.clamp_min(1e-12)  # no valid pixel: 0 / eps = 0, still in the graph


def neighbourhood_onehot(label: torch.Tensor, classes: Sequence[int], kernel: int = 3) -> torch.Tensor:
    """Return ``[B, len(classes), H, W]`` float: 1 where the class occurs in the kernel x kernel window.

    This is the ``max_j o(c, j)`` of ULCA, Eq. 8 (o the one-hot pseudo label, j the 3x3 window around
    pixel i), computed as a max-pool (binary dilation) of each class mask. Pixels labelled with a class
    outside `classes` (dynamic classes, 255) contribute nothing; the image border is not wrapped.
    """
    masks = torch.stack([label == c for c in classes], dim=1).float()  # [B,K,H,W]
    if kernel <= 1:
        return masks
    return F.max_pool2d(masks, kernel_size=kernel, stride=1, padding=kernel // 2)


def static_loss(
    night_logits: torch.Tensor,
    pseudo_label: torch.Tensor,
    gamma: float = 1.0,
    static_classes: Sequence[int] = STATIC_CLASSES,
    weights: torch.Tensor | None = None,
    kernel: int = 3,
    softmax_over: Literal["static", "all"] = "static",
    eps: float = 1e-7,
) -> torch.Tensor:
    """Return DANNet's static loss L_static of ULCA, Eq. 7-8 (a scalar).

    ``L = -1/N * sum_i (1 - p_i)^gamma * log p_i`` over the N pixels whose pseudo label (trainIds) is a
    static class, where (Eq. 8) ``p_i = max_c [ max_{j in 3x3(i)} o(c, j) ] * P^S(c, i)``: the highest night
    probability among the static classes that appear in the 3x3 neighbourhood of i in the pseudo label,
    so a correct class one pixel away counts as correct. ``P^S`` is the softmax over the static channels
    only (``softmax_over="static"``, as DANNet's code does) or the full softmax restricted to them
    (``"all"``). Optional class `weights` (``[C]`` or ``[len(static_classes)]``) multiply the probabilities
    before the max, as DANNet's code does; ``p`` is clamped to ``[eps, 1 - eps]``.
    """
    static = list(static_classes)
    if softmax_over == "static":
        probs = night_logits[:, static].softmax(dim=1)
    elif softmax_over == "all":
        probs = night_logits.softmax(dim=1)[:, static]
    else:
        raise ValueError(f"unknown softmax_over {softmax_over!r}; expected static or all")
    if weights is not None:
        w = weights.to(device=probs.device, dtype=probs.dtype)
        if w.numel() != len(static):
            w = w[static]
        probs = probs * w.view(1, -1, 1, 1)
    near = neighbourhood_onehot(pseudo_label, static, kernel)
    valid = torch.zeros_like(pseudo_label, dtype=torch.bool)
    for c in static:
        valid |= pseudo_label == c
    p = (probs * near).amax(dim=1).clamp(eps, 1.0 - eps)  # [B,H,W]
    per_pixel = -((1.0 - p) ** gamma) * p.log()
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)


def consistency_kl(
    strong_logits: torch.Tensor,
    weak_logits: torch.Tensor,
    target: Literal["soft", "hard"] = "soft",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the consistency loss L_kl of ULCA, Eq. 4 (a scalar): ``KL(Y_w || P_s)``.

    ``L = sum_c Y_w log(Y_w / P_s)`` averaged over pixels, with ``Y_w = softmax(weak_logits)`` *detached*
    (no gradient reaches the weak branch) and ``P_s = softmax(strong_logits)``. The direction is the
    forward KL from the weak target to the strong prediction, as in Eq. 4. ``target="hard"`` makes
    ``Y_w`` the one-hot argmax (FixMatch style), where the KL equals the cross-entropy. `valid` (``[B,H,W]``
    bool) restricts the average to some pixels.
    """
    weak = weak_logits.detach()
    log_ps = strong_logits.log_softmax(dim=1)
    if target == "soft":
        log_yw = weak.log_softmax(dim=1)
        per_pixel = (log_yw.exp() * (log_yw - log_ps)).sum(dim=1)
    elif target == "hard":
        per_pixel = -log_ps.gather(1, weak.argmax(dim=1, keepdim=True)).squeeze(1)
    else:
        raise ValueError(f"unknown consistency target {target!r}; expected soft or hard")
    if valid is not None:
        return (per_pixel * valid).sum() / valid.sum().clamp_min(1)
    return per_pixel.mean()
