"""``nrnn tune`` driven as a user drives it: a run file with a ``tune:`` section, a study that resumes, the
files it writes, and ``nrnn train --config DIR/best.yaml`` on its choice."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("optuna")
pytest.importorskip("pytorch_forecasting")

from test_cli import SMALL_RUN, assert_input_error, nrnn, sunspots_csv, write_run  # noqa: E402, F401

TUNE = """\
tune:
  trials: 3
  tolerance: 0.5
  perturbations: {white_noise: 0.4}
  space:
    additive: {low: 0.05, high: 0.5, log: true}
"""


def _run_file(tmp_path: Path, data: Path, tune: str = TUNE) -> Path:
    text = SMALL_RUN.format(data=data, out=tmp_path / "run") + tune
    return write_run(tmp_path / "run.yaml", text)


@pytest.mark.slow
def test_tune_writes_trials_best_and_front_then_resumes_and_trains(tmp_path, sunspots_csv):  # noqa: F811
    import pandas as pd

    from nrnn_plugin.yaml_io import read_yaml

    config = _run_file(tmp_path, sunspots_csv)
    out = tmp_path / "tune"
    result = nrnn("tune", "--config", str(config), "--out", str(out), "--threads", "1", timeout=400)
    assert result.returncode == 0, result.stderr
    assert "trial 0: validation mae clean" in result.stderr and "Traceback" not in result.stderr
    assert "next: nrnn train --config" in result.stdout and "rule: the most robust trial" in result.stdout
    trials = pd.read_csv(out / "trials.csv")
    assert trials.number.tolist() == [0, 1, 2] and trials.baseline.tolist() == [True, False, False]
    assert trials["param.additive"].iloc[0] == 0.0 and (trials["param.additive"].iloc[1:] >= 0.05).all()
    assert trials.clean.notna().all() and trials.perturbed.notna().all() and trials.chosen.sum() == 1
    assert (out / "front.png").read_bytes()[:4] == b"\x89PNG" and (out / "study.db").exists()
    best = read_yaml(out / "best.yaml")
    assert "tune" not in best and best["data"]["target"] == "spots"
    row = trials[trials.chosen].iloc[0]
    if row.number == 0:
        assert best["noise"] == {"enabled": False}
    else:
        assert best["noise"]["additive"] == pytest.approx(row["param.additive"])

    again = nrnn("tune", "--config", str(config), "--out", str(out), "--trials", "4", "--threads", "1", timeout=400)
    assert again.returncode == 0, again.stderr
    assert "trial 3 (additive=" in again.stderr and "trial 1 (" not in again.stderr  # only the new trial ran
    assert "GPU available" not in again.stderr
    assert len(pd.read_csv(out / "trials.csv")) == 4

    trained = nrnn("train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "best"), timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "best" / "model.ckpt").exists()


@pytest.mark.slow
def test_train_seeds_score_each_trial_by_the_mean_over_seeds(tmp_path, sunspots_csv):  # noqa: F811
    import re

    import pandas as pd

    from nrnn_plugin.app.run_config import load_run_config

    config = _run_file(tmp_path, sunspots_csv, TUNE.replace("trials: 3", "trials: 2\n  train_seeds: 2"))
    seed = load_run_config(config).trainer.seed
    out = tmp_path / "tune"
    result = nrnn("tune", "--config", str(config), "--out", str(out), "--threads", "1", timeout=400)
    assert result.returncode == 0, result.stderr
    trials = pd.read_csv(out / "trials.csv")
    for number in (0, 1):
        per_seed = [
            float(m.group(1))
            for s in (seed, seed + 1)
            for m in [re.search(rf"trial {number}[^\n]* seed {s}: validation mae clean ([0-9.e+-]+)", result.stderr)]
            if m is not None
        ]
        assert len(per_seed) == 2, result.stderr  # both seeds trained, and they differ
        assert per_seed[0] != per_seed[1]
        clean = trials.loc[trials.number == number, "clean"].iloc[0]
        assert clean == pytest.approx(sum(per_seed) / 2, rel=1e-3)  # printed to 4 significant digits
    assert result.stderr.count("(mean over 2 training seeds)") == 2


def test_tune_section_errors_name_the_key(tmp_path, sunspots_csv):  # noqa: F811
    bad = TUNE.replace("perturbations: {white_noise: 0.4}", "perturbations: {gaussian: 0.4}")
    result = nrnn("tune", "--config", str(_run_file(tmp_path, sunspots_csv, bad)), "--out", str(tmp_path / "o"))
    assert_input_error(result, "tune.perturbations.gaussian", "white_noise")
    bad = TUNE.replace("trials: 3", "trails: 3")
    result = nrnn("tune", "--config", str(_run_file(tmp_path, sunspots_csv, bad)), "--out", str(tmp_path / "o"))
    assert_input_error(result, "section 'tune': unknown key(s) ['trails']")
    bad = TUNE.replace("{low: 0.05, high: 0.5, log: true}", "{low: 0.0, high: 0.5, log: true}")
    result = nrnn("tune", "--config", str(_run_file(tmp_path, sunspots_csv, bad)), "--out", str(tmp_path / "o"))
    assert_input_error(result, "tune.space", "log scale")


def test_the_tune_section_is_part_of_the_run_file_schema(tmp_path, sunspots_csv):  # noqa: F811
    from nrnn_plugin.app.run_config import load_run_config
    from nrnn_plugin.app.tune_schema import OBJECTIVE_NAMES, PERTURBATION_NAMES, TuneSpec
    from nrnn_plugin.robustness import PERTURBATIONS
    from nrnn_plugin.tuning import OBJECTIVES

    assert set(PERTURBATION_NAMES) == set(PERTURBATIONS) and set(OBJECTIVE_NAMES) == set(OBJECTIVES)
    config = load_run_config(_run_file(tmp_path, sunspots_csv))
    assert isinstance(config.tune, TuneSpec) and config.tune.trials == 3
    assert load_run_config(_run_file(tmp_path, sunspots_csv, tune="")).tune is None
