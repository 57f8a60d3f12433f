"""The architecture rules of docs/architecture.md, checked on the source tree.

Layers and cycles are import-linter's contracts (pyproject.toml, also run by the README's test command);
the rules import-linter cannot express are checked here with the ``ast`` module.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "nightseg"
MAX_LINES = 500
COHESIVE = "one cohesive"  # what a longer module's docstring says, with the reason


def _modules(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def test_import_linter_contracts_are_kept():
    # in a child process: import-linter reconfigures logging, which would hide later tests' log records
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert proc.stdout.count(" KEPT") == 2 and "BROKEN" not in proc.stdout


def private_imports(path: Path) -> list[str]:
    """Return ``file:line: name`` for every underscore name taken from another nightseg module in `path`:
    ``from nightseg.x import _name``, or ``x._name`` where ``x`` is an imported nightseg module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nightseg"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno}: {node.module}.{alias.name}")
                else:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("nightseg"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_takes_another_modules_underscore_names():
    offenders = [hit for path in _modules(PACKAGE, ROOT / "bench", ROOT / "tests") for hit in private_imports(path)]
    assert offenders == []


def test_the_check_finds_a_private_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from nightseg.core.io import _open, read_image\nimport nightseg.core.io as io\nio._open\n")
    assert private_imports(sample) == ["sample.py:1: nightseg.core.io._open", "sample.py:3: io._open"]


def test_long_modules_say_why_they_are_one_piece():
    long = {}
    for path in _modules(PACKAGE):
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            long[str(path.relative_to(PACKAGE))] = COHESIVE in doc.lower()
    assert all(long.values()), f"modules over {MAX_LINES} lines without a reason in their docstring: {long}"

