"""The framework examples (``examples/frameworks``): the paired statistics, and a smoke run of each example as a
user runs it (a subprocess writing its report). GluonTS's example runs from ``tests/test_gluonts.py``."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "frameworks"


def _paired():
    spec = importlib.util.spec_from_file_location("frameworks_paired", EXAMPLES / "paired.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_differences_interval_and_count():
    pytest.importorskip("scipy")
    paired = _paired()
    rows = []
    for seed, (plain, noisy) in enumerate([(1.0, 0.8), (1.0, 0.9), (1.0, 1.1), (1.0, 0.6)]):
        for perturbation_seed, jitter in ((0, 0.0), (1, 0.2)):  # averaged over perturbation seeds first
            for model, value in (("plain", plain), ("noisy", noisy)):
                rows.append(("white_noise", 0.4, "mae", value + jitter, perturbation_seed, seed, model))
    results = pd.DataFrame(rows, columns=["perturbation", "strength", "metric", "value", "seed", "train_seed", "model"])
    (row,) = paired.paired(results).itertuples()
    diffs = [-0.2, -0.1, 0.1, -0.4]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    assert row.diff == pytest.approx(mean) and row.improved == 3 and row.seeds == 4
    assert row.ci_high - row.diff == pytest.approx(3.182446 * sd / 2, rel=1e-5)  # t(0.975, 3)
    assert row.plain == pytest.approx(1.1) and row.relative == pytest.approx(100 * mean / 1.1)
    assert "| white_noise | 0.4 |" in paired.markdown(paired.paired(results))


@pytest.mark.parametrize(
    "script, framework",
    [("darts_sunspots.py", "darts"), ("neuralforecast_airpassengers.py", "neuralforecast")],
)
def test_example_smoke_run_writes_its_report(script, framework, tmp_path):
    pytest.importorskip(framework)
    pytest.importorskip("statsmodels")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    name = script.removesuffix(".py") + "_smoke"
    report = (tmp_path / f"{name}.md").read_text()
    for expected in ("| clean | 0 |", "| pgd | 0.1 |", "seeds improved", "fit wall time per model"):
        assert expected in report, expected
    results = pd.read_csv(tmp_path / f"{name}.csv")
    assert set(results.model) == {"plain", "noisy"} and set(results.train_seed) == {0, 1}
    assert results.value.notna().all()
