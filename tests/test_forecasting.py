"""pytorch-forecasting: the adapter (pf LSTM/GRU, xLSTM cells, v2 TFT through the torch adapter) and
NoisyRNNCallback on RecurrentNetwork (LSTM, GRU), DeepAR, TemporalFusionTransformer, the v2 TFT and xLSTMTime.

Every model: noise reaches the recurrent layers in training (two training forwards differ with dropout 0,
and the noise-off training forward is the plain model's), eval is bit-identical to the plain model, fit with
the callback draws noise in training and none in validation, checkpoints load into the vanilla class and
predict identically."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

pf = pytest.importorskip("pytorch_forecasting")
import lightning.pytorch as pl  # noqa: E402
from nrnn_testing import ZeroNoise  # noqa: E402
from pytorch_forecasting import DeepAR, RecurrentNetwork, TemporalFusionTransformer, TimeSeriesDataSet  # noqa: E402
from pytorch_forecasting.data.examples import generate_ar_data  # noqa: E402
from pytorch_forecasting.models.nn.rnn import GRU as PfGRU  # noqa: E402
from pytorch_forecasting.models.nn.rnn import LSTM as PfLSTM  # noqa: E402
from pytorch_forecasting.models.xlstm import xLSTMTime  # noqa: E402

import nrnn_plugin as nrnn  # noqa: E402
from nrnn_plugin.adapters import forecasting as adapter  # noqa: E402
from nrnn_plugin.adapters.forecasting.classes import (  # noqa: E402
    NoisyForecastingGRU,
    NoisyForecastingLSTM,
    NoisyMLSTMCell,
    NoisySLSTMCell,
)
from nrnn_plugin.inference import sampling_noise  # noqa: E402
from nrnn_plugin.integrations.lightning import REG_METRIC, NoisyRNNCallback  # noqa: E402
from nrnn_plugin.layers import NoisyLSTM  # noqa: E402
from nrnn_plugin.noise import gaussian_sampler
from nrnn_plugin.plugins import (  # noqa: E402
    hookimpl,  # noqa: E402
    register,
    unregister,
)
from nrnn_plugin.runtime import (
    noise_control,  # noqa: E402
    recording,  # noqa: E402
    runtime_of,  # noqa: E402
)

warnings.filterwarnings("ignore", message=".*EncoderDecoderTimeSeriesDataModule is part of an experimental.*")

CONFIG = nrnn.NoiseConfig(additive=0.1, seed=0)
ENCODER, HORIZON = 8, 4


@pytest.fixture(scope="module")
def dataset() -> TimeSeriesDataSet:
    data = generate_ar_data(seasonality=10.0, timesteps=30, n_series=4, seed=0)
    return TimeSeriesDataSet(
        data,
        time_idx="time_idx",
        target="value",
        group_ids=["series"],
        max_encoder_length=ENCODER,
        min_encoder_length=3,  # variable encoder lengths: the RNNs pack unsorted sequences
        max_prediction_length=HORIZON,
        time_varying_unknown_reals=["value"],
    )


@pytest.fixture(scope="module")
def batch(dataset):
    return next(iter(dataset.to_dataloader(train=False, batch_size=8, num_workers=0)))


def _loader(dataset, train: bool = True):
    # no shuffling (train=False) so that runs are comparable; batches of 8 windows
    return (
        dataset.to_dataloader(train=False, batch_size=8, num_workers=0)
        if train
        else dataset.to_dataloader(train=False, batch_size=16, num_workers=0)
    )


#: name -> (factory, {noisy module name: noisy class})
MODELS = {
    "rnn_lstm": (
        lambda ds: RecurrentNetwork.from_dataset(ds, cell_type="LSTM", hidden_size=6, rnn_layers=2, dropout=0.0),
        {"rnn": NoisyForecastingLSTM},
    ),
    "rnn_gru": (
        lambda ds: RecurrentNetwork.from_dataset(ds, cell_type="GRU", hidden_size=6, rnn_layers=1, dropout=0.0),
        {"rnn": NoisyForecastingGRU},
    ),
    "deepar": (
        lambda ds: DeepAR.from_dataset(ds, hidden_size=6, rnn_layers=1, dropout=0.0, n_validation_samples=4),
        {"rnn": NoisyForecastingLSTM},
    ),
    "tft": (
        lambda ds: TemporalFusionTransformer.from_dataset(
            ds, hidden_size=8, attention_head_size=1, dropout=0.0, hidden_continuous_size=4
        ),
        {"lstm_encoder": NoisyForecastingLSTM, "lstm_decoder": NoisyForecastingLSTM},
    ),
    "xlstm_s": (
        lambda ds: xLSTMTime.from_dataset(
            ds,
            xlstm_type="slstm",
            hidden_size=8,
            input_size=len(ds.reals),
            output_size=HORIZON,
            num_layers=1,
            dropout=0.0,
        ),
        {"lstm.slstm_layer.cells.0": NoisySLSTMCell},
    ),
    "xlstm_m": (
        lambda ds: xLSTMTime.from_dataset(
            ds,
            xlstm_type="mlstm",
            hidden_size=8,
            input_size=len(ds.reals),
            output_size=HORIZON,
            num_layers=2,
            dropout=0.0,
        ),
        {"lstm.mlstm_layer.cells.0": NoisyMLSTMCell, "lstm.mlstm_layer.cells.1": NoisyMLSTMCell},
    ),
}


def _make(name: str, dataset) -> pl.LightningModule:
    torch.manual_seed(0)
    return MODELS[name][0](dataset)


def _prediction(model, x, **kwargs) -> torch.Tensor:
    return model(copy.copy(x), **kwargs)["prediction"]


# ---------------------------------------------------------------------------------------------- adapter


@pytest.mark.parametrize("name", list(MODELS))
def test_register_switches_the_recurrent_modules_and_keeps_the_state(name, dataset):
    model = _make(name, dataset)
    state = copy.deepcopy(model.state_dict())
    originals = {n: type(m) for n, m in model.named_modules()}
    nrnn.register_noise(model, CONFIG)
    expected = MODELS[name][1]
    assert {n: type(m) for n, m in nrnn.noisy_modules(model)} == expected
    for module_name in expected:
        module = model.get_submodule(module_name)
        assert isinstance(module, originals[module_name]) and type(module).nrnn_original_class is originals[module_name]
    assert list(model.state_dict()) == list(state)
    nrnn.remove_noise(model)
    assert {n: type(m) for n, m in model.named_modules()} == originals
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


@pytest.mark.parametrize("name", list(MODELS))
def test_noise_reaches_the_rnn_in_training_and_eval_is_the_plain_model(name, dataset, batch):
    x, _ = batch
    model = _make(name, dataset)
    plain = copy.deepcopy(model)
    nrnn.register_noise(model, CONFIG)
    model.train()
    plain.train()
    first, second = _prediction(model, x), _prediction(model, x)
    assert not torch.allclose(first, second)
    with noise_control(model, inject=False):  # the same training forward without noise is the plain model's
        assert torch.equal(_prediction(model, x), _prediction(plain, x))
    _prediction(plain, x)  # same number of training forwards (batch-norm statistics in xLSTMTime)
    _prediction(plain, x)
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(_prediction(model, x), _prediction(plain, x))


def test_training_draws_per_forward(dataset, batch):
    """One draw per layer and call (encoder, decoder) for pf LSTM/GRU; one per step for the xLSTM cells."""
    x, _ = batch
    expected = {"rnn_lstm": {"rnn": 2 * 2}, "tft": {"lstm_encoder": 1, "lstm_decoder": 1}, "xlstm_m": None}
    for name, counts in expected.items():
        model = nrnn.register_noise(_make(name, dataset), CONFIG).train()
        with recording(model) as tapes:
            _prediction(model, x)
        if counts is None:  # xLSTM: one draw per time step per cell, [B, H] on the memory c only
            counts = dict.fromkeys(MODELS[name][1], ENCODER)
            assert all(d.shape == (8, 8) for tape in tapes.values() for d in tape.draws)
        assert {n: len(t.draws) for n, t in tapes.items()} == counts
    # the encoders see packed, unsorted variable-length sequences: rows = sum of the (shifted) lengths
    model = nrnn.register_noise(_make("deepar", dataset), CONFIG).train()
    with recording(model) as tapes:
        _prediction(model, x)
    encoder_draw, decoder_draw = tapes["rnn"].draws
    assert encoder_draw.shape == (1, int((x["encoder_lengths"] - 1).sum()), 6)
    assert decoder_draw.shape == (1, int(x["decoder_lengths"].sum()), 6)


def test_deepar_sampling_and_autoregressive_decoding(dataset, batch):
    x, _ = batch
    model = nrnn.register_noise(_make("deepar", dataset), CONFIG).eval()
    plain = copy.deepcopy(model)
    nrnn.remove_noise(plain)
    with torch.no_grad():
        # eval with n_samples (DeepAR's own sampling from the global RNG) is noise-free and plain
        torch.manual_seed(1)
        sampled = _prediction(model, x, n_samples=5)
        torch.manual_seed(1)
        assert torch.equal(sampled, _prediction(plain, x, n_samples=5))
        # opt-in hidden noise: the encoder draws once, the autoregressive decoder once per step
        with sampling_noise(model, seed=0), recording(model) as tapes:
            torch.manual_seed(1)
            noisy = _prediction(model, x, n_samples=5)
    assert noisy.shape == sampled.shape == (8, HORIZON, 5) and not torch.allclose(noisy, sampled)
    draws = tapes["rnn"].draws
    assert len(draws) == 1 + HORIZON
    assert all(d.shape == (1, 8 * 5, 6) for d in draws[1:])  # one step of B * n_samples rows
    assert not model.training  # decoding stayed in eval (autoregressive), never model.train()


def test_recurrent_network_autoregressive_eval_with_opt_in_noise(dataset, batch):
    x, _ = batch
    model = nrnn.register_noise(_make("rnn_lstm", dataset), CONFIG).eval()
    with torch.no_grad():
        clean = _prediction(model, x)
        with sampling_noise(model, seed=0), recording(model) as tapes:
            noisy = _prediction(model, x)
    assert len(tapes["rnn"].draws) == 2 * (1 + HORIZON)  # 2 layers: encoder + one call per decoder step
    assert not torch.allclose(clean, noisy)


def test_zero_length_sequences_keep_pytorch_forecastings_handling():
    torch.manual_seed(0)
    plain = PfLSTM(3, 5, num_layers=2, batch_first=True)
    noisy = nrnn.register_noise(copy.deepcopy(plain), CONFIG).train()
    x = torch.randn(4, 6, 3)
    lengths = torch.tensor([6, 0, 2, 4])
    hx = (torch.randn(2, 4, 5), torch.randn(2, 4, 5))
    # zero noise through the noisy path = pytorch-forecasting's own forward (packing, zero-length restore)
    runtime_of(noisy).source = ZeroNoise("zero")
    out, (h, c) = noisy(x, hx, lengths=lengths, enforce_sorted=False)
    ref_out, (ref_h, ref_c) = plain.train()(x, hx, lengths=lengths, enforce_sorted=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, ref_c, rtol=1e-5, atol=1e-6)
    # with noise, a sequence of length 0 still gets pytorch-forecasting's replacement state, the others are noisy
    runtime_of(noisy).source = nrnn.noise.NoiseSource("rnn", 0)
    _, (h, _) = noisy(x, hx, lengths=lengths, enforce_sorted=False)
    assert torch.equal(h[:, 1], ref_h[:, 1])
    assert not torch.allclose(h[:, [0, 2, 3]], ref_h[:, [0, 2, 3]])
    # all lengths 0: pytorch-forecasting returns zeros without calling the RNN
    out, _ = noisy(x, hx, lengths=torch.zeros(4, dtype=torch.long))
    assert torch.equal(out, torch.zeros(4, 6, 5))


def test_xlstm_targets():
    from pytorch_forecasting.layers._recurrent._mlstm.cell import mLSTMCell
    from pytorch_forecasting.layers._recurrent._slstm.cell import sLSTMCell

    for target in ("h", "c", "both"):
        cell = nrnn.register_noise(sLSTMCell(3, 4), CONFIG.replace(target=target))
        assert runtime_of(cell).config.target == target
        x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
        with recording(cell) as tapes:
            new_h, new_c = cell.train()(x, h, c)
        runtime_of(cell).source = ZeroNoise("zero")
        clean_h, clean_c = cell(x, h, c)
        assert torch.equal(new_h, clean_h) == (target == "c") and torch.equal(new_c, clean_c) == (target == "h")
        assert tapes[""].draws[0].shape == (2, 4 * (2 if target == "both" else 1))
    # mLSTM: h is never read by the next step, so the default target h is resolved to the memory c
    cell = nrnn.register_noise(mLSTMCell(3, 4, dropout=0.0), CONFIG)
    assert runtime_of(cell).config.target == "c"
    state = [torch.randn(2, 4) for _ in range(3)]
    x = torch.randn(2, 3)
    h1, c1, n1 = cell.train()(x, *state)
    with noise_control(cell, inject=False):
        h0, c0, n0 = cell(x, *state)
    assert torch.equal(h1, h0) and torch.equal(n1, n0) and not torch.allclose(c1, c0)
    with pytest.raises(ValueError, match="never reads its previous hidden state h"):
        nrnn.register_noise(mLSTMCell(3, 4, dropout=0.0), CONFIG.replace(target="both"))


def test_unsupported_forecasting_modules_fail_clearly():
    class MyLSTM(PfLSTM):
        pass

    model = nn.Sequential(MyLSTM(2, 3))
    with pytest.raises(TypeError, match=r"MyLSTM.*nrnn_noisy_class"):
        nrnn.register_noise(model, CONFIG)
    assert type(model[0]) is MyLSTM
    projected = nrnn.register_noise(PfLSTM(2, 4, proj_size=2), CONFIG)  # supported: noise on the projected h
    assert type(projected).__name__ == "NoisyForecastingLSTM"


def test_adapter_is_lazy_and_reports_availability(monkeypatch):
    code = (
        "import sys, torch, nrnn_plugin as nrnn\n"
        "from nrnn_plugin.plugins import plugin_report\n"
        "nrnn.register_noise(torch.nn.LSTM(2, 3), additive=0.1)\n"
        "info = [p['adapter'] for p in plugin_report() if p['name'] == 'forecasting'][0]\n"
        "print(info['available'], 'pytorch_forecasting' in sys.modules, 'lightning' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "False", "False"]
    monkeypatch.setattr(adapter.importlib.util, "find_spec", lambda name: None)
    info = adapter.nrnn_adapter_info()
    assert info["available"] is False and "pytorch-forecasting is not installed" in info["reason"]
    assert "pytorch_forecasting.models.nn.rnn.LSTM" in info["handles"]


def test_adapter_answers_for_its_classes_only_and_noisy_classes_pickle(dataset):
    model = nrnn.register_noise(_make("tft", dataset), CONFIG)
    assert adapter.nrnn_noisy_class(PfLSTM(2, 3), CONFIG) is NoisyForecastingLSTM
    assert adapter.nrnn_noisy_class(model.lstm_encoder, CONFIG) is None  # already noisy: nothing to switch
    assert adapter.nrnn_noisy_class(nn.LSTM(2, 3), CONFIG) is None
    import pickle

    clone = pickle.loads(pickle.dumps(model.lstm_encoder))
    assert type(clone) is NoisyForecastingLSTM and runtime_of(clone).config == CONFIG
    assert adapter.nrnn_noisy_class(PfGRU(2, 3), CONFIG) is NoisyForecastingGRU


# ---------------------------------------------------------------------------------------------- v2 TFT


@pytest.fixture(scope="module")
def v2_datamodule():
    import numpy as np
    import pandas as pd
    from pytorch_forecasting.data import TimeSeries
    from pytorch_forecasting.data.data_module import EncoderDecoderTimeSeriesDataModule

    rng = np.random.default_rng(0)
    rows = [
        {"series": g, "time_idx": t, "value": np.sin(0.3 * t + g) + 0.1 * rng.normal(), "known": np.cos(0.3 * t)}
        for g in range(3)
        for t in range(40)
    ]
    series = TimeSeries(
        pd.DataFrame(rows),
        time="time_idx",
        target="value",
        group=["series"],
        num=["value", "known"],
        known=["known"],
        unknown=["value"],
        static=[],
    )
    module = EncoderDecoderTimeSeriesDataModule(
        series, max_encoder_length=6, max_prediction_length=3, batch_size=8, train_val_test_split=(0.6, 0.2, 0.2)
    )
    module.setup("fit")
    return module


def _v2_tft(datamodule):
    from pytorch_forecasting.metrics import MAE
    from pytorch_forecasting.models.temporal_fusion_transformer._tft_v2 import TFT

    torch.manual_seed(0)
    return TFT(
        loss=MAE(),
        logging_metrics=[],
        hidden_size=8,
        num_layers=1,
        attention_head_size=1,
        dropout=0.0,
        metadata=datamodule.metadata,
    )


def test_v2_tft_goes_through_the_torch_adapter(v2_datamodule, tmp_path):
    model = _v2_tft(v2_datamodule)
    plain = copy.deepcopy(model)
    nrnn.register_noise(model, CONFIG)
    assert {n: type(m) for n, m in nrnn.noisy_modules(model)} == {"lstm_encoder": NoisyLSTM, "lstm_decoder": NoisyLSTM}
    x, _ = next(iter(v2_datamodule.train_dataloader()))
    model.train()
    assert not torch.allclose(_prediction(model, x), _prediction(model, x))
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(_prediction(model, x), _prediction(plain, x))
    nrnn.remove_noise(model)
    model.train()
    callback = NoisyRNNCallback(CONFIG)
    _trainer(tmp_path, [callback], limit_val_batches=0).fit(model, datamodule=v2_datamodule)
    assert type(model.lstm_encoder) is nn.LSTM
    sources = callback.state_dict()["sources"][0]
    assert set(sources) == {"lstm_encoder", "lstm_decoder"}
    assert all(state["offset"] > 0 for state in sources.values())  # noise was drawn in training


# ---------------------------------------------------------------------------------------------- callback


class DrawSpy(pl.Callback):
    """Counts noise draws per phase through the sampling hook."""

    def __init__(self) -> None:
        self.phase = "idle"
        self.draws: dict[str, int] = {}

    @hookimpl
    def nrnn_sampler(self, name, module, config):
        def counting(source, shape, device, dtype):
            self.draws[self.phase] = self.draws.get(self.phase, 0) + 1
            return gaussian_sampler(source, shape, device, dtype)

        return counting

    def on_train_batch_start(self, *args):
        self.phase = "train"

    def on_validation_start(self, *args):
        self.phase = "val"

    def on_validation_end(self, *args):
        self.phase = "idle"


@pytest.fixture
def spy(fresh_plugins):
    spy = DrawSpy()
    register(spy, name="draw-spy")
    yield spy
    unregister(name="draw-spy")


def _trainer(tmp_path, callbacks, max_epochs: int = 1, **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.mark.parametrize("name", list(MODELS))
def test_fit_with_callback_checkpoint_loads_into_vanilla_class(name, dataset, batch, tmp_path, spy):
    model = _make(name, dataset)
    hparams = dict(model.hparams)
    callback = NoisyRNNCallback(CONFIG)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=False, save_top_k=1, monitor=None)
    trainer = _trainer(tmp_path, [callback, saver, spy], enable_checkpointing=True)
    trainer.fit(model, _loader(dataset), _loader(dataset, train=False))
    assert spy.draws.get("train", 0) > 0 and spy.draws.get("val", 0) == 0
    assert not nrnn.is_noisy(model)
    assert set(callback.state_dict()["sources"][0]) == set(MODELS[name][1])
    after = tmp_path / "after.ckpt"
    trainer.save_checkpoint(after)
    x, _ = batch
    model.eval()
    for path in (saver.best_model_path, after):  # saved during fit (epoch end) and after fit
        loaded = type(model).load_from_checkpoint(path)
        assert {type(m) for _, m in loaded.named_modules()} == {type(m) for _, m in model.named_modules()}
        assert dict(loaded.hparams).keys() == hparams.keys()
        checkpoint = torch.load(path, weights_only=False)
        assert list(checkpoint["state_dict"]) == list(model.state_dict())
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(_prediction(loaded, x), _prediction(model, x))


def test_pytorch_forecasting_predict_is_identical_after_loading(dataset, tmp_path):
    model = _make("rnn_lstm", dataset)
    trainer = _trainer(tmp_path, [NoisyRNNCallback(CONFIG)])
    trainer.fit(model, _loader(dataset))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = RecurrentNetwork.load_from_checkpoint(tmp_path / "m.ckpt")
    # pytorch-forecasting's predict mutates trainer_kwargs: a fresh dict per call
    options = lambda: dict(
        mode="prediction", trainer_kwargs=dict(accelerator="cpu", logger=False, enable_progress_bar=False)
    )  # noqa: E731
    ours = model.predict(_loader(dataset, train=False), **options())
    theirs = loaded.predict(_loader(dataset, train=False), **options())
    as_tensor = lambda p: torch.cat(list(p)) if isinstance(p, (list, tuple)) else p  # noqa: E731
    assert as_tensor(ours).shape[-1] == HORIZON
    assert torch.equal(as_tensor(ours), as_tensor(theirs))


def test_resume_continues_the_noise_stream_of_a_forecasting_model(dataset, tmp_path):
    def fit(root, epochs, ckpt_path=None):
        pl.seed_everything(0, verbose=False)
        model = _make("deepar", dataset)
        callback = NoisyRNNCallback(CONFIG)
        trainer = _trainer(root, [callback], max_epochs=epochs, limit_val_batches=0)
        # pytorch-forecasting checkpoints hold its normalizer objects: resuming needs weights_only=False
        trainer.fit(model, _loader(dataset), ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)
        return model, trainer, callback

    reference, _, ref_callback = fit(tmp_path / "a", 2)
    _, trainer, _ = fit(tmp_path / "b", 1)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed, _, callback = fit(tmp_path / "c", 2, ckpt_path=tmp_path / "epoch1.ckpt")
    for a, b in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    ref_state = ref_callback.state_dict()["sources"][0]["rnn"]
    assert ref_state["offset"] > 0 and callback.state_dict()["sources"][0]["rnn"] == ref_state


@pytest.mark.parametrize("name", ["deepar", "tft"])
def test_regularizer_term_logged_for_forecasting_models(name, dataset, tmp_path):
    pytest.importorskip("nrnn_plugin.regularizer")
    rows: list[dict] = []
    outputs_seen: list[int] = []

    class Logger(pl.loggers.Logger):
        name = "mem"
        version = 0

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            rows.append(dict(metrics))

    class Check(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            outputs_seen.append(len(pl_module.training_step_outputs))
            rows.append({"total": float(outputs["loss"])})

    model = _make(name, dataset)
    config = CONFIG.replace(mode="regularizer", regularizer_weight=3.0)
    trainer = _trainer(
        tmp_path, [NoisyRNNCallback(config), Check()], logger=Logger(), log_every_n_steps=1, limit_val_batches=0
    )
    trainer.fit(model, _loader(dataset))
    assert outputs_seen == [1, 2]  # the regularizer's closure did not append to training_step_outputs
    logged = [r for r in rows if "train_loss_step" in r]
    totals = [r["total"] for r in rows if "total" in r]
    assert len(logged) == len(totals) == 2
    for row, total in zip(logged, totals):
        assert row[REG_METRIC + "_step"] != 0.0
        assert total == pytest.approx(row["train_loss_step"] + 3.0 * row[REG_METRIC + "_step"], rel=1e-5, abs=1e-6)
