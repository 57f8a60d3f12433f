"""Building blocks of the self-training recipes (DACS, DAFormer, MIC, HRDA), each a pure function of its
inputs and a `torch.Generator`, so the recipes stay readable and each piece has a hand-checked test.

- `classmix`: ClassMix (Olsson et al., WACV 2021) as DACS uses it (Tranheden et al., WACV 2021, Sec. 3.2):
  half of the classes of the source label are pasted onto the target image; the mixed label takes the
  source label there and the teacher's pseudo label elsewhere.
- `confidence_weight`: DACS's pixel-confidence weight of the pseudo label: the share of target pixels whose
  maximum teacher probability is at least ``tau = 0.968`` (DAFormer Eq. 6 / DACS code).
- `confidence_mask`: the per-pixel alternative: the pseudo label kept only where that probability is at least
  ``tau`` (FixMatch-style hard thresholding; `ulca_st`'s ``self_training.weighting: pixel``).
- `pixel_weighted_ce`: cross-entropy weighted per pixel, the mean over all pixels (mmseg's reduction).
- `downscale_label_ratio`, `masked_feature_distance`: DAFormer's thing-class ImageNet feature distance
  (Hoyer et al., CVPR 2022, Eq. 7-8).
- `block_mask`: MIC's patch mask (Hoyer et al., CVPR 2023, Eq. 4).
- `pseudo_label_accuracy`: per-class accuracy of pseudo labels where the target stream has ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nightseg.core.classes import CLASS_NAMES, IGNORE_INDEX
from nightseg.methods.nightmix import class_mask, select_classes


def classmix(source_image: torch.Tensor, source_label: torch.Tensor, target_image: torch.Tensor,
             target_label: torch.Tensor, classes: Sequence[int], generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(mixed image [B,3,H,W], mixed label [B,H,W], mask M [B,H,W] bool)`` of ClassMix (DACS, Eq. 1):
    ``x_M = M * x_S + (1 - M) * x_T``, ``y_M = M * y_S + (1 - M) * y~_T`` with M the pixels of a random
    ``ceil(n/2)`` of the `classes` present in each source label (DACS's code: ``(n + n % 2) / 2``)."""
    mask = class_mask(source_label, select_classes(source_label, classes, generator))
    m = mask.unsqueeze(1).to(source_image.dtype)
    mixed = m * source_image + (1.0 - m) * target_image
    label = torch.where(mask, source_label, target_label.to(source_label.dtype))
    return mixed, label, mask


@torch.no_grad()
def confidence_weight(probs: torch.Tensor, threshold: float = 0.968, ignore_top: int = 0,
                      ignore_bottom: int = 0) -> torch.Tensor:
    """Return the pseudo-label weight map ``[B,H,W]`` of class probabilities ``[B,C,H,W]``: every pixel gets
    ``q = |{i: max_c p_ic >= threshold}| / |all pixels of the batch|`` (DACS's and DAFormer's code: one share for
    the whole batch), except the top `ignore_top` and bottom `ignore_bottom` rows, which get 0 (DAFormer's
    ``pseudo_weight_ignore_top/bottom`` for rectification borders and the ego car)."""
    confident = probs.max(dim=1).values >= threshold
    share = confident.float().mean()
    weight = share.expand(confident.shape).clone()
    if ignore_top > 0:
        weight[:, :ignore_top] = 0
    if ignore_bottom > 0:
        weight[:, -ignore_bottom:] = 0
    return weight


@torch.no_grad()
def confidence_mask(label: torch.Tensor, probs: torch.Tensor, threshold: float = 0.968) -> torch.Tensor:
    """Return `label` ``[B,H,W]`` with every pixel whose maximum probability in `probs` ``[B,C,H,W]`` is below
    `threshold` set to ignore (255): the pixels DACS's share `confidence_weight` counts, kept at weight 1, and the
    rest dropped instead of trained at weight q."""
    return label.masked_fill(probs.max(dim=1).values < threshold, IGNORE_INDEX)


def pixel_weighted_ce(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``mean_i w_i * CE_i`` over all pixels (ignored ones count as 0), mmseg's weighted reduction used
    by DACS/DAFormer for the mixed loss; without `weight` the mean CE over labelled pixels."""
    nll = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="none")
    if weight is None:
        valid = (label != IGNORE_INDEX).sum().clamp_min(1)
        return nll.sum() / valid
    return (nll * weight.to(nll.dtype)).mean()


def downscale_label_ratio(label: torch.Tensor, factor: int, min_ratio: float, num_classes: int) -> torch.Tensor:
    """Return ``label [B,H,W]`` downscaled by an integer `factor`: each cell takes its majority class if that
    class covers at least `min_ratio` of it, else 255 (DAFormer's ``downscale_label_ratio``; ignored pixels
    count as a class of their own)."""
    lab = label.clone()
    lab[(lab < 0) | (lab >= num_classes)] = num_classes
    onehot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()
    share = F.avg_pool2d(onehot, kernel_size=factor)
    ratio, out = share.max(dim=1)
    out[out == num_classes] = IGNORE_INDEX
    out[ratio < min_ratio] = IGNORE_INDEX
    return out


def masked_feature_distance(features: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None
                            ) -> torch.Tensor:
    """Return the mean over the pixels of `mask` ``[B,h,w]`` of ``||f_i - f^ImageNet_i||_2`` (DAFormer Eq. 7);
    0 (in the graph) when the mask is empty."""
    dist = torch.linalg.vector_norm(features.float() - reference.float(), dim=1)
    if mask is not None:
        dist = dist[mask]
    if dist.numel() == 0:
        return features.sum() * 0.0
    return dist.mean()


def block_mask(shape: tuple[int, int, int], patch: int, ratio: float, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Return MIC's mask ``[B,1,H,W]`` (float, 1 = keep) for images of `shape` ``(B, H, W)``: the image is cut into
    `patch` x `patch` blocks from the top-left corner and each block is dropped when ``U(0,1) <= ratio``
    (MIC Eq. 4: ``M_mb = [v > r]``), so a share `ratio` of the blocks is masked in expectation."""
    b, h, w = shape
    gh, gw = -(-h // patch), -(-w // patch)
    keep = (torch.rand(b, 1, gh, gw, generator=generator) > ratio).float()
    full = keep.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)[..., :h, :w]
    return full.to(device)


__all__ = ["block_mask", "classmix", "confidence_mask", "confidence_weight", "downscale_label_ratio",
           "masked_feature_distance", "pixel_weighted_ce", "pseudo_label_accuracy"]


@torch.no_grad()
def pseudo_label_accuracy(label: torch.Tensor, truth: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Return ``{"pl_acc": share of labelled pixels whose pseudo label is right, "pl_acc/<class>": the same per
    ground-truth class present}`` (empty without `truth`): what to plot when self-training does not help."""
    if truth is None:
        return {}
    valid = truth != IGNORE_INDEX
    if not bool(valid.any()):
        return {}
    out = {"pl_acc": (label[valid] == truth[valid]).float().mean()}
    for c in torch.unique(truth[valid]).tolist():
        here = truth == c
        name = CLASS_NAMES[c] if c < len(CLASS_NAMES) else str(c)
        out[f"pl_acc/{name.replace(' ', '_')}"] = (label[here] == c).float().mean()
    return out
