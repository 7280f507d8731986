"""The static checks are part of the test suite, so the README's test command (and CI) runs them.

``ruff check`` (lint), ``ruff format --check`` and ``mypy`` over the package, the adapters, the tests, the examples
and the benchmarks, with the configuration in ``pyproject.toml``; a failure shows the tool's own output.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["nrnn_plugin", "adapters", "tests", "examples", "benchmarks"]


def _tool(name: str) -> str:
    """The tool installed beside this interpreter (the project's environment), else the one on ``PATH``."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `bash scripts/setup.sh` (it is in the dev extra)")
    return found


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "arguments",
    [["check", "--no-cache"], ["format", "--check", "--no-cache"]],
    ids=["lint", "format"],
)
def test_ruff(arguments):
    result = _run(_tool("ruff"), *arguments, *TARGETS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy():
    result = _run(_tool("mypy"), *TARGETS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_the_checks_see_a_planted_error(tmp_path):
    """Each tool, run as above with the project's configuration, fails on a file with an error of its kind."""
    bad = tmp_path / "planted.py"
    bad.write_text("import os\n\n\ndef f(x: int) -> str:\n    return x  # wrong type\n")
    config = ["--config", str(ROOT / "pyproject.toml")]
    assert _run(_tool("ruff"), "check", "--no-cache", *config, str(bad)).returncode != 0  # unused import
    bad.write_text("x = {'a':1}\n")
    assert _run(_tool("ruff"), "format", "--check", "--no-cache", *config, str(bad)).returncode != 0
    bad.write_text("def f(x: int) -> str:\n    return x\n")
    typed = _run(_tool("mypy"), "--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", str(bad))
    assert typed.returncode != 0 and "Incompatible return value type" in typed.stdout
