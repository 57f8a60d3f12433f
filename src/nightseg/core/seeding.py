"""Seeds derived from counters, so that every random draw is a pure function of (seed, step, ...).

The training engine re-seeds the global generators before every step from ``(seed, step, rank)`` and
every data sample from ``(seed, stream, position)``; this is what makes a resumed run draw exactly the
numbers of an uninterrupted one without saving RNG states.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def step_seed(seed: int, *counters: int) -> int:
    """Return a 63-bit seed derived from `seed` and integer `counters` (NumPy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(c) for c in counters)]).generate_state(2)
    return int((int(state[0]) << 31 | int(state[1]) >> 1) & 0x7FFFFFFFFFFFFFFF)


def reseed(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's and Python's global generators from one 63-bit `seed`."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global generators seeded by `seed`, then restore their previous states."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    reseed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)
