"""The four zero-reference losses of Zero-DCE (Guo et al., CVPR 2020, Section 3.3), as the paper writes them.

    L_total = L_spa + L_exp + W_col * L_col + W_tvA * L_tvA,   W_col = 0.5, W_tvA = 20   (paper Sec. 3.3)

The official code differs in details (no absolute values in L_spa and a squared L_exp, zero padding at the
border in L_spa, L_col = sqrt(sum of 4th powers), weights 10/5/200); these follow the paper's equations.
Every loss is averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

W_SPA, W_EXP, W_COL, W_TVA = 1.0, 1.0, 0.5, 20.0
EXPOSURE_LEVEL = 0.6
EXPOSURE_PATCH = 16
SPATIAL_REGION = 4


def spatial_consistency_loss(
    enhanced: torch.Tensor, original: torch.Tensor, region: int = SPATIAL_REGION
) -> torch.Tensor:
    """Return L_spa (Sec. 3.3): (1/K) sum_i sum_{j in Omega(i)} (|Y_i - Y_j| - |I_i - I_j|)^2.

    Y, I: mean intensity (over RGB) of non-overlapping `region` x `region` regions of the enhanced and
    original images; Omega(i): the existing left/right/up/down neighbours of region i; K: number of regions.
    """
    y = F.avg_pool2d(enhanced.mean(1, keepdim=True), region)
    i = F.avg_pool2d(original.mean(1, keepdim=True), region)
    k = y.shape[-2] * y.shape[-1]
    # each unordered neighbour pair appears twice in the double sum (j in Omega(i) and i in Omega(j))
    horizontal = ((y[..., :, 1:] - y[..., :, :-1]).abs() - (i[..., :, 1:] - i[..., :, :-1]).abs()) ** 2
    vertical = ((y[..., 1:, :] - y[..., :-1, :]).abs() - (i[..., 1:, :] - i[..., :-1, :]).abs()) ** 2
    per_image = 2.0 * (horizontal.flatten(1).sum(1) + vertical.flatten(1).sum(1)) / k
    return per_image.mean()


def exposure_control_loss(
    enhanced: torch.Tensor, level: float = EXPOSURE_LEVEL, patch: int = EXPOSURE_PATCH
) -> torch.Tensor:
    """Return L_exp (Sec. 3.3): (1/M) sum_k |Y_k - E| over the M non-overlapping `patch` x `patch` regions."""
    y = F.avg_pool2d(enhanced.mean(1, keepdim=True), patch)
    return (y - level).abs().mean()


def color_constancy_loss(enhanced: torch.Tensor) -> torch.Tensor:
    """Return L_col (Sec. 3.3): sum over (R,G), (R,B), (G,B) of (J^p - J^q)^2, J^p the mean of channel p."""
    r, g, b = enhanced.mean(dim=(2, 3)).unbind(1)
    return ((r - g) ** 2 + (r - b) ** 2 + (g - b) ** 2).mean()


def illumination_smoothness_loss(curves: torch.Tensor) -> torch.Tensor:
    """Return L_tvA (Sec. 3.3): (1/N) sum_n sum_c mean_pixels (|grad_x A_n^c| + |grad_y A_n^c|)^2.

    `curves` is [B, 3N, H, W]; gradients are forward differences on the (H-1) x (W-1) grid.
    """
    n = curves.shape[1] // 3
    dx = (curves[..., :-1, 1:] - curves[..., :-1, :-1]).abs()
    dy = (curves[..., 1:, :-1] - curves[..., :-1, :-1]).abs()
    per_map = ((dx + dy) ** 2).mean(dim=(2, 3))  # [B, 3N]
    return (per_map.sum(1) / n).mean()


def zero_reference_loss(
    enhanced: torch.Tensor, original: torch.Tensor, curves: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return (L_total with the paper's weights, the four unweighted terms as floats)."""
    terms = {
        "spa": spatial_consistency_loss(enhanced, original),
        "exp": exposure_control_loss(enhanced),
        "col": color_constancy_loss(enhanced),
        "tvA": illumination_smoothness_loss(curves),
    }
    total = W_SPA * terms["spa"] + W_EXP * terms["exp"] + W_COL * terms["col"] + W_TVA * terms["tvA"]
    return total, {k: float(v.detach()) for k, v in terms.items()}
