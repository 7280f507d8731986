"""Checkpoints of every model ``nrnn train`` supports load with ``weights_only=True`` and the allow-list alone
(``nrnn_plugin/app/safe_load.py``), and predict / robustness work on them (trained in-process, tiny)."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("pytorch_forecasting")
sm = pytest.importorskip("statsmodels.api")

from nrnn_plugin.app import predict as predict_engine  # noqa: E402
from nrnn_plugin.app import report, training  # noqa: E402
from nrnn_plugin.app.data import load_training_data  # noqa: E402
from nrnn_plugin.app.run_config import RunConfig  # noqa: E402
from nrnn_plugin.app.runs import load_run  # noqa: E402
from nrnn_plugin.app.variants import parse_variants  # noqa: E402

MODELS = [
    ("RecurrentNetwork", {"cell_type": "GRU", "loss": "RMSE"}, []),
    ("DeepAR", {"loss": "NormalDistributionLoss"}, ["value"]),
    ("TemporalFusionTransformer", {"loss": "QuantileLoss", "hidden_size": 8, "attention_head_size": 1}, ["value"]),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name, model, known_reals", MODELS, ids=[m[0] for m in MODELS])
def test_every_supported_model_round_trips_through_the_safe_loader(tmp_path, name, model, known_reals):
    frame = sm.datasets.grunfeld.load_pandas().data.astype({"year": int})
    frame.to_csv(tmp_path / "grunfeld.csv", index=False)
    config = RunConfig.from_dict(
        {
            "data": {
                "path": str(tmp_path / "grunfeld.csv"),
                "time": "year",
                "target": "invest",
                "group_ids": ["firm"],
                "known_reals": known_reals,
                "static_reals": ["capital"] if name == "TemporalFusionTransformer" else [],
                "max_encoder_length": 6,
                "max_prediction_length": 2,
                "normalizer": "group",
                "validation": 3,
                "test": 3,
            },
            "model": {"class": name, **({"hidden_size": 8} | model)},
            "trainer": {"max_epochs": 1, "limit_train_batches": 2, "logger": "none"},
            "noise": {"additive": 0.05, "seed": 0},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    config, prepared, split = load_training_data(config)
    training.run_training(config, prepared, split)
    run = load_run(tmp_path / "run")  # weights_only=True with the allow-list, or this raises
    assert type(run.model).__name__ == name and "target_normalizer" in run.dataset_parameters

    future = frame[frame["year"] >= 1953].assign(year=lambda f: f["year"] + 2, invest=None)
    forecasts = predict_engine.predict(run, pd.concat([frame, future]))
    assert len(forecasts) == 11 * 2 and forecasts["forecast"].notna().all()
    if name != "RecurrentNetwork":  # QuantileLoss and DeepAR's distribution give quantiles
        assert any(c.startswith("q0.") for c in forecasts.columns)
    result = report.run_robustness_report(
        variants=parse_variants([str(tmp_path / "run")]),
        data_path=str(tmp_path / "grunfeld.csv"),
        out_dir=tmp_path / "report",
        perturbations=["white_noise", "fgsm"],
        strengths=[0.2],
        seeds=1,
    )
    assert set(result.results["metric"]) == {"mae", "smape", "mase"}
    assert result.series["series"].nunique() == 11 and result.results["value"].notna().all()


def _train_on_sunspots(tmp_path, logger: str) -> None:
    """A two-epoch noisy run on yearly sunspots into ``tmp_path / "run"``, logging to ``logger``."""
    frame = sm.datasets.sunspots.load_pandas().data.astype({"YEAR": int})
    frame.to_csv(tmp_path / "spots.csv", index=False)
    config = RunConfig.from_dict(
        {
            "data": {"path": str(tmp_path / "spots.csv"), "time": "YEAR", "target": "SUNACTIVITY",
                     "max_encoder_length": 12, "max_prediction_length": 4, "validation": 30, "test": 30},
            "model": {"hidden_size": 8},
            "trainer": {"max_epochs": 2, "limit_train_batches": 2, "logger": logger},
            "noise": {"additive": 0.1, "multiplicative": 0.02},
            "output": {"dir": str(tmp_path / "run")},
        }
    )  # fmt: skip
    config, prepared, split = load_training_data(config)
    training.run_training(config, prepared, split)


def test_tensorboard_logs_the_losses_sigmas_and_the_noise_configuration(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train_on_sunspots(tmp_path, logger="tensorboard")
    (events,) = (tmp_path / "run" / "logs").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train_nrnn_sigma_additive", "train_nrnn_sigma_multiplicative", "val_loss"} <= tags
    assert [e.value for e in accumulator.Scalars("train_nrnn_sigma_multiplicative")] == pytest.approx([0.02, 0.02])
    assert "additive: 0.1" in (tmp_path / "run" / "logs" / "hparams.yaml").read_text()


def test_mlflow_logs_the_losses_sigmas_and_the_noise_configuration(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _train_on_sunspots(tmp_path, logger="mlflow")
    store = tmp_path / "run" / "logs" / "mlflow.db"  # the default: an SQLite database inside the run folder
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("nrnn").experiment_id])
    assert {"train_nrnn_sigma_additive", "train_nrnn_sigma_multiplicative", "val_loss"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train_nrnn_sigma_multiplicative")
    assert [m.value for m in history] == pytest.approx([0.02, 0.02])
    assert any(key.endswith("additive") and value == "0.1" for key, value in run.data.params.items())


def test_mase_is_undefined_for_a_series_without_a_scale():
    from nrnn_plugin.app.report import _without_undefined_mase
    from nrnn_plugin.app.scoring import series_scales

    frame = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 4, "t": [0, 1, 2, 3] * 2, "y": [1.0, 2.0, 4.0, 7.0] + [5.0] * 4})
    scales = series_scales(frame, ["g"], "t", "y", before=3)
    assert scales["a"] == pytest.approx(1.5) and pd.isna(scales["b"])  # b is constant: no naive error to divide by
    scores = pd.DataFrame({"metric": ["mase", "mase|a", "mase|b", "mae|b"], "value": [1.0, 1.0, 0.0, 2.0]})
    cleaned = _without_undefined_mase(scores, scales)
    assert cleaned["value"].isna().tolist() == [False, False, True, False]
    assert _without_undefined_mase(scores.copy(), {"b": float("nan")})["value"].isna().tolist()[:1] == [True]
