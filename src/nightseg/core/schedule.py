"""The learning-rate schedule every NightSeg training loop uses (the seeds' "poly" policy)."""

from __future__ import annotations


def poly_factor(step: int, max_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """Return the learning-rate multiplier at optimizer step `step` (0-based): ``(1 - step/max_steps)**power``.

    The seeds' "poly" policy (DANNet / seed 000: power 0.9, updated every iteration); with
    `warmup_steps` > 0 the factor first rises linearly from ``1/warmup_steps`` to 1.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1.0 - step / max_steps) ** power
