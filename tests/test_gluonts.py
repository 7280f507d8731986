"""GluonTS: the PyTorch ``DeepAREstimator`` trained with NoisyRNNCallback in ``trainer_kwargs``: noise in training
only, forecasts of the plain model, ``serialize``/``deserialize`` (JSON + state_dict), resume from a full
checkpoint with the same noise streams, the regularizer modes, retraining one estimator, and Monte Carlo
forecasts with hidden-state noise on every sampled path.

GluonTS pins pandas<3, so these tests run in their own environment (``.venv-gluonts``, made by
``scripts/setup.sh``); from the project environment ``tests/test_gluonts_environment.py`` runs this file there.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("gluonts.torch")
import lightning.pytorch as L  # noqa: E402
import pandas as pd  # noqa: E402
from gluonts.dataset.common import ListDataset  # noqa: E402
from gluonts.model.predictor import Predictor  # noqa: E402
from gluonts.torch import DeepAREstimator  # noqa: E402

import nrnn_plugin as nrnn  # noqa: E402
import nrnn_plugin.adapters.gluonts as ngl  # noqa: E402
from nrnn_plugin.integrations.lightning import REG_METRIC, NoisyRNNCallback  # noqa: E402
from nrnn_plugin.runtime import noise_runtimes  # noqa: E402

CONFIG = nrnn.NoiseConfig(additive=0.05, multiplicative=0.02, seed=0)
VALUES = (np.sin(np.arange(160) * 0.3) + 0.1 * np.random.default_rng(0).standard_normal(160)).astype(np.float32)
DATA = ListDataset([{"start": pd.Period("1900", "Y"), "target": VALUES}], freq="Y")


@pytest.fixture(autouse=True)
def quiet():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


class Probe(L.Callback):
    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self.reg: list[float] = []
        self.streams: list[tuple[int, dict]] = []  # (epoch, noise-stream states) at every epoch start

    def on_train_epoch_start(self, trainer, pl_module):
        states = {n: rt.source.state_dict() for n, rt in noise_runtimes(pl_module)}
        self.streams.append((trainer.current_epoch, states))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        names = {type(m).__name__ for m in pl_module.modules() if isinstance(m, nn.RNNBase)}
        self.seen.setdefault("train", set()).update(names)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if REG_METRIC + "_step" in trainer.callback_metrics:
            self.reg.append(float(trainer.callback_metrics[REG_METRIC + "_step"]))


def _estimator(callbacks, tmp_path, max_epochs: int = 1, **kwargs) -> DeepAREstimator:
    trainer = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
    )
    options = dict(prediction_length=4, context_length=12, hidden_size=6, num_layers=2, num_batches_per_epoch=3)
    options.update(kwargs)
    return DeepAREstimator(freq="Y", batch_size=8, trainer_kwargs=trainer, **options)


def _predict(predictor, seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)  # DeepAR samples its paths from the global RNG
    return np.stack([f.samples for f in predictor.predict(DATA)])


def test_noise_in_training_only_and_forecasts_of_the_plain_model(tmp_path):
    probe = Probe()
    predictor = _estimator([NoisyRNNCallback(CONFIG), probe], tmp_path).train(DATA)
    assert probe.seen == {"train": {"NoisyLSTM"}}
    net = predictor.prediction_net
    assert type(net.model.rnn) is nn.LSTM
    plain = _predict(predictor)
    nrnn.register_noise(net, CONFIG)  # eval with noise registered: the original forward, bit for bit
    assert np.array_equal(_predict(predictor), plain)
    nrnn.remove_noise(net)


def test_serialize_and_deserialize(tmp_path):
    predictor = _estimator([NoisyRNNCallback(CONFIG)], tmp_path).train(DATA)
    (tmp_path / "predictor").mkdir()
    predictor.serialize(tmp_path / "predictor")
    assert "nrnn" not in (tmp_path / "predictor" / "predictor.json").read_text()
    loaded = Predictor.deserialize(tmp_path / "predictor")
    assert np.array_equal(_predict(loaded), _predict(predictor))


def test_retraining_one_estimator_keeps_the_callback(tmp_path):
    first, second = Probe(), Probe()
    estimator = _estimator([NoisyRNNCallback(CONFIG), first], tmp_path)
    estimator.train(DATA)
    assert "callbacks" not in estimator.trainer_kwargs  # what GluonTS does: the next train() has none
    estimator.trainer_kwargs["callbacks"] = [NoisyRNNCallback(CONFIG), second]
    ngl.train(estimator, DATA)
    ngl.train(estimator, DATA)
    assert second.seen == {"train": {"NoisyLSTM"}} and len(second.streams) == 2
    with pytest.raises(TypeError, match="expected a GluonTS PyTorch estimator"):
        ngl.train(object(), DATA)


def test_resume_from_a_full_checkpoint_continues_the_noise_streams(tmp_path):
    reference = Probe()
    _estimator([NoisyRNNCallback(CONFIG), reference], tmp_path / "a", max_epochs=2).train(DATA)
    checkpoint = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    _estimator([NoisyRNNCallback(CONFIG), checkpoint], tmp_path / "b").train(DATA)
    probe = Probe()
    _estimator([NoisyRNNCallback(CONFIG), probe], tmp_path / "c", max_epochs=2).train(
        DATA, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert [epoch for epoch, _ in probe.streams] == [1]
    first, resumed = reference.streams[1][1], probe.streams[0][1]
    assert first.keys() == resumed.keys()
    assert all(v["offset"] > 0 for v in first.values())  # the first epoch drew
    assert first == resumed  # counter-based streams: (seed, offset) per module, continued exactly


@pytest.mark.parametrize("mode", ["regularizer", "both"])
def test_regularizer_modes(tmp_path, mode):
    probe = Probe()
    _estimator([NoisyRNNCallback(CONFIG.replace(mode=mode)), probe], tmp_path).train(DATA)
    assert len(probe.reg) == 3 and all(np.isfinite(probe.reg))


def test_monte_carlo_forecasts_with_hidden_noise(tmp_path):
    predictor = _estimator([NoisyRNNCallback(CONFIG)], tmp_path, max_epochs=2).train(DATA)
    torch.manual_seed(0)
    noisy = ngl.forecasts(predictor, DATA, CONFIG, seed=0, scale=3.0, num_samples=50)
    torch.manual_seed(0)
    again = ngl.forecasts(predictor, DATA, CONFIG, seed=0, scale=3.0, num_samples=50)
    assert noisy[0].samples.shape == (50, 4) and np.array_equal(noisy[0].samples, again[0].samples)
    torch.manual_seed(0)
    off = ngl.forecasts(predictor, DATA, CONFIG, seed=0, scale=0.0, num_samples=50)
    torch.manual_seed(0)
    plain = list(predictor.predict(DATA, num_samples=50))
    np.testing.assert_allclose(off[0].samples, plain[0].samples, rtol=1e-5, atol=1e-5)
    assert not np.allclose(noisy[0].samples, plain[0].samples)
    assert type(predictor.prediction_net.model.rnn) is nn.LSTM  # registration undone
    with pytest.raises(TypeError, match="config must be a NoiseConfig"):
        ngl.forecasts(predictor, DATA, {"additive": 0.1})


def test_forecaster_is_the_mean_path_and_runs_in_the_robustness_suite(tmp_path):
    from nrnn_plugin.adapters.point_forecast import PointForecastTask
    from nrnn_plugin.robustness import evaluate
    from nrnn_plugin.robustness.evaluate import _make_task

    train = ListDataset([{"start": pd.Period("1900", "Y"), "target": VALUES[:140]}], freq="Y")
    predictor = _estimator([NoisyRNNCallback(CONFIG)], tmp_path, max_epochs=2).train(train)
    loc, scale = float(VALUES[:140].mean()), float(VALUES[:140].std())
    batches = ngl.windows(predictor, VALUES, pd.Period("1900", "Y"), "Y", [140, 150], loc=loc, scale=scale)
    assert type(_make_task("auto", batches, 8)) is PointForecastTask
    forecaster = ngl.forecaster(predictor)
    with torch.no_grad():
        mean_path = forecaster.eval()(batches[0][0])
    torch.manual_seed(0)
    (forecast,) = list(predictor.predict(train, num_samples=4000))
    first = forecast.samples[:, 0]  # the first step's distribution is the same for every path
    assert abs(float(mean_path[0, 0]) - first.mean()) < 4 * first.std() / np.sqrt(len(first))
    results = evaluate({"model": forecaster}, batches, perturbations={"white_noise": [0.0, 0.4], "fgsm": [0.1]})
    assert set(results.perturbation) == {"white_noise", "fgsm"} and results.value.notna().all()
    assert "output_distribution" not in vars(predictor.prediction_net.model)  # the mean-path patch is undone


def test_example_smoke_run_writes_its_report(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("statsmodels")
    script = Path(__file__).resolve().parent.parent / "examples" / "frameworks" / "gluonts_co2.py"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "gluonts_co2_smoke.md").read_text()
    assert "| clean | 0 |" in report and "| pgd | 0.1 |" in report and "fit wall time per model" in report
