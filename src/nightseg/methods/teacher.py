"""The mean teacher of the self-training recipes (DACS, DAFormer, MIC, HRDA, ULCA with a teacher).

One copy of the segmenter whose weights are an exponential moving average (EMA) of the student's
(Tarvainen & Valpola, NeurIPS 2017; DACS, Tranheden et al., WACV 2021, Sec. 3.3):

    theta'_t = alpha_t * theta'_{t-1} + (1 - alpha_t) * theta_t,     alpha_t = min(1 - 1/(t + 1), alpha)

with the warm-up ``alpha_t`` of DACS's and DAFormer's released code (``t`` = optimizer steps done), so
``alpha_0 = 0`` copies the student and the teacher starts from it. ``alpha`` is 0.99 in DACS and
0.999 in DAFormer, HRDA and MIC.

Choices (written up in ``docs/methods.md``, "Self-training"):

* The update runs at the start of a training step, before the teacher labels anything, on the student
  weights of the previous optimizer step (as DAFormer's ``_update_ema(local_iter)``).
* The teacher always predicts in eval mode (BatchNorm running statistics, no dropout) and without
  gradient. Its BatchNorm statistics follow the student's by the same EMA (DACS and DAFormer average
  parameters only; their teacher then either runs in train mode, DACS, or keeps statistics frozen at
  the copy, which for a network trained from scratch would be those of the random initialisation).
  ``buffers: copy`` takes the student's statistics as they are instead.
* The teacher is a registered submodule (``teacher.net.*``), so its weights and buffers are part of the
  LightningModule's state: a killed and resumed run continues with the same teacher, and ``t`` is the
  engine's ``global_step`` (also restored). It is frozen (``requires_grad=False``): no optimizer sees it,
  and exported checkpoints hold the student only.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass
class TeacherParams:
    """The ``method.teacher`` keys of every self-training recipe."""

    alpha: float = 0.99
    """EMA coefficient (DACS: 0.99; DAFormer, HRDA, MIC: 0.999)."""
    warmup: bool = True
    """Use ``alpha_t = min(1 - 1/(t+1), alpha)`` (DACS's and DAFormer's code); false: ``alpha`` from step 0."""
    buffers: Literal["ema", "copy"] = "ema"
    """BatchNorm running statistics: averaged like the weights, or copied from the student."""


def ema_alpha(step: int, alpha: float, warmup: bool = True) -> float:
    """Return the EMA coefficient ``alpha_t = min(1 - 1/(t+1), alpha)`` at optimizer step `step` (DACS code)."""
    return min(1.0 - 1.0 / (int(step) + 1), float(alpha)) if warmup else float(alpha)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, alpha: float, buffers: str = "ema") -> None:
    """Set every parameter of `teacher` to ``alpha * teacher + (1 - alpha) * student`` in place; float buffers
    are averaged the same way (``buffers="ema"``) or copied, integer buffers (BatchNorm counters) copied."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach().to(t.dtype), alpha=1.0 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        if t.is_floating_point() and buffers == "ema":
            t.mul_(alpha).add_(s.to(t.dtype), alpha=1.0 - alpha)
        else:
            t.copy_(s)


class MeanTeacher(nn.Module):
    """An EMA copy ``net`` of a student network; `update` once per step, `predict` for pseudo labels."""

    def __init__(self, student: nn.Module, params: TeacherParams | None = None) -> None:
        super().__init__()
        self.params = params or TeacherParams()
        if not 0.0 <= self.params.alpha < 1.0:
            raise ValueError(f"teacher alpha must be in [0, 1), got {self.params.alpha}")
        self.net = copy.deepcopy(student)
        self.net.requires_grad_(False)

    def update(self, student: nn.Module, step: int) -> float:
        """Average `student` into the teacher with ``alpha_t`` of optimizer step `step`; return ``alpha_t``."""
        alpha = ema_alpha(step, self.params.alpha, self.params.warmup)
        ema_update_(self.net, student, alpha, self.params.buffers)
        return alpha

    @contextlib.contextmanager
    def frozen(self) -> Iterator[nn.Module]:
        """Yield the teacher network in eval mode under ``torch.no_grad()`` (for several calls in a row, e.g.
        a day and a night image with cross attention); its train/eval mode is restored afterwards."""
        mode = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                yield self.net
        finally:
            self.net.train(mode)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, fn: str | None = None, **kwargs) -> torch.Tensor:
        """Return ``net(x)`` (or ``net.<fn>(x, **kwargs)``) as float, in eval mode and without gradient; the
        module's train/eval mode is restored afterwards (Lightning owns it)."""
        mode = self.net.training
        self.net.eval()
        try:
            out = (getattr(self.net, fn) if fn else self.net)(x, **kwargs)
        finally:
            self.net.train(mode)
        return out.float() if isinstance(out, torch.Tensor) else out


__all__ = ["MeanTeacher", "TeacherParams", "ema_alpha", "ema_update_"]
