"""The ``nrnn`` command line, driven as a user drives it: subprocesses, exit codes, stdout tables, files.

Bad input must give one line on stderr that says what is wrong, exit status 2 and no traceback. Real data
comes from statsmodels (shipped offline), written to ``tmp_path`` as CSV at test time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import SMALL_RUN, assert_input_error, nrnn, sunspots_frame, write_run

# ---------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def sunspots_csv(tmp_path_factory) -> Path:
    """Yearly sunspot numbers 1700-2008 (statsmodels), as a user's CSV: ``year`` (int), ``spots``."""
    pytest.importorskip("statsmodels.api")
    path = tmp_path_factory.mktemp("data") / "sunspots.csv"
    sunspots_frame().to_csv(path, index=False)
    return path


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
        for command in ("demo", "train", "predict", "tune", "robustness", "bench", "schema", "plugins"):
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
    text = SMALL_RUN.format(data=sunspots_csv, out=tmp_path / "out").replace(
        "  target: spots\n", "  target: spots\n  tagret: x\n"
    )
    run = write_run(tmp_path / "run2.yaml", text)
    assert_input_error(nrnn("train", "--config", str(run)), "section 'data': unknown key(s) ['tagret']", "'target'")


def test_invalid_noise_config_shows_the_noiseconfig_message(tmp_path, sunspots_csv):
    text = SMALL_RUN.format(data=sunspots_csv, out=tmp_path / "out").replace("additive: 0.1", "additive: -0.5")
    run = write_run(tmp_path / "run.yaml", text)
    assert_input_error(
        nrnn("train", "--config", str(run)), "noise: NoiseConfig.additive: expected a finite number >= 0.0, got -0.5"
    )


def test_unsupported_model_names_the_supported_ones(tmp_path, sunspots_csv):
    text = SMALL_RUN.format(data=sunspots_csv, out=tmp_path / "out").replace("class: RecurrentNetwork", "class: NBeats")
    run = write_run(tmp_path / "run.yaml", text)
    assert_input_error(
        nrnn("train", "--config", str(run)),
        "model.class: expected one of 'RecurrentNetwork', 'DeepAR' or 'TemporalFusionTransformer'",
        "got 'NBeats'",
    )


# ---------------------------------------------------------------------------------------------- bad data


def test_missing_data_file(tmp_path):
    run = write_run(tmp_path / "run.yaml", SMALL_RUN.format(data=tmp_path / "missing.csv", out=tmp_path / "out"))
    assert_input_error(nrnn("train", "--config", str(run)), "data file not found", "missing.csv")


def test_wrong_column_names_say_which_are_missing_and_which_exist(tmp_path, sunspots_csv):
    text = SMALL_RUN.format(data=sunspots_csv, out=tmp_path / "out").replace("target: spots", "target: sunspots")
    run = write_run(tmp_path / "run.yaml", text)
    assert_input_error(
        nrnn("train", "--config", str(run)), "column(s) ['sunspots'] not found", "columns ['year', 'spots']"
    )


def test_non_numeric_target(tmp_path, sunspots_csv):
    lines = sunspots_csv.read_text().splitlines()
    lines[6] = lines[6].split(",")[0] + ",n/a?"  # data row 5
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    run = write_run(tmp_path / "run.yaml", SMALL_RUN.format(data=bad, out=tmp_path / "out"))
    assert_input_error(nrnn("train", "--config", str(run)), "target column 'spots' must be numeric", "row 5", "'n/a?'")


def test_too_short_series_gives_the_minimum_length(tmp_path, sunspots_csv):
    lines = sunspots_csv.read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:61]) + "\n")  # header + 60 years
    run = write_run(tmp_path / "run.yaml", SMALL_RUN.format(data=short, out=tmp_path / "out"))
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
    assert "sigma additive 0.1, multiplicative 0.05" in result.stderr
    assert "GPU available" not in result.stderr  # Lightning's banners are silenced
    assert sorted(p.name for p in noisy.iterdir()) == ["logs", "model.ckpt", "model.nrnn.json", "run.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noisy", "run.yaml"]  # no staging folder left

    result = nrnn("train", "--config", str(run), "--no-noise", "--out", str(plain), "--max-epochs", "1")
    assert result.returncode == 0, result.stderr
    assert "(plain training)" in result.stdout and "RecurrentNetwork: epoch 1/1" in result.stderr

    result = nrnn(
        "robustness",
        "--checkpoint",
        str(noisy / "model.ckpt"),
        "--checkpoint",
        str(plain),
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
    assert table[0].startswith("nrnn robustness: 27 test windows of sunspots.csv")
    assert table[1].startswith("  RecurrentNetwork + noise (additive 0.1, multiplicative 0.05): RecurrentNetwork")
    assert table[2].startswith("  RecurrentNetwork: RecurrentNetwork; 1 run(s), seeds 0")
    header = next(i for i, line in enumerate(table) if line.startswith("perturbation"))
    assert table[header].split()[:3] == ["perturbation", "strength", "RecurrentNetwork"]
    assert "vs RecurrentNetwork + noise" in table[header]
    assert [line.split()[0] for line in table[header + 2 : header + 5]] == ["clean", "white_noise", "fgsm"]
    assert any(line.startswith("sensitivity: MASE at the strongest strength relative to clean") for line in table)

    import pandas as pd

    results = pd.read_csv(tmp_path / "report" / "robustness.csv")
    assert list(results.columns) == [
        "variant",
        "run",
        "train_seed",
        "perturbation",
        "strength",
        "metric",
        "value",
        "seed",
    ]
    assert set(results["variant"]) == {
        "RecurrentNetwork + noise (additive 0.1, multiplicative 0.05)",
        "RecurrentNetwork",
    }
    assert set(results["metric"]) == {"mae", "smape", "mase"}
    assert set(results["perturbation"]) == {"white_noise", "fgsm"} and set(results["seed"]) == {0, 1}
    clean = results[(results.strength == 0) & (results.metric == "mae")].groupby("variant")["value"]
    assert (clean.nunique() == 1).all() and (clean.first() > 0).all()
    assert (
        clean.first()["RecurrentNetwork"]
        != clean.first()["RecurrentNetwork + noise (additive 0.1, multiplicative 0.05)"]
    )
    series = pd.read_csv(tmp_path / "report" / "robustness_series.csv")
    assert "series" in series.columns and set(series["series"].astype(str)) == {"0"}
    one = series[(series.strength == 0) & (series.metric == "mae")].groupby("variant")["value"].first()
    assert (one == clean.first()).all()  # a single series: its MAE is the pooled MAE
    assert (tmp_path / "report" / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The checkpoint is a plain pytorch-forecasting checkpoint: no trace of the noise in its weights or
    # hyper-parameters; the noise configuration went to the logger (CSVLogger: hparams.yaml, metrics.csv).
    import torch
    import yaml

    checkpoint = torch.load(noisy / "model.ckpt", map_location="cpu", weights_only=False)
    plain_checkpoint = torch.load(plain / "model.ckpt", map_location="cpu", weights_only=False)
    assert list(checkpoint["state_dict"]) == list(plain_checkpoint["state_dict"])
    assert set(checkpoint["hyper_parameters"]) == set(plain_checkpoint["hyper_parameters"])
    assert not any("noise" in key for key in checkpoint["hyper_parameters"])
    logged = yaml.safe_load((noisy / "logs" / "hparams.yaml").read_text())
    assert logged["noise"]["additive"] == 0.1 and logged["noise"]["multiplicative"] == 0.05
    assert yaml.safe_load((plain / "logs" / "hparams.yaml").read_text())["noise"] == {"enabled": False}
    metrics = pd.read_csv(noisy / "logs" / "metrics.csv")
    sigma = metrics["train_nrnn_sigma_additive"].dropna()
    assert len(sigma) > 0 and (sigma.round(6) == 0.1).all()
    assert (metrics["train_nrnn_sigma_multiplicative"].dropna().round(6) == 0.05).all()
    assert metrics["val_loss"].notna().sum() == 2


def test_the_output_folder_is_checked_before_any_work(tmp_path, sunspots_csv):
    run = write_run(tmp_path / "run.yaml", SMALL_RUN.format(data=sunspots_csv, out=tmp_path / "out"))
    (tmp_path / "file").write_text("x")
    assert_input_error(nrnn("train", "--config", str(run), "--out", str(tmp_path / "file")), "is a file")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("old")
    assert_input_error(
        nrnn("train", "--config", str(run), "--out", str(tmp_path / "used")),
        "exists and is not empty; pass --overwrite",
    )
    assert (tmp_path / "used" / "keep.txt").read_text() == "old"


def test_schema_writes_the_json_schema_and_the_reference():
    import json

    result = nrnn("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["title"] == "nrnn run file" and "noise" in schema["properties"]
    result = nrnn("schema", "--markdown")
    assert result.returncode == 0 and result.stdout == Path("docs/run-file.md").read_text()


# ---------------------------------------------------------------------------------------------- demo, bench


@pytest.mark.slow
def test_demo_quick_trains_both_models_and_writes_table_csv_and_plot(tmp_path):
    """``nrnn demo --quick`` (under a minute on 2 cores): the README's first command, end to end."""
    result = nrnn("demo", "--quick", "--jobs", "1", "--out", str(tmp_path), timeout=240)
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
    assert any(line.startswith("conclusion (a difference is stated only where it is clear") for line in lines)
    assert any(line.strip().startswith("no clear difference:") for line in lines)
    assert any(line.strip().startswith("at the threshold:") for line in lines)
    assert header.split()[11:14] == ["CI", "p", "improved"]

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
