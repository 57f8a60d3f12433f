"""Seeded mutation fuzzing of every reader (`tests/fuzz_cases.py`): images, label maps, dataset trees, configs and
overrides, checkpoints and their metadata, ONNX files, videos, pair CSVs. Every input is accepted or refused with
a one-line UserError; no other exception (a traceback for the user) is allowed.

``NIGHTSEG_FUZZ_EXAMPLES`` sets the inputs per reader (default 25; half for the three slow readers);
``bench/bench_fuzz.py`` runs a bigger batch and prints the counts recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from fuzz_cases import READERS, Seeds, fuzz, mutate_bytes

EXAMPLES = int(os.environ.get("NIGHTSEG_FUZZ_EXAMPLES", "25"))
HEAVY = {"ONNX files", "dataset trees", "configs + overrides"}  # ~0.5 s an input: half as many in the fast lane

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return Seeds(tmp_path_factory.mktemp("fuzz_seeds"))


@pytest.mark.parametrize("reader", list(READERS))
def test_reader_never_raises_anything_but_a_one_line_user_error(reader, seeds, tmp_path, caplog):
    n = max(5, EXAMPLES // 2) if reader in HEAVY else EXAMPLES
    with caplog.at_level(logging.ERROR):  # the readers' warnings about odd inputs are not what is tested here
        result = fuzz(reader, n, seed=0, seeds=seeds, work=tmp_path)
    assert result.tried == n
    assert result.failures == [], f"{len(result.failures)} of {n} inputs raised:\n" + "\n".join(result.failures[:3])
    assert result.accepted + result.refused + result.known == n
    assert result.refused > 0  # the mutations do break inputs: the readers are really exercised


def test_mutations_are_seeded_and_change_the_input():
    data = bytes(range(256)) * 4
    first = [mutate_bytes(data, np.random.default_rng([0, i])) for i in range(20)]
    again = [mutate_bytes(data, np.random.default_rng([0, i])) for i in range(20)]
    assert first == again and sum(m != data for m in first) >= 19
