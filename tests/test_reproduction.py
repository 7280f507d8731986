"""benchmarks/reproduce_robustness.py runs end to end (``--quick``: tiny budget) and reports paired statistics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optuna")
pytest.importorskip("sktime")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_robustness.py"


@pytest.mark.slow
def test_quick_study_tunes_evaluates_and_reports(tmp_path):
    import pandas as pd

    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--datasets",
            "ItalyPowerDemand",
            "--arms",
            "plain",
            "noise",
            "dropout",
            "--work",
            str(tmp_path / "work"),
            "--jobs",
            "1",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "work" / "quick" / "results"
    chosen = pd.read_csv(out / "evidence_chosen_quick.csv")
    assert set(chosen.arm) == {"noise", "dropout"} and (chosen.trial >= 0).all()
    raw = pd.read_csv(out / "evidence_raw_quick.csv")
    assert set(raw.arm) == {"plain", "noise", "dropout"} and set(raw.seed) == {0, 1}
    paired = pd.read_csv(out / "evidence_paired_quick.csv")
    assert {"diff", "low", "high", "improved", "n", "detectable"} <= set(paired.columns)
    assert (paired.low <= paired["diff"]).all() and (paired["diff"] <= paired.high).all()
    assert "## ItalyPowerDemand" in (out / "evidence_summary_quick.md").read_text()
