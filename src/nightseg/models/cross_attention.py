"""Cross attention between night and day features (ULCA, Section 3.2, Eq. 2-3).

Q comes from the night features X_n, K from the day features X_d (1x1 convs; ``qk_channels="full"`` keeps
C channels, as the paper's Eq. 2 writes them; ``"reduced"`` reduces them to C/8, the SAGAN/DANet
convention), and V from either the night features (the equation's text) or the day features (the
paper's remark that E is "a weighted sum of the features ... in the daytime features"):

    s_ji = softmax_i(K_i . Q_j)                  (Eq. 2, no 1/sqrt(d) scaling)
    E_j  = alpha * sum_i s_ji V_i + X_n_j        (Eq. 3, alpha initialised to 0)

The attention is computed with `scaled_dot_product_attention` (flash/memory-efficient kernels, which
never materialise the N x N map) and optionally in chunks of query positions.

At inference there is no day image; `policy` says what to do then: ``bypass`` returns the night
features unchanged, ``self`` attends the night features to themselves, ``reference`` needs the features
of a given reference day image (ACDC and Dark Zurich ship one per image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

VALUES = ("night", "day")
QK_CHANNELS = ("full", "reduced")
"""Width of Q and K: ``full`` = C (the paper: W_q, W_k map C to C), ``reduced`` = C / `reduction` (SAGAN)."""
# Attention map elements per chunk where no memory-efficient kernel exists (2**25 floats = 128 MiB).
CHUNK_ELEMENTS = 2**25
POLICIES = ("bypass", "self", "reference")


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)


def tokens(features: torch.Tensor) -> torch.Tensor:
    """Return feature maps [B,C,H,W] as one attention head of H*W tokens, [B,1,H*W,C], contiguous (the
    layout sdpa's fused kernels need)."""
    return features.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()


def auto_chunk(q: torch.Tensor, v: torch.Tensor) -> int:
    """Return the query chunk length that bounds the materialised attention map.

    PyTorch's CPU flash kernel needs equal Q and V widths (here C/8 vs C), so on the CPU sdpa falls back
    to the math kernel, which builds the N x M map: chunk the queries so a chunk's map stays at
    `CHUNK_ELEMENTS`. CUDA's memory-efficient kernel handles unequal widths (given contiguous `tokens`): no
    chunking there.
    """
    if q.device.type == "cuda" or q.shape[-1] == v.shape[-1]:
        return q.shape[2]
    return max(64, CHUNK_ELEMENTS // max(v.shape[2], 1))


class CrossAttention(nn.Module):
    """Cross attention module of ULCA (Eq. 2-3) on feature maps with `channels` channels."""

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        value: str = "night",
        policy: str = "bypass",
        chunk_size: int | None = None,  # query positions per chunk; None: automatic
        qk_channels: str = "reduced",
    ) -> None:
        super().__init__()
        if value not in VALUES:
            raise ValueError(f"value must be one of {VALUES}, got {value!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if qk_channels not in QK_CHANNELS:
            raise ValueError(f"qk_channels must be one of {QK_CHANNELS}, got {qk_channels!r}")
        inner = channels if qk_channels == "full" else max(channels // reduction, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.value_source = value
        self.policy = policy
        self.chunk_size = chunk_size

    def attend(self, night: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
        """Return E (Eq. 3) for night features [B,C,H,W] and day features [B,C,H',W'] (any H', W')."""
        b, c, h, w = night.shape
        # contiguous: every fused sdpa kernel (CUDA's flash, memory-efficient, cuDNN) needs the last dim at
        # stride 1, and the transposed conv output has stride N there; without it CUDA falls back to the math
        # kernel, which builds the N x M map in fp32 (1.55 GiB per 960x960 pair at batch 2, measured on an
        # H200: docs/benchmarks.md)
        q = tokens(self.query(night))  # [B,1,N,C/r]
        k = tokens(self.key(day))  # [B,1,M,C/r]
        source = night if self.value_source == "night" else day
        v = tokens(self.value(source))  # [B,1,M,C]
        if v.shape[2] != k.shape[2]:
            raise ValueError(
                f"value='night' needs night and day features of the same size, got {tuple(night.shape[-2:])} "
                f"and {tuple(day.shape[-2:])}; use value='day' for references of another size"
            )
        step = self.chunk_size or auto_chunk(q, v)
        if step >= q.shape[2]:
            attended = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        else:
            # Recompute each chunk in backward instead of keeping its attention map: memory stays O(step * M).
            keep = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
            parts = [
                checkpoint(_sdpa, q[:, :, i : i + step], k, v, use_reentrant=False)
                if keep
                else _sdpa(q[:, :, i : i + step], k, v)
                for i in range(0, q.shape[2], step)
            ]
            attended = torch.cat(parts, dim=2)
        attended = attended.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return night + self.alpha * attended

    def forward(
        self, night: torch.Tensor, day: torch.Tensor | None = None, policy: str | None = None
    ) -> torch.Tensor:
        """Return the attended night features.

        With `day` (training pairs, or the `reference` policy's reference features) this is Eq. 3.
        Without it, `policy` (default ``self.policy``) decides: ``bypass`` or ``self``.
        """
        if day is not None:
            return self.attend(night, day)
        policy = policy or self.policy
        if policy == "bypass":
            return night
        if policy == "self":
            return self.attend(night, night)
        if policy == "reference":
            raise ValueError("policy 'reference' needs the reference image's features as `day`")
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


class CrossAttentionSegmenter(nn.Module):
    """A segmenter with `CrossAttention` between its encoder and decoder, on the deepest features.

    ``forward(night)`` applies the inference policy; ``forward(night, reference)`` attends to the
    reference (day) image; ``forward_pair(night, day)`` returns (night logits with cross attention, day
    logits) encoding each image once, for training on day/night pairs.
    """

    def __init__(
        self, segmenter: nn.Module, value: str = "night", policy: str = "bypass", reduction: int = 8,
        qk_channels: str = "reduced",
    ) -> None:
        super().__init__()
        self.segmenter = segmenter
        # checkpoints written before qk_channels existed have no such key: they were "reduced" (C/8)
        self.attention = CrossAttention(segmenter.feature_channels, reduction, value, policy, qk_channels=qk_channels)
        self.feature_channels = segmenter.feature_channels
        self.config = {
            **segmenter.config,
            "cross_attention": {"value": value, "policy": policy, "reduction": reduction, "qk_channels": qk_channels},
        }

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the wrapped segmenter's encoder features (no attention yet)."""
        return self.segmenter.encode(x)

    def decode(self, features: list[torch.Tensor], out_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Return logits from (already attended) features."""
        return self.segmenter.decode(features, out_size)

    def forward(self, night: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """Return logits for `night` (RGB in [0,1]); with `reference`, attend to its features."""
        features = self.encode(night)
        day = self.encode(reference)[-1] if reference is not None else None
        features[-1] = self.attention(features[-1], day)
        return self.decode(features, night.shape[-2:])

    def forward_pair(self, night: torch.Tensor, day: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (night logits with cross attention to `day`, day logits without attention)."""
        night_features = self.encode(night)
        day_features = self.encode(day)
        day_logits = self.decode(day_features, day.shape[-2:])
        night_features[-1] = self.attention(night_features[-1], day_features[-1])
        return self.decode(night_features, night.shape[-2:]), day_logits
