"""NeuralForecast: ``LSTM`` (also ``recurrent=True``, an LSTM with ``proj_size``), ``GRU``, ``RNN`` and an
``Auto*`` model trained with NoisyRNNCallback among the trainer arguments: noise in training only, predictions of
the plain model, the running callback found behind NeuralForecast's deep copies, ``save``/``load`` (safetensors:
nothing pickled) and re-attaching for a further fit, the regularizer modes with NeuralForecast's loss closure,
and Monte Carlo hidden-noise paths.

Small models and a few training steps on the AirPassengers frame NeuralForecast defines in code.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("neuralforecast")
import pytorch_lightning as pl  # noqa: E402
from neuralforecast import NeuralForecast  # noqa: E402
from neuralforecast.auto import AutoLSTM  # noqa: E402
from neuralforecast.models import GRU, LSTM, RNN  # noqa: E402
from neuralforecast.utils import AirPassengersDF  # noqa: E402

import nrnn_plugin as nrnn  # noqa: E402
import nrnn_plugin.adapters.neuralforecast as nnf  # noqa: E402
from nrnn_plugin.integrations.lightning import REG_METRIC, NoisyRNNCallback  # noqa: E402
from nrnn_plugin.runtime import noise_runtimes  # noqa: E402

CONFIG = nrnn.NoiseConfig(additive=0.05, multiplicative=0.02, seed=0)
TRAINER = dict(
    accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False
)
DF = AirPassengersDF


@pytest.fixture(autouse=True)
def quiet():
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_fabric").setLevel(logging.ERROR)


class Probe(pl.Callback):
    """Classes of the recurrent modules seen per stage (shared by all copies: NeuralForecast deep-copies)."""

    log: list[tuple[str, str]] = []

    def __init__(self) -> None:
        self.reg: list[float] = []
        self.streams: list[dict] = []

    def on_train_start(self, trainer, pl_module):
        self.streams.append({n: rt.source.state_dict() for n, rt in noise_runtimes(pl_module)})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        Probe.log.extend(("train", type(m).__name__) for m in pl_module.modules() if isinstance(m, nn.RNNBase))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if REG_METRIC + "_step" in trainer.callback_metrics:
            self.reg.append(float(trainer.callback_metrics[REG_METRIC + "_step"]))


@pytest.fixture
def probe():
    Probe.log = []
    return Probe()


def _small(cls, callbacks, **kwargs):
    options = dict(h=6, input_size=12, encoder_hidden_size=8, decoder_hidden_size=8, max_steps=3, random_seed=0)
    options.update(kwargs)
    return cls(callbacks=callbacks, **options, **TRAINER)


MODELS = {
    "LSTM": lambda cbs: _small(LSTM, cbs),
    "LSTM-recurrent": lambda cbs: _small(LSTM, cbs, recurrent=True),  # proj_size = 1
    "GRU": lambda cbs: _small(GRU, cbs, encoder_n_layers=1),
    "GRU-recurrent": lambda cbs: _small(GRU, cbs, recurrent=True),
    "RNN": lambda cbs: _small(RNN, cbs),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_noise_in_training_only_and_predictions_of_the_plain_model(name, probe):
    nf = NeuralForecast(models=[MODELS[name]([NoisyRNNCallback(CONFIG), probe])], freq="ME")
    nf.fit(df=DF)
    model = nf.models[0]
    cell = name.split("-")[0]
    assert {cls for stage, cls in Probe.log} == {f"Noisy{cell}"}
    assert type(model.hist_encoder) is getattr(nn, cell)
    if name == "LSTM-recurrent":
        assert model.hist_encoder.proj_size == 1
    plain = nf.predict()
    nrnn.register_noise(model, CONFIG)  # eval with noise registered: the original forward, bit for bit
    assert np.array_equal(nf.predict()[cell].to_numpy(), plain[cell].to_numpy())
    nrnn.remove_noise(model)


def test_the_running_callback_is_a_copy_and_is_found(probe):
    callback = NoisyRNNCallback(CONFIG.replace(schedule={"kind": "linear", "warmup": 4}))
    nf = NeuralForecast(models=[_small(GRU, [callback, probe], max_steps=2)], freq="ME")
    nf.fit(df=DF)
    (running,) = nnf.noisy_callbacks(nf)
    assert running is not callback and running.config == callback.config
    assert running.level == pytest.approx(0.25) and callback.level == 1.0  # the copy ran (step 1 of warm-up 4)
    assert set(running.state_dict()["sources"][0]) == {"hist_encoder"} and callback.state_dict()["sources"] == {0: {}}
    assert nnf.noisy_callbacks(nf.models[0]) == [running]
    with pytest.raises(TypeError, match="expected a NeuralForecast object or a NeuralForecast model"):
        nnf.noisy_callbacks([])


def test_save_load_and_reattach_for_a_further_fit(tmp_path, probe):
    nf = NeuralForecast(models=[_small(LSTM, [NoisyRNNCallback(CONFIG)])], freq="ME")
    nf.fit(df=DF)
    nf.save(str(tmp_path / "run"), overwrite=True)
    loaded = NeuralForecast.load(str(tmp_path / "run"))  # default loading: safetensors and JSON
    assert not loaded.models[0].trainer_kwargs.get("callbacks")
    np.testing.assert_array_equal(loaded.predict()["LSTM"].to_numpy(), nf.predict()["LSTM"].to_numpy())
    (attached,) = nnf.attach(loaded, CONFIG)
    loaded.models[0].trainer_kwargs["callbacks"].append(probe)
    assert nnf.noisy_callbacks(loaded) == [attached]
    loaded.fit(df=DF, use_init_models=False)  # fine-tunes the loaded weights, with noise
    assert {cls for _, cls in Probe.log} == {"NoisyLSTM"}
    assert nnf.attach(loaded, attached)[0].config == CONFIG and len(nnf.noisy_callbacks(loaded)) == 1


def test_refit_continues_the_noise_streams(probe):
    nf = NeuralForecast(models=[_small(RNN, [NoisyRNNCallback(CONFIG), probe], max_steps=2)], freq="ME")
    nf.fit(df=DF)
    (running,) = nnf.noisy_callbacks(nf)
    after_first = running.state_dict()["sources"][0]
    nf.fit(df=DF)  # use_init_models=False: the same model and callback copy
    running_probe = nf.models[0].trainer_kwargs["callbacks"][1]
    _, second = running_probe.streams
    assert {k: v["seed"] for k, v in second.items()} == {k: v["seed"] for k, v in after_first.items()}
    assert all(v["offset"] > 0 for v in after_first.values())  # the first fit drew
    assert second == after_first  # counter-based streams: (seed, offset) per module, continued exactly


@pytest.mark.parametrize("mode", ["regularizer", "both"])
def test_regularizer_modes_use_neuralforecasts_loss_closure(mode, probe):
    from nrnn_plugin.plugins import first_result

    nf = NeuralForecast(models=[_small(GRU, [NoisyRNNCallback(CONFIG.replace(mode=mode)), probe])], freq="ME")
    nf.fit(df=DF)
    model = nf.models[0]
    closure, plugin = first_result("nrnn_loss_closure", module=model)
    assert closure is nnf.neuralforecast_loss and plugin == "frameworks"
    running_probe = model.trainer_kwargs["callbacks"][1]
    assert len(running_probe.reg) == 3 and all(np.isfinite(running_probe.reg))
    assert len(model.train_trajectories) == 3  # one entry per step: the regularizer's passes left none


def test_auto_model_with_the_callback_in_its_config(probe):
    def config(trial):
        return dict(
            input_size=12,
            encoder_hidden_size=trial.suggest_categorical("encoder_hidden_size", [4, 8]),
            max_steps=2,
            random_seed=0,
            callbacks=[NoisyRNNCallback(CONFIG), Probe()],
            **TRAINER,
        )

    auto = AutoLSTM(h=6, config=config, num_samples=2, backend="optuna", search_alg=None)
    nf = NeuralForecast(models=[auto], freq="ME")
    nf.fit(df=DF, val_size=12)
    trained = [cls for stage, cls in Probe.log if stage == "train"]
    assert trained and set(trained) == {"NoisyLSTM"}  # both trials and the refit of the best
    (running,) = nnf.noisy_callbacks(nf)  # the best model's (a copy of the config's callback)
    assert running.config == CONFIG and set(running.state_dict()["sources"][0]) == {"hist_encoder"}
    assert len(nf.predict()) == 6


def test_monte_carlo_hidden_noise_paths():
    nf = NeuralForecast(models=[_small(GRU, [NoisyRNNCallback(CONFIG)], max_steps=5)], freq="ME")
    nf.fit(df=DF)
    paths = nnf.sample_paths(nf, DF, n_samples=20, seed=0, scale=3.0)
    assert list(paths.columns) == ["unique_id", "sample", "ds", "GRU"] and len(paths) == 20 * 6
    assert set(paths["unique_id"]) == set(DF["unique_id"]) and sorted(set(paths["sample"])) == list(range(20))
    spread = paths.groupby("ds")["GRU"].std()
    assert (spread > 0).all()
    again = nnf.sample_paths(nf, DF, n_samples=20, seed=0, scale=3.0)
    assert again.equals(paths)
    off = nnf.sample_paths(nf, DF, n_samples=2, seed=0, scale=0.0)
    point = nf.predict(df=DF)["GRU"].to_numpy()
    for k in range(2):
        np.testing.assert_allclose(off[off["sample"] == k]["GRU"].to_numpy(), point, rtol=1e-5)
    assert type(nf.models[0].hist_encoder) is nn.GRU  # registration undone


def test_hidden_noise_without_config_is_an_error():
    nf = NeuralForecast(models=[_small(RNN, [], max_steps=1)], freq="ME")
    nf.fit(df=DF)
    with pytest.raises(ValueError, match="pass config=NoiseConfig"):
        nnf.sample_paths(nf, DF, n_samples=2)
    assert len(nnf.sample_paths(nf, DF, n_samples=2, config=CONFIG)) == 12


def test_forecaster_reproduces_predict_and_runs_in_the_robustness_suite():
    from nrnn_plugin.adapters.point_forecast import windows
    from nrnn_plugin.robustness import evaluate

    nf = NeuralForecast(models=[_small(LSTM, [NoisyRNNCallback(CONFIG)])], freq="ME")
    nf.fit(df=DF.iloc[:-12])
    values = DF["y"].to_numpy()
    forecaster = nnf.forecaster(nf)
    batches = windows(values, 12, 6, [132, 138], loc=float(values[:132].mean()), scale=float(values[:132].std()))
    with torch.no_grad():
        first = forecaster.eval()(batches[0][0])[0].numpy()
    np.testing.assert_allclose(first, nf.predict()["LSTM"].to_numpy(), rtol=1e-5)
    results = evaluate({"model": forecaster}, batches, perturbations={"white_noise": [0.0, 0.4], "pgd": [0.1]})
    assert set(results.perturbation) == {"white_noise", "pgd"} and results.value.notna().all()
    with pytest.raises(ValueError, match="recurrent=True models predict step by step"):
        recurrent = NeuralForecast(models=[_small(GRU, [], recurrent=True, max_steps=1)], freq="ME")
        recurrent.fit(df=DF)
        nnf.forecaster(recurrent)
