"""The ``nrnn`` command line, driven as a user drives it: subprocesses, exit codes, stdout tables, files.

Bad input must give one line on stderr that says what is wrong, exit status 2 and no traceback. Real data
comes from statsmodels (shipped offline), written to ``tmp_path`` as CSV at test time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXIT_INPUT = 2


def nrnn(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """Run ``python -m nrnn_plugin ARGS`` (what the ``nrnn`` console script runs)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("NRNN_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "nrnn_plugin", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_input_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, no traceback, exactly one non-progress line on stderr holding every fragment."""
    assert result.returncode == EXIT_INPUT, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# ---------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def sunspots_csv(tmp_path_factory) -> Path:
    """Yearly sunspot numbers 1700-2008 (statsmodels), as a user's CSV: ``year`` (int), ``spots``."""
    sm = pytest.importorskip("statsmodels.api")
    data = sm.datasets.sunspots.load_pandas().data
    frame = data.rename(columns={"YEAR": "year", "SUNACTIVITY": "spots"}).astype({"year": int})
    path = tmp_path_factory.mktemp("data") / "sunspots.csv"
    frame.to_csv(path, index=False)
    return path


def write_run(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


SMALL_RUN = """\
data:
  path: {data}
  time: year
  target: spots
  max_encoder_length: 12
  max_prediction_length: 4
  normalizer: group
  validation: 30
  test: 30
model:
  class: RecurrentNetwork
  hidden_size: 8
  rnn_layers: 1
  dropout: 0.0
  learning_rate: 0.01
  loss: MAE
trainer:
  max_epochs: 2
  batch_size: 32
  limit_train_batches: 3
noise:
  additive: 0.1
  multiplicative: 0.05
  seed: 0
output:
  dir: {out}
"""


# ---------------------------------------------------------------------------------------------- light commands


def test_help_and_plugins_do_not_import_lightning_or_forecasting():
    code = textwrap.dedent(
        """
        import contextlib, io, json, sys
        from nrnn_plugin.app.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main(["--help"])
            except SystemExit as exit:
                assert exit.code == 0
        for command in ("demo", "train", "tune", "robustness", "bench", "plugins"):
            assert command in out.getvalue(), command
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["plugins", "--json"]) == 0
        assert {e["name"] for e in json.loads(out.getvalue())} >= {"builtin", "torch", "forecasting", "nrnn"}
        frameworks = ("lightning", "pytorch_lightning", "pytorch_forecasting", "darts", "neuralforecast", "gluonts")
        frameworks += ("optuna",)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in frameworks)
        assert not heavy, heavy
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def broken_plugin_path(tmp_path) -> Path:
    """A third-party distribution whose ``nrnn_plugin`` entry point fails to import."""
    site = tmp_path / "site"
    dist = site / "broken_nrnn_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-nrnn-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nrnn_plugin]\nbroken = broken_nrnn_module\n")
    (site / "broken_nrnn_module.py").write_text("raise ImportError('needs the frobnicator package')\n")
    return site


def test_plugins_lists_the_adapters_and_why_a_plugin_was_skipped(broken_plugin_path):
    result = nrnn("plugins", env={"PYTHONPATH": str(broken_plugin_path)})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "RuntimeWarning" not in result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    for name in ("builtin", "torch", "forecasting", "nrnn"):
        assert name in rows and " loaded " in rows[name] + " ", result.stdout
    assert "torch.nn.LSTM" in rows["torch"]
    assert "entry point broken-nrnn-plugin" in rows["broken"]
    assert "skipped" in rows["broken"] and "ImportError: needs the frobnicator package" in rows["broken"]


# ---------------------------------------------------------------------------------------------- bad run files


def test_missing_config_file(tmp_path):
    assert_input_error(nrnn("train", "--config", str(tmp_path / "nope.yaml")), "config file not found", "nope.yaml")


def test_unknown_yaml_keys_are_named_with_the_allowed_ones(tmp_path, sunspots_csv):
    text = SMALL_RUN.format(data=sunspots_csv, out=tmp_path).replace(
        "  target: spots\n", "  target: spots\n  tagret: x\n"
    )
    run = write_run(tmp_path / "run2.yaml", text)
    assert_input_error(nrnn("train", "--config", str(run)), "section 'data': unknown key(s) ['tagret']", "'target'")


def test_invalid_noise_config_shows_the_noiseconfig_message(tmp_path, sunspots_csv):
    text = SMALL_RUN.format(data=sunspots_csv, out=tmp_path).replace("additive: 0.1", "additive: -0.5")
    run = write_run(tmp_path / "run.yaml", text)
    assert_input_error(
        nrnn("train", "--config", str(run)), "noise: NoiseConfig.additive: expected a finite number >= 0.0, got -0.5"
    )


def test_unsupported_model_names_the_supported_ones(tmp_path, sunspots_csv):
    text = SMALL_RUN.format(data=sunspots_csv, out=tmp_path).replace("class: RecurrentNetwork", "class: NBeats")
    run = write_run(tmp_path / "run.yaml", text)
    assert_input_error(
        nrnn("train", "--config", str(run)),
        "model.class: expected one of 'RecurrentNetwork', 'DeepAR', 'TemporalFusionTransformer'",
        "got 'NBeats'",
    )


# ---------------------------------------------------------------------------------------------- bad data


def test_missing_data_file(tmp_path):
    run = write_run(tmp_path / "run.yaml", SMALL_RUN.format(data=tmp_path / "missing.csv", out=tmp_path))
    assert_input_error(nrnn("train", "--config", str(run)), "data file not found", "missing.csv")


def test_wrong_column_names_say_which_are_missing_and_which_exist(tmp_path, sunspots_csv):
    text = SMALL_RUN.format(data=sunspots_csv, out=tmp_path).replace("target: spots", "target: sunspots")
    run = write_run(tmp_path / "run.yaml", text)
    assert_input_error(
        nrnn("train", "--config", str(run)), "column(s) ['sunspots'] not found", "columns ['year', 'spots']"
    )


def test_non_numeric_target(tmp_path, sunspots_csv):
    lines = sunspots_csv.read_text().splitlines()
    lines[6] = lines[6].split(",")[0] + ",n/a?"  # data row 5
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    run = write_run(tmp_path / "run.yaml", SMALL_RUN.format(data=bad, out=tmp_path))
    assert_input_error(nrnn("train", "--config", str(run)), "target column 'spots' must be numeric", "row 5", "'n/a?'")


def test_too_short_series_gives_the_minimum_length(tmp_path, sunspots_csv):
    lines = sunspots_csv.read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:61]) + "\n")  # header + 60 years
    run = write_run(tmp_path / "run.yaml", SMALL_RUN.format(data=short, out=tmp_path))
    # 12 encoder + 4 prediction steps of training, then 30 validation and 30 test steps: 76.
    assert_input_error(
        nrnn("train", "--config", str(run)), "series are too short", "60 time steps", "minimum length is 76"
    )


# ---------------------------------------------------------------------------------------------- train -> robustness


def test_train_with_and_without_noise_then_compare_robustness(tmp_path, sunspots_csv):
    """The user's workflow: one run file trained with a noise section and without it, then one report."""
    noisy, plain = tmp_path / "noisy", tmp_path / "plain"
    run = write_run(tmp_path / "run.yaml", SMALL_RUN.format(data=sunspots_csv, out=noisy))
    result = nrnn("train", "--config", str(run))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Noisy RNN training: additive=0.1, multiplicative=0.05" in result.stdout
    assert "RecurrentNetwork + noise: epoch 2/2" in result.stderr and "val_loss" in result.stderr
    assert "GPU available" not in result.stderr  # Lightning's banners are silenced
    for name in ("model.ckpt", "model.nrnn.pt", "run.yaml"):
        assert (noisy / name).is_file(), name

    result = nrnn("train", "--config", str(run), "--no-noise", "--out", str(plain), "--max-epochs", "1")
    assert result.returncode == 0, result.stderr
    assert "(plain training)" in result.stdout and "RecurrentNetwork: epoch 1/1" in result.stderr

    result = nrnn(
        "robustness",
        "--checkpoint",
        str(noisy / "model.ckpt"),
        "--checkpoint",
        str(plain / "model.ckpt"),
        "--data",
        str(sunspots_csv),
        "--perturbations",
        "white_noise,fgsm",
        "--strengths",
        "0.2",
        "--seeds",
        "2",
        "--out",
        str(tmp_path / "report"),
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout.splitlines()
    assert table[0].startswith("RecurrentNetwork + noise vs RecurrentNetwork on 27 test windows of sunspots.csv: MAE")
    assert table[2].split() == [
        "perturbation",
        "strength",
        "RecurrentNetwork",
        "+",
        "noise",
        "MAE",
        "RecurrentNetwork",
        "MAE",
        "2nd",
        "vs",
        "1st",
    ]
    assert [line.split()[0] for line in table[4:]] == ["clean", "white_noise", "fgsm"]

    import pandas as pd

    results = pd.read_csv(tmp_path / "report" / "robustness.csv")
    assert list(results.columns) == ["model", "perturbation", "strength", "metric", "value", "seed"]
    assert set(results["model"]) == {"RecurrentNetwork + noise", "RecurrentNetwork"}
    assert set(results["perturbation"]) == {"white_noise", "fgsm"}
    assert set(results["seed"]) == {0, 1}
    clean = results[(results.strength == 0) & (results.metric == "mae")].groupby("model")["value"]
    assert (clean.nunique() == 1).all() and (clean.first() > 0).all()
    assert clean.first()["RecurrentNetwork"] != clean.first()["RecurrentNetwork + noise"]
    assert (tmp_path / "report" / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The checkpoint is a plain pytorch-forecasting checkpoint (robustness loaded it with
    # RecurrentNetwork.load_from_checkpoint): no trace of the noise in its weights or hyper-parameters.
    import torch

    checkpoint = torch.load(noisy / "model.ckpt", map_location="cpu", weights_only=False)
    plain_checkpoint = torch.load(plain / "model.ckpt", map_location="cpu", weights_only=False)
    assert list(checkpoint["state_dict"]) == list(plain_checkpoint["state_dict"])
    assert set(checkpoint["hyper_parameters"]) == set(plain_checkpoint["hyper_parameters"])


# ---------------------------------------------------------------------------------------------- demo, bench


@pytest.mark.slow
def test_demo_quick_trains_both_models_and_writes_table_csv_and_plot(tmp_path):
    """``nrnn demo --quick`` (under a minute on 2 cores): the README's first command, end to end."""
    result = nrnn("demo", "--quick", "--out", str(tmp_path), timeout=240)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "GPU available" not in result.stderr
    # Progress: one line per model and epoch.
    assert "LSTM (seed 0): epoch 4/4" in result.stderr and "LSTM + noise 0.3 (seed 1): epoch 4/4" in result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("perturbation"))
    assert header.split()[:11] == ["perturbation", "strength", "LSTM", "MAE", "LSTM", "+", "noise", "0.3", "MAE"] + [
        "change",
        "95%",
    ]
    # Two training seeds: every row has its paired interval and the count of seeds that improved.
    clean = next(line for line in lines if line.startswith("clean "))
    assert "/2 " in clean + " " and "[" in clean and "%]" in clean
    assert any(line.startswith("conclusion (a difference is stated only where") for line in lines)
    assert any(line.strip().startswith("no clear difference:") for line in lines)

    import pandas as pd

    results = pd.read_csv(tmp_path / "demo_results.csv")
    assert list(results.columns) == [
        "model",
        "train_seed",
        "perturbation",
        "strength",
        "metric",
        "value",
        "perturbation_seed",
    ]
    assert set(results["model"]) == {"LSTM", "LSTM + noise 0.3"}
    assert set(results["perturbation"]) == {"white_noise", "salt_and_pepper", "fgsm"}
    assert results["value"].notna().all() and (results["value"] > 0).all()
    # The two models differ (noise changed the training), and the clean scores agree across perturbation kinds.
    clean_mae = results[(results.strength == 0) & (results.metric == "mae")].groupby(["model", "train_seed"])["value"]
    assert (clean_mae.nunique() == 1).all()
    assert clean_mae.first()[("LSTM", 0)] != clean_mae.first()[("LSTM + noise 0.3", 0)]
    assert clean_mae.first()[("LSTM", 0)] != clean_mae.first()[("LSTM", 1)]  # the seeds differ
    assert (tmp_path / "demo_robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = pd.read_csv(tmp_path / "co2_weekly.csv")
    assert list(data.columns) == ["date", "co2"] and len(data) == 2284


def test_bench_runs_and_prints_both_tables(tmp_path):
    result = nrnn("bench", "--tiny", "--threads", "1", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "lstm_additive | gru_add_mult | eval_registered |" in result.stdout
    assert "| GRU | 0.05 | 0.02 | fd | 1 |" in result.stdout

    import pandas as pd

    layers = pd.read_csv(tmp_path / "bench_layers.csv")
    assert set(layers["case"]) == {"lstm_additive", "gru_add_mult", "eval_registered"}
    assert (layers["ratio"] > 0).all() and (layers["threads"] == 1).all()
    assert len(pd.read_csv(tmp_path / "bench_regularizer.csv")) == 1
