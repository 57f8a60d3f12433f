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
