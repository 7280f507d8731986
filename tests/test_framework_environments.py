"""Every framework's tests run: Darts and NeuralForecast in the project environment, GluonTS in its own
(``.venv-gluonts``, made by ``scripts/setup.sh``).

The framework test files skip themselves where their framework is missing; these tests make sure that in the
project environment that skip can only happen for GluonTS, and that GluonTS's tests then ran elsewhere.

GluonTS pins ``pandas<3``; the project environment has pandas 3 (what Darts, NeuralForecast and pytorch-forecasting
users get), so installing GluonTS there would change pandas for the whole suite. From the project environment this
test runs ``tests/test_gluonts.py`` with the GluonTS environment's interpreter and fails if it does not pass (or
if that environment is missing: run ``bash scripts/setup.sh``). Where GluonTS is importable the file runs directly
and this test is skipped.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv-gluonts" / "bin" / "python"


def _in_gluonts_environment() -> bool:
    return importlib.util.find_spec("gluonts") is not None


def test_the_project_environment_has_darts_and_neuralforecast():
    if _in_gluonts_environment():
        pytest.skip("the GluonTS environment has GluonTS only")
    missing = [name for name in ("darts", "neuralforecast") if importlib.util.find_spec(name) is None]
    assert not missing, f"{missing} not installed: run `bash scripts/setup.sh` (extras darts, neuralforecast)"


def test_gluonts_suite_passes_in_its_environment():
    if _in_gluonts_environment():
        pytest.skip("GluonTS is installed here: tests/test_gluonts.py runs in this session")
    assert PYTHON.exists(), f"{PYTHON} is missing: run `bash scripts/setup.sh` (it creates the GluonTS environment)"
    done = subprocess.run(
        [str(PYTHON), "-m", "pytest", "-q", "-p", "no:warnings", "tests/test_gluonts.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary, summary
