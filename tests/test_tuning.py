"""nrnn_plugin.tuning: the baseline is trial 0, the rule picks what it says, studies resume, two workers share
one SQLite study, constrained studies prune, and the outputs are what ``nrnn train`` reads.

The objective here is a cheap closed form of the noise levels (no training), so the tests check the tuner,
not a model: ``clean = 1 + a^2 + m``, ``perturbed = 2 - a + m^2`` (noise costs clean accuracy and buys
robustness, as a tuner has to trade off).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

optuna = pytest.importorskip("optuna")

from nrnn_plugin.config import NoiseConfig  # noqa: E402
from nrnn_plugin.tuning import Param, SearchSpace, choose, pareto_mask, tune  # noqa: E402
from nrnn_plugin.yaml_io import read_yaml  # noqa: E402


def objective(candidate):
    a, m = candidate.noise.additive, candidate.noise.multiplicative
    return {"clean": 1 + a**2 + m, "perturbed": 2 - a + m**2}


def test_trial_zero_is_the_noise_free_baseline_and_the_rule_holds(tmp_path):
    result = tune(objective, None, n_trials=12, out_dir=tmp_path, tolerance=0.05, seed=1)
    frame = result.trials
    assert len(frame) == 12 and (frame.state == "COMPLETE").all()
    assert frame.baseline.tolist() == [True] + [False] * 11
    base = frame.iloc[0]
    assert base["param.additive"] == 0.0 and base["param.multiplicative"] == 0.0
    assert (base.clean, base.perturbed) == (1.0, 2.0)
    qualified = frame[frame.clean <= 1.05 + 1e-12]
    expected = qualified.sort_values(["perturbed", "number"]).iloc[0]
    assert result.chosen.number == expected.number
    assert result.chosen.noise.additive == pytest.approx(expected["param.additive"])
    assert frame.chosen.sum() == 1 and bool(frame.loc[frame.number == expected.number, "chosen"].iloc[0])
    assert frame.loc[frame.number == expected.number, "pareto"].iloc[0]  # the choice is on the front


def test_the_baseline_is_chosen_when_nothing_qualifies(tmp_path):
    def costly(candidate):  # every noisy trial costs 50% clean metric
        a = candidate.noise.additive
        return {"clean": 1 + 0.5 * (a > 0), "perturbed": 2 - a}

    result = tune(costly, None, n_trials=4, out_dir=tmp_path, tolerance=0.02)
    assert result.chosen.is_baseline and result.chosen.number == 0
    assert read_yaml(tmp_path / "best.yaml")["noise"] == {"enabled": False}


def test_maximize_direction_and_pareto_mask():
    assert pareto_mask([1, 2, 3], [3, 2, 4]) == [True, True, False]
    assert pareto_mask([1, 2, 3], [3, 2, 4], direction="maximize") == [False, False, True]
    frame = pd.DataFrame(
        {
            "number": [0, 1, 2],
            "state": "COMPLETE",
            "baseline": [True, False, False],
            "param.additive": [0.0, 0.1, 0.5],
            "clean": [0.90, 0.895, 0.80],
            "perturbed": [0.60, 0.70, 0.80],
        }
    )
    space = SearchSpace((Param("additive", low=0.01, high=1.0, log=True),))
    chosen = choose(frame, direction="maximize", tolerance=0.01, space=space)
    assert chosen.number == 1 and chosen.noise.additive == 0.1  # trial 2 is more robust but costs 11% clean


def test_outputs_trials_csv_best_yaml_front_png(tmp_path):
    run_file = {"data": {"path": "x.csv", "time": "t", "target": "y"}, "tune": {"trials": 3}}
    tune(objective, None, n_trials=5, out_dir=tmp_path, run_file=run_file, tolerance=1.0)
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert len(trials) == 5
    for column in ("number", "param.additive", "param.multiplicative", "clean", "perturbed", "seconds", "chosen"):
        assert column in trials
    best = read_yaml(tmp_path / "best.yaml")
    assert set(best) == {"data", "noise"}  # the run file without its tune section, with the chosen noise
    noise = NoiseConfig.from_dict(best["noise"])
    row = trials[trials.chosen].iloc[0]
    assert noise.additive == pytest.approx(row["param.additive"])
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_running_again_continues_the_study(tmp_path):
    calls = []

    def counted(candidate):
        calls.append(candidate.number)
        return objective(candidate)

    tune(counted, None, n_trials=3, out_dir=tmp_path)
    result = tune(counted, None, n_trials=6, out_dir=tmp_path)
    assert calls == [0, 1, 2, 3, 4, 5]  # the second call ran only the three new trials
    assert result.trials.baseline.sum() == 1 and len(result.trials) == 6
    tune(counted, None, n_trials=6, out_dir=tmp_path)  # complete: nothing runs, outputs are rewritten
    assert len(calls) == 6


def test_a_study_refuses_another_space(tmp_path):
    tune(objective, None, n_trials=2, out_dir=tmp_path)
    other = SearchSpace((Param("additive", low=0.1, high=0.2),))
    with pytest.raises(ValueError, match="space"):
        tune(objective, other, n_trials=3, out_dir=tmp_path)


def test_space_parsing_and_errors():
    space = SearchSpace.from_dict(
        {
            "additive": {"low": 0.01, "high": 1.0, "log": True},
            "scheme": ["euler_maruyama", "milstein"],
            "schedule.kind": ["constant", "cosine"],
            "schedule.warmup": {"low": 10, "high": 100, "integer": True},
            "dropout": {"low": 0.0, "high": 0.5},
        },
        base=NoiseConfig(seed=3),
    )
    values = space.baseline_values()
    assert values == {
        "additive": 0.0,
        "scheme": "euler_maruyama",
        "schedule.kind": "constant",
        "schedule.warmup": 0,
        "dropout": 0.0,
    }
    noisy = space.noise_config({**values, "additive": 0.2, "schedule.kind": "cosine", "schedule.warmup": 50})
    assert noisy.additive == 0.2 and noisy.seed == 3 and noisy.schedule.kind == "cosine"
    assert noisy.schedule.warmup == 50
    with pytest.raises(ValueError, match=r"tune.space.additive.low: expected a number > 0 on a log scale"):
        SearchSpace.from_dict({"additive": {"low": 0.0, "high": 1.0, "log": True}})
    with pytest.raises(ValueError, match=r"tune.space.additive: unknown key\(s\) \['hi'\]"):
        SearchSpace.from_dict({"additive": {"low": 0.0, "hi": 1.0}})
    with pytest.raises(ValueError, match="NoiseConfig.scheme"):
        SearchSpace.from_dict({"scheme": ["euler", "milstein"]})
    with pytest.raises(ValueError, match="tune.space.additive.high"):
        SearchSpace.from_dict({"additive": {"low": 0.5, "high": 0.1}})


def test_constrained_studies_prune_and_never_the_baseline(tmp_path):
    def slow_to_learn(candidate):
        # intermediate "validation loss": trials with large additive noise are bad from the first epoch
        for epoch in range(5):
            candidate.report(1.0 + 10 * candidate.noise.additive + 0.01 * epoch, epoch)
        return objective(candidate)

    result = tune(slow_to_learn, None, n_trials=14, out_dir=tmp_path, objective="constrained", seed=0)
    states = result.trials.set_index("number").state
    assert states[0] == "COMPLETE"
    assert (states == "PRUNED").sum() >= 1
    pruned = result.trials[result.trials.state == "PRUNED"]
    assert pruned["param.additive"].min() > result.trials.loc[states.values == "COMPLETE", "param.additive"].median()


def test_pareto_studies_do_not_prune(tmp_path):
    def reporting(candidate):
        candidate.report(100.0, 0)  # a no-op: Optuna cannot prune multi-objective studies
        return objective(candidate)

    result = tune(reporting, None, n_trials=5, out_dir=tmp_path)
    assert (result.trials.state == "COMPLETE").all()


WORKER = textwrap.dedent(
    """
    import os, sys, time
    from nrnn_plugin.tuning import tune

    def objective(candidate):
        time.sleep(0.2)
        a, m = candidate.noise.additive, candidate.noise.multiplicative
        return {"clean": 1 + a * a + m, "perturbed": 2 - a + m * m, "pid": os.getpid()}

    tune(objective, None, n_trials=int(sys.argv[2]), storage=sys.argv[1], out_dir=sys.argv[3], seed=None)
    """
)


def test_two_workers_share_one_sqlite_study(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), url, "10", str(tmp_path / f"out{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="nrnn-tune", storage=url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert 10 <= len(complete) <= 11  # the total is shared; at most one trial over while both finish
    assert sum(bool(t.user_attrs.get("nrnn_baseline")) for t in study.trials) == 1
    assert len({t.user_attrs["pid"] for t in complete}) == 2  # both processes ran trials
    assert len(pd.read_csv(tmp_path / "out1" / "trials.csv")) >= 10


def test_import_nrnn_plugin_does_not_import_optuna():
    code = "import sys, nrnn_plugin; assert 'optuna' not in sys.modules and 'nrnn_plugin.tuning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lightning_pruning_callback_only_for_prunable_non_baseline_trials(tmp_path):
    pytest.importorskip("optuna_integration")
    pytest.importorskip("lightning")
    from optuna_integration import PyTorchLightningPruningCallback

    from nrnn_plugin.integrations.tuning import pruning_callback

    seen = {}

    def record(candidate):
        seen[candidate.number] = pruning_callback(candidate, monitor="val_loss")
        return objective(candidate)

    tune(record, None, n_trials=2, out_dir=tmp_path / "c", objective="constrained")
    assert seen[0] == [] and isinstance(seen[1][0], PyTorchLightningPruningCallback)
    assert seen[1][0].monitor == "val_loss"
    tune(record, None, n_trials=2, out_dir=tmp_path / "p", objective="pareto")
    assert seen[1] == []  # Optuna cannot prune a multi-objective study
