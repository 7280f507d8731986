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
            "--tune-seeds",
            "2",
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
    # --tune-seeds 2: every trial trained with seeds 1000 and 1001, the study scored their mean
    import json

    (tag,) = list((tmp_path / "work" / "quick" / "trials").iterdir())
    runs = [json.loads((tag / name).read_text()) for name in ("plain.json", "plain_seed1001.json")]
    assert runs[0] != runs[1]
    (study,) = (tmp_path / "work" / "quick" / "studies").glob("*_noise")
    trials = pd.read_csv(study / "trials.csv")
    assert trials.loc[trials.number == 0, "clean"].iloc[0] == pytest.approx((runs[0]["clean"] + runs[1]["clean"]) / 2)


def test_compare_isas_counts_agreeing_verdicts_and_lists_the_others():
    import pandas as pd

    sys.path.insert(0, str(SCRIPT.parent))
    import compare_isas

    def frame(rows):
        columns = ["dataset", "arm", "control", "perturbation", "strength", "diff", "low", "high", "clear", "better"]
        return pd.DataFrame(rows, columns=columns).assign(improved=5, n=8)

    first = frame(
        [
            ("ECG5000", "noise", "plain", "white_noise", 0.0, 0.01, 0.005, 0.015, True, True),  # win
            ("ECG5000", "noise", "plain", "fgsm", 0.2, -0.02, -0.03, -0.01, True, False),  # loss
            ("ECG5000", "noise", "plain", "pgd", 0.2, 0.01, -0.01, 0.03, False, True),  # tie
        ]
    )
    second = first.copy()
    second.loc[2, ["low", "high", "clear"]] = [0.001, 0.019, True]  # pgd: win on the second run, p about 0.03
    merged = compare_isas.compare(first, second)
    assert merged.verdict_a.tolist() == ["win", "loss", "tie"]
    assert merged.verdict_b.tolist() == ["win", "loss", "win"] and merged.agree.sum() == 2
    # three grades: p about 0.002 for the first two cells (clear), 0.03 for the second run's pgd (at the threshold)
    assert merged.graded_a.tolist() == ["win", "loss", "tie"]
    assert merged.graded_b.tolist() == ["win", "loss", "threshold win"] and merged.agree_graded.sum() == 2
    text = compare_isas.report(merged, ("A", "B"), ("a", "b"))
    assert "**2 of 3 cells agree** under the 95% rule; 2 of 3 under the demo's three grades" in text
    assert (
        "| ECG5000 | noise vs plain | pgd 0.2 | tie +1.00 [-1.00, +3.00] (tie) | "
        "win +1.00 [+0.10, +1.90] (threshold win) |"
    ) in text
    assert "| ECG5000 | clean | win +1.00 [+0.50, +1.50] 5/8 | win +1.00 [+0.50, +1.50] 5/8 |" in text
