"""The learning-rate schedules of the NightSeg training loops, as multipliers of the base rate.

* `poly_factor`: the seeds' "poly" policy, used by the engine and NightLab's RDN / HDM training;
* `linear_decay_factor`: CycleGAN's "linear" policy (constant, then linearly to 0), used by the translator.
"""

from __future__ import annotations


def poly_factor(step: int, max_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """Return the learning-rate multiplier at optimizer step `step` (0-based): ``(1 - step/max_steps)**power``.

    The seeds' "poly" policy (DANNet / seed 000: power 0.9, updated every iteration); with
    `warmup_steps` > 0 the factor first rises linearly from ``1/warmup_steps`` to 1.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1.0 - step / max_steps) ** power


def linear_decay_factor(step: int, max_steps: int, constant_steps: int) -> float:
    """Return the learning-rate multiplier at step `step` (0-based) of CycleGAN's "linear" policy.

    1 for the first `constant_steps` steps, then ``1 - (step - constant_steps) / (max_steps - constant_steps)``
    (at least 0): linear decay to 0 at `max_steps`.
    """
    if step < constant_steps:
        return 1.0
    return max(0.0, 1.0 - (step - constant_steps) / max(1, max_steps - constant_steps))
