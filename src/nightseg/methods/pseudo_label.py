"""Night pseudo labels corrected by the paired day prediction (ULCA, Sections 3.1 and 3.4).

ULCA uses the day prediction S_Bd of the coarsely aligned day image twice: as the pseudo label
``F_td`` of the static loss (Eq. 7-8) and to correct the night prediction S_Bn into the NightMix label
``S~_Bn`` (Section 3.1). It says the static loss is DANNet's, so by default both follow DANNet's released
``train.py`` (Wu et al., CVPR 2021), read and re-implemented here:

1. on the static channels, blend the two predictions, trusting the day more where it is confident:
   ``fused_c = t * day_c + (1 - t) * night_c`` with ``t = 0.8`` where ``day_c > 0.4`` and ``t = 0.2``
   elsewhere (DANNet does this on raw logits); the dynamic channels are the night prediction alone;
2. optionally multiply by class weights (DANNet: its log-normalised weights) and take the argmax;
3. for the static loss, pixels whose argmax is a dynamic class are ignored (255).

`mode` selects alternatives (documented and compared in ``docs/methods.md``): ``"day"`` replaces the
static channels by the day prediction, ``"night"`` uses the night prediction alone (no correction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from nightseg.core.classes import IGNORE_INDEX, STATIC_CLASSES

FusionMode = Literal["dannet", "day", "night"]


@torch.no_grad()
def fuse_day_night(
    day_logits: torch.Tensor,
    night_logits: torch.Tensor,
    mode: FusionMode = "dannet",
    static_classes: Sequence[int] = STATIC_CLASSES,
    space: Literal["logits", "probs"] = "logits",
    threshold: float = 0.4,
    high: float = 0.8,
    low: float = 0.2,
) -> torch.Tensor:
    """Return the fused class scores ``[B, C, H, W]`` (no gradient) of a night image and its day pair.

    Static channels: ``t * day + (1 - t) * night`` with ``t = high`` where ``day > threshold`` else ``low``
    (``mode="dannet"``), the day scores (``"day"``) or the night scores (``"night"``); dynamic channels are
    always the night scores. ``space="logits"`` fuses raw logits as DANNet's code does; ``"probs"`` fuses
    softmax probabilities (then `threshold` is a probability). The day scores are resized to the night
    size if the two differ.
    """
    if day_logits.shape[-2:] != night_logits.shape[-2:]:
        day_logits = F.interpolate(day_logits, size=night_logits.shape[-2:], mode="bilinear", align_corners=False)
    day, night = day_logits.detach().float(), night_logits.detach().float()
    if space == "probs":
        day, night = day.softmax(dim=1), night.softmax(dim=1)
    elif space != "logits":
        raise ValueError(f"unknown fusion space {space!r}; expected logits or probs")
    static = list(static_classes)
    fused = night.clone()
    if mode == "dannet":
        d, n = day[:, static], night[:, static]
        t = torch.where(d > threshold, torch.full_like(d, high), torch.full_like(d, low))
        fused[:, static] = t * d + (1.0 - t) * n
    elif mode == "day":
        fused[:, static] = day[:, static]
    elif mode != "night":
        raise ValueError(f"unknown pseudo-label mode {mode!r}; expected dannet, day or night")
    return fused


@torch.no_grad()
def pseudo_label(
    fused: torch.Tensor,
    weights: torch.Tensor | None = None,
    static_only: bool = False,
    static_classes: Sequence[int] = STATIC_CLASSES,
    restrict_to_static: bool = False,
) -> torch.Tensor:
    """Return the argmax label ``[B, H, W]`` int64 (trainIds) of fused scores.

    `weights` (``[C]``) multiply the scores first, as DANNet does. ``static_only=True`` gives the static
    loss's label ``F_td``: pixels whose argmax is not a static class become 255 (DANNet). With
    ``restrict_to_static=True`` the argmax runs over the static channels alone, so every pixel gets a
    static class: the literal ``F_td = argmax(P_td^S)`` of ULCA, Eq. 8. Without either, the full
    19-class label (the NightMix label ``S~_Bn``).
    """
    scores = fused
    if weights is not None:
        scores = scores * weights.to(device=scores.device, dtype=scores.dtype).view(1, -1, 1, 1)
    static = torch.as_tensor(list(static_classes), device=scores.device)
    if restrict_to_static:
        return static[scores[:, static].argmax(dim=1)]
    label = scores.argmax(dim=1)
    if static_only:
        label = torch.where(torch.isin(label, static), label, torch.full_like(label, IGNORE_INDEX))
    return label
