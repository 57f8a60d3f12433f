"""Fixtures shared by every test module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
REALDATA = SHARED / "realdata"


@pytest.fixture
def realdata() -> Path:
    """Path to ``../shared/realdata``; the test is skipped when the shared folder is absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"{REALDATA} not present (the real sample files live beside the checkout)")
    return REALDATA


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys):
    """Run ``nightseg ARGS...`` in-process and return its exit code, stdout and stderr."""
    from nightseg.cli import main

    def _run(*args: str) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return _run


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NightSeg checkpoint of an untrained ``pspnet_tiny`` (seed 0): the smallest real segmenter."""
    import torch

    from nightseg.core.checkpoint import save_checkpoint
    from nightseg.models import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter("pspnet_tiny").eval()
    path = tmp_path_factory.mktemp("tiny_checkpoint") / "best.safetensors"
    save_checkpoint(path, model.state_dict(), {"model": model.config})
    return path


@pytest.fixture
def one_torch_thread():
    """Run the test with one intra-op torch thread (tiny tensors on the shared 2-core machine: faster than
    two threads fighting), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory):
    """Return ``make(counts, preset="tiny", **kw) -> root``: a synthetic day/night set (`nightseg synth`),
    generated once per session for each distinct request."""
    from nightseg.synthetic.generator import generate

    made: dict[str, Path] = {}

    def make(counts: dict[str, int], preset: str = "tiny", **kw) -> Path:
        key = repr((sorted(counts.items()), preset, sorted(kw.items())))
        if key not in made:
            root = tmp_path_factory.mktemp("synthetic")
            generate(root, preset=preset, counts=counts, progress=False, **kw)
            made[key] = root
        return made[key]

    return make
