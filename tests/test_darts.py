"""Darts: ``RNNModel`` (LSTM, GRU, RNN) and ``BlockRNNModel`` trained with NoisyRNNCallback in
``pl_trainer_kwargs``: noise in training only, predictions of the plain model, ``save``/``load`` and
``load_from_checkpoint`` with Darts' default (safe) loading, resume with the same noise streams, the regularizer
modes with Darts' loss closure, and Monte Carlo hidden-noise samples from ``predict(num_samples=...)``.

Small models, one or two epochs on a synthetic series (the worked example on real data is
``examples/frameworks/darts_sunspots.py``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

darts = pytest.importorskip("darts")
import pytorch_lightning as pl  # noqa: E402
from darts import TimeSeries  # noqa: E402
from darts.models import BlockRNNModel, RNNModel  # noqa: E402

import nrnn_plugin as nrnn  # noqa: E402
import nrnn_plugin.adapters.darts as ndarts  # noqa: E402
from nrnn_plugin.integrations.lightning import REG_METRIC, NoisyRNNCallback  # noqa: E402
from nrnn_plugin.runtime import noise_runtimes  # noqa: E402

CONFIG = nrnn.NoiseConfig(additive=0.05, multiplicative=0.02, seed=0)
TRAINER = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False)
SERIES = TimeSeries.from_values(
    (np.sin(np.arange(120) * 0.3) + 0.1 * np.random.default_rng(0).standard_normal(120)).astype(np.float32)
)


class Probe(pl.Callback):
    """Records the class of every recurrent module per stage, the logged regularizer and the noise streams."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self.reg: list[float] = []
        self.streams: dict[int, dict] = {}

    def _record(self, stage: str, pl_module) -> None:
        names = {type(m).__name__ for m in pl_module.modules() if isinstance(m, nn.RNNBase)}
        self.seen.setdefault(stage, set()).update(names)

    def on_train_epoch_start(self, trainer, pl_module):
        self.streams[trainer.current_epoch] = {n: rt.source.state_dict() for n, rt in noise_runtimes(pl_module)}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._record("train", pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if REG_METRIC + "_step" in trainer.callback_metrics:
            self.reg.append(float(trainer.callback_metrics[REG_METRIC + "_step"]))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._record("val", pl_module)


def _rnn(kind: str, callbacks: list, **kwargs) -> RNNModel:
    options = dict(input_chunk_length=8, training_length=16, hidden_dim=6, n_epochs=1, batch_size=16, random_state=0)
    options.update(kwargs)
    return RNNModel(model=kind, pl_trainer_kwargs={**TRAINER, "callbacks": callbacks}, **options)


def _block(kind: str, callbacks: list, **kwargs) -> BlockRNNModel:
    options = dict(input_chunk_length=8, output_chunk_length=4, hidden_dim=6, n_epochs=1, batch_size=16, random_state=0)
    options.update(kwargs)
    return BlockRNNModel(model=kind, pl_trainer_kwargs={**TRAINER, "callbacks": callbacks}, **options)


MODELS = {
    "RNNModel-LSTM": lambda cbs: _rnn("LSTM", cbs),
    "RNNModel-GRU": lambda cbs: _rnn("GRU", cbs),
    "RNNModel-RNN": lambda cbs: _rnn("RNN", cbs),
    "BlockRNNModel-LSTM": lambda cbs: _block("LSTM", cbs, n_rnn_layers=2, dropout=0.1),
    "BlockRNNModel-GRU": lambda cbs: _block("GRU", cbs),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_noise_in_training_only_and_predictions_of_the_plain_model(name):
    probe = Probe()
    model = MODELS[name]([NoisyRNNCallback(CONFIG), probe])
    model.fit(SERIES[:100], val_series=SERIES[92:])
    cell = name.split("-")[1]
    assert probe.seen == {"train": {f"Noisy{cell}"}, "val": {f"Noisy{cell}"}}  # registered for the whole fit
    assert type(model.model.rnn) is getattr(nn, cell)  # ... and removed afterwards
    plain = model.predict(4)
    nrnn.register_noise(model.model, CONFIG)  # eval with noise registered: the original forward, bit for bit
    assert np.array_equal(model.predict(4).values(), plain.values())
    nrnn.remove_noise(model.model)


def test_the_running_callback_is_found_after_copies_and_loads(tmp_path):
    callback = NoisyRNNCallback(CONFIG)
    model = _rnn("GRU", [callback])
    assert ndarts.noisy_callbacks(model) == [callback] and ndarts.noise_config(model) == CONFIG
    model.fit(SERIES)
    fresh = model.untrained_model()  # what historical_forecasts(retrain=True) fits: a deep copy
    assert ndarts.noisy_callbacks(fresh)[0] is not callback and ndarts.noise_config(fresh) == CONFIG
    model.save(str(tmp_path / "m.pt"))
    assert ndarts.noise_config(RNNModel.load(str(tmp_path / "m.pt"))) == CONFIG
    with pytest.raises(TypeError, match="expected a Darts TorchForecastingModel"):
        ndarts.noisy_callbacks(object())


def test_save_and_load_with_dartss_default_safe_loading(tmp_path):
    model = _rnn("LSTM", [NoisyRNNCallback(CONFIG)])
    model.fit(SERIES)
    path = str(tmp_path / "model.pt")
    model.save(path)
    loaded = RNNModel.load(path)  # trusted=False: Darts' restricted unpickler
    assert np.array_equal(loaded.predict(4).values(), model.predict(4).values())
    (restored,) = ndarts.noisy_callbacks(loaded)
    assert restored.config == CONFIG


LOAD_WITHOUT_REGISTRATION = """
import sys
from darts.models import RNNModel
from darts.utils.serialization.base import UnpicklingError
try:
    RNNModel.load({path!r})
except UnpicklingError as error:
    print("REFUSED", error)
import nrnn_plugin.adapters.darts  # registers the callback class with Darts' safe loading
RNNModel.load({path!r}).predict(2)
print("LOADED")
"""


def test_loading_needs_only_the_adapter_import(tmp_path):
    """A fresh process: Darts refuses the unknown class until ``nrnn_plugin.adapters.darts`` is imported."""
    model = _rnn("GRU", [NoisyRNNCallback(CONFIG)])
    model.fit(SERIES)
    path = str(tmp_path / "model.pt")
    model.save(path)
    code = textwrap.dedent(LOAD_WITHOUT_REGISTRATION.format(path=path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSED" in done.stdout and "nrnn_plugin.integrations.lightning.NoisyRNNCallback" in done.stdout
    assert "LOADED" in done.stdout


def test_load_from_checkpoint_and_resume_continue_the_noise_streams(tmp_path):
    def checkpointed(callbacks, name):
        return _rnn(
            "LSTM",
            callbacks,
            n_epochs=2,
            model_name=name,
            work_dir=str(tmp_path),
            save_checkpoints=True,
            force_reset=True,
        )

    reference = Probe()
    checkpointed([NoisyRNNCallback(CONFIG), reference], "ref").fit(SERIES, epochs=3)
    checkpointed([NoisyRNNCallback(CONFIG)], "run").fit(SERIES)  # 2 epochs, checkpoints in work_dir
    resumed = RNNModel.load_from_checkpoint("run", work_dir=str(tmp_path), best=False)  # default: safe loading
    probe = Probe()
    resumed.trainer_params["callbacks"].append(probe)
    resumed.fit(SERIES, epochs=3)  # continues from the last checkpoint
    assert resumed.epochs_trained == 3 and list(probe.streams) == [2]
    assert _same(probe.streams[2], reference.streams[2])  # the streams where the uninterrupted run had them
    assert not _same(reference.streams[2], reference.streams[1])


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("mode", ["regularizer", "both"])
def test_regularizer_modes_use_dartss_loss_closure(mode):
    from nrnn_plugin.plugins import first_result

    probe = Probe()
    model = _block("GRU", [NoisyRNNCallback(CONFIG.replace(mode=mode)), probe])
    model.fit(SERIES)
    closure, plugin = first_result("nrnn_loss_closure", module=model.model)
    assert closure is ndarts.darts_loss and plugin == "frameworks"
    assert probe.reg and all(np.isfinite(probe.reg))
    assert probe.seen["train"] == {"NoisyGRU"}


def test_darts_loss_is_the_training_step_loss_without_side_effects():
    model = _rnn("GRU", [])
    model.fit(SERIES)
    module = model.model.train()
    batch = next(iter(model.trainer.train_dataloader)) if model.trainer.train_dataloader else None
    if batch is None:
        pytest.skip("no training dataloader kept by this Darts version")
    logged = []
    module.log = lambda *args, **kwargs: logged.append(args[0])
    step_loss = module.training_step(batch, 0)
    assert logged == ["train_loss"]
    assert torch.equal(ndarts.darts_loss(module, batch, 0), step_loss) and logged == ["train_loss"]


def test_monte_carlo_hidden_noise_samples_from_predict():
    model = _rnn("LSTM", [NoisyRNNCallback(CONFIG)], n_epochs=2)
    model.fit(SERIES)
    with pytest.raises(ValueError, match="only supported for probabilistic models"):
        model.predict(4, num_samples=5)  # what Darts says without the adapter
    samples = ndarts.predict_samples(model, 4, num_samples=30, seed=0, scale=3.0)
    values = samples.all_values()
    assert values.shape == (4, 1, 30) and values.std(axis=2).min() > 0  # every sample row its own noise
    again = ndarts.predict_samples(model, 4, num_samples=30, seed=0, scale=3.0)
    assert np.array_equal(again.all_values(), values)  # a seed makes the samples reproducible
    assert not hasattr(model.model, "nrnn_sampling_marker") and type(model.model.rnn) is nn.LSTM
    off = ndarts.predict_samples(model, 4, num_samples=3, seed=0, scale=0.0).all_values()
    np.testing.assert_allclose(off, np.repeat(model.predict(4).all_values(), 3, axis=2), rtol=0, atol=1e-6)
    assert np.array_equal(model.predict(4).values(), model.predict(4).values())  # plain predict unchanged


def test_hidden_noise_needs_a_config_and_a_trained_model():
    model = _rnn("GRU", [])
    with pytest.raises(ValueError, match="no trained module yet"):
        ndarts.predict_samples(model, 2, num_samples=2)
    model.fit(SERIES)
    with pytest.raises(ValueError, match="pass config=NoiseConfig"):
        ndarts.predict_samples(model, 2, num_samples=2)
    assert ndarts.predict_samples(model, 2, num_samples=4, config=CONFIG, seed=1).all_values().shape == (2, 1, 4)


@pytest.mark.parametrize("name", ["RNNModel-LSTM", "BlockRNNModel-GRU"])
def test_forecaster_reproduces_predict_and_runs_in_the_robustness_suite(name):
    from nrnn_plugin.adapters.point_forecast import windows
    from nrnn_plugin.robustness import evaluate

    values = SERIES.values()[:, 0].astype(np.float64) * 3.0 + 5.0  # a series in its own units
    scaled = TimeSeries.from_values(((values - 5.0) / 3.0).astype(np.float32))
    model = MODELS[name]([NoisyRNNCallback(CONFIG)])
    model.fit(scaled[:100])
    forecaster = ndarts.forecaster(model, 6, shift=5.0, scale=3.0)
    batches = windows(values, 8, 6, [100, 104], loc=float(values.mean()), scale=float(values.std()))
    with torch.no_grad():
        first = forecaster.eval()(batches[0][0])[0].numpy()
    np.testing.assert_allclose(first, model.predict(6).values()[:, 0] * 3.0 + 5.0, rtol=1e-5, atol=1e-5)
    results = evaluate({"model": forecaster}, batches, perturbations={"white_noise": [0.0, 0.4], "fgsm": [0.1]})
    mae = results[results.metric == "mae"].set_index("perturbation").value
    assert mae["fgsm"] > mae["white_noise"].min()  # the attack (through Darts' own roll-out) hurts
    with pytest.raises(ValueError, match="no trained module yet"):
        ndarts.forecaster(_rnn("GRU", []), 2)
