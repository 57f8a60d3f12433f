"""NightMix (ULCA, Section 3.1, Fig. 2): ClassMix between a labelled day image and a night image.

From the source label L_A take the classes present, remove the easy ones (road, vegetation, sky by
default: `nightseg.core.classes.hard_classes`), pick a random half of the remaining hard classes and build the
binary mask M of their pixels. Then (Eq. 1's inputs)

    X_A = M * A + (1 - M) * B_n          Y_A = M * L_A + (1 - M) * S~_Bn

where S~_Bn is the night pseudo label corrected by the day prediction (`nightseg.methods.pseudo_label`).
"Half" of n classes is ``ceil(n / 2)``, as in ClassMix's code, so a single hard class is still pasted.
Randomness comes only from the `torch.Generator` passed in, so a fixed seed gives a fixed mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nightseg.core.classes import hard_classes


def select_classes(
    label: torch.Tensor, candidates: Sequence[int], generator: torch.Generator | None = None,
    always: Sequence[int] = (),
) -> list[list[int]]:
    """Return, per image of `label` ``[B, H, W]``, a random ``ceil(n/2)`` of the `candidates` present in it.

    Candidates listed in `always` are chosen whenever present, and the random half is drawn from the
    other present candidates (with `always` empty this is ClassMix's rule, draw for draw). The classes in
    each returned list are sorted. Images without candidate classes get an empty list.
    """
    cand = sorted(set(int(c) for c in candidates))
    if not cand:
        return [[] for _ in range(label.shape[0])]
    forced = set(int(c) for c in always)
    batch = label.shape[0]
    offsets = torch.arange(batch, device=label.device).view(-1, 1) * 256
    counts = torch.bincount((label.flatten(1).long().clamp(0, 255) + offsets).flatten(), minlength=256 * batch)
    present = (counts.view(batch, 256)[:, cand] > 0).cpu()  # [B, K]
    chosen = []
    for row in present:
        here = [c for c, p in zip(cand, row.tolist()) if p]
        classes = [c for c in here if c not in forced]
        order = torch.randperm(len(classes), generator=generator).tolist()
        keep = order[: math.ceil(len(classes) / 2)]
        chosen.append(sorted([classes[i] for i in keep] + [c for c in here if c in forced]))
    return chosen


def class_mask(label: torch.Tensor, classes: list[list[int]]) -> torch.Tensor:
    """Return the binary mask M ``[B, H, W]`` (bool): True where the pixel's label is one of its image's
    `classes` (ULCA, Section 3.1)."""
    masks = []
    for b, chosen in enumerate(classes):
        chosen_t = torch.tensor(chosen, dtype=label.dtype, device=label.device)
        masks.append(torch.isin(label[b], chosen_t))
    return torch.stack(masks)


def nightmix(
    source_image: torch.Tensor,
    source_label: torch.Tensor,
    night_image: torch.Tensor,
    night_label: torch.Tensor,
    candidates: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    always: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(X_A [B,3,H,W], Y_A [B,H,W], M [B,H,W] bool)`` of NightMix (ULCA, Section 3.1).

    `source_image`/`source_label` are A and L_A, `night_image`/`night_label` are B_n and S~_Bn, all the same
    spatial size (see `match_size`). `candidates` are the hard classes (default
    `nightseg.core.classes.hard_classes()`); a random half of those present in each L_A form M, plus
    every present candidate listed in `always` (`select_classes`).
    """
    if source_image.shape[-2:] != night_image.shape[-2:] or source_label.shape != night_label.shape:
        raise ValueError(
            f"NightMix needs equal sizes, got A {tuple(source_image.shape)} / L_A {tuple(source_label.shape)}"
            f" and B_n {tuple(night_image.shape)} / S~_Bn {tuple(night_label.shape)}"
        )
    cand = hard_classes() if candidates is None else candidates
    mask = class_mask(source_label, select_classes(source_label, cand, generator, always))
    m = mask.unsqueeze(1).to(source_image.dtype)
    mixed_image = m * source_image + (1.0 - m) * night_image
    mixed_label = torch.where(mask, source_label, night_label.to(source_label.dtype))
    return mixed_image, mixed_label, mask


def match_size(
    image: torch.Tensor,
    label: torch.Tensor,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `image` ``[B,3,h,w]`` and `label` ``[B,h,w]`` brought to `size` for mixing.

    ULCA crops Cityscapes at 512 and Dark Zurich at 960, yet NightMix needs A and B_n of one size:
    a larger night image is cropped at a random position (one per image, from `generator`), keeping its
    scale; a smaller one is resized (bilinear image, nearest label).
    """
    th, tw = size
    h, w = image.shape[-2:]
    if (h, w) == (th, tw):
        return image, label
    if h < th or w < tw:
        image = F.interpolate(image, size=(th, tw), mode="bilinear", align_corners=False)
        label = F.interpolate(label[:, None].float(), size=(th, tw), mode="nearest")[:, 0].to(label.dtype)
        return image, label
    images, labels = [], []
    for b in range(image.shape[0]):
        y = int(torch.randint(0, h - th + 1, (1,), generator=generator))
        x = int(torch.randint(0, w - tw + 1, (1,), generator=generator))
        images.append(image[b, :, y : y + th, x : x + tw])
        labels.append(label[b, y : y + th, x : x + tw])
    return torch.stack(images), torch.stack(labels)

