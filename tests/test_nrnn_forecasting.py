"""The NRNN inside pytorch-forecasting: the recurrent-layer interface and a RecurrentNetwork that trains."""

from __future__ import annotations

import warnings

import pytest
import torch

import nrnn_plugin as nrnn

pf = pytest.importorskip("pytorch_forecasting")
lightning = pytest.importorskip("lightning.pytorch")

from nrnn_plugin.adapters.forecasting.nrnn import (  # noqa: E402
    ForecastingNRNN,
    NoisyForecastingNRNN,
    use_nrnn,
)

pytestmark = pytest.mark.filterwarnings("ignore:Attribute '(loss|logging_metrics)' is an instance")

DTYPE = torch.float64
I, H = 3, 4


def _layer(**kwargs) -> ForecastingNRNN:
    torch.manual_seed(0)
    return ForecastingNRNN(I, H, batch_first=True, dt=0.3, init_std=3.0, dtype=DTYPE, **kwargs)


def test_lengths_with_zeros_keep_the_initial_state():
    model = _layer(num_layers=2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, I, dtype=DTYPE, generator=gen)
    hx = torch.randn(2, 3, H, dtype=DTYPE, generator=gen)
    lengths = torch.tensor([3, 0, 5])
    out, h_n = model(x, hx, lengths=lengths, enforce_sorted=False)
    assert out.shape == (3, 5, H)
    torch.testing.assert_close(h_n[:, 1], hx[:, 1], rtol=0, atol=0)
    for i in (0, 2):
        n = int(lengths[i])
        o_i, h_i = model(x[i : i + 1, :n], hx[:, i : i + 1])
        torch.testing.assert_close(out[i : i + 1, :n], o_i, rtol=0, atol=1e-12)
        torch.testing.assert_close(h_n[:, i : i + 1], h_i, rtol=0, atol=1e-12)
    # without a given state the zero-length sample ends in the zero state
    _, h_n = model(x, lengths=lengths, enforce_sorted=False)
    assert (h_n[:, 1] == 0).all()


def test_all_lengths_zero_and_interface_helpers():
    model = _layer()
    x = torch.randn(2, 4, I, dtype=DTYPE)
    out, h_n = model(x, lengths=torch.tensor([0, 0]))
    assert out.shape == (2, 4, H) and (out == 0).all()
    torch.testing.assert_close(h_n, model.init_hidden_state(x))
    assert model.init_hidden_state(x).shape == (1, 2, H)
    h = torch.arange(2.0).view(1, 2, 1).expand(1, 2, H)
    assert model.repeat_interleave(h, 3)[0, :, 0].tolist() == [0, 0, 0, 1, 1, 1]


def test_noisy_wrapper_runs_length_logic_then_noisy_core():
    model = nrnn.register_noise(_layer(), nrnn.NoiseConfig(additive=0.5, seed=0))
    assert type(model) is NoisyForecastingNRNN
    x = torch.randn(3, 5, I, dtype=DTYPE)
    lengths = torch.tensor([3, 0, 5])
    model.eval()
    clean, h_clean = model(x, lengths=lengths, enforce_sorted=False)
    model.train()
    noisy, h_noisy = model(x, lengths=lengths, enforce_sorted=False)
    assert (noisy - clean).abs().max() > 1e-2
    assert (h_noisy[:, 1] == 0).all()  # zero-length sample still keeps its initial state
    nrnn.remove_noise(model)
    assert type(model) is ForecastingNRNN


def _ar_dataset():
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data.examples import generate_ar_data

    data = generate_ar_data(seasonality=10.0, timesteps=60, n_series=4, seed=0)
    data["static"] = "s"
    return TimeSeriesDataSet(
        data,
        time_idx="time_idx",
        target="value",
        group_ids=["series"],
        time_varying_unknown_reals=["value"],
        max_encoder_length=12,
        min_encoder_length=6,
        max_prediction_length=4,
        randomize_length=None,
    )


def test_recurrent_network_trains_with_a_noisy_nrnn():
    from pytorch_forecasting import RecurrentNetwork

    dataset = _ar_dataset()
    loader = dataset.to_dataloader(train=True, batch_size=16, num_workers=0)
    torch.manual_seed(0)
    model = RecurrentNetwork.from_dataset(dataset, cell_type="GRU", hidden_size=8, rnn_layers=2, dropout=0.0)
    use_nrnn(model, dt=0.2, learn_dt=True)
    nrnn.register_noise(model, nrnn.NoiseConfig(additive=0.05, multiplicative=0.02, scheme="reference", seed=0))
    assert type(model.rnn) is NoisyForecastingNRNN and model.rnn.num_layers == 2
    before = {k: v.clone() for k, v in model.rnn.state_dict().items()}
    trainer = lightning.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_dataloaders=loader)
    after = model.rnn.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every parameter, the step included
    # eval is deterministic (autoregressive decoding through the NRNN)
    model.eval()
    x, _ = next(iter(dataset.to_dataloader(train=False, batch_size=8, num_workers=0)))
    with torch.no_grad():
        p1 = model(x)["prediction"]
        p2 = model(x)["prediction"]
    assert torch.isfinite(p1).all() and torch.equal(p1, p2)


def test_use_nrnn_rejects_models_without_a_forecasting_rnn():
    with pytest.raises(TypeError, match="rnn"):
        use_nrnn(torch.nn.Linear(2, 2))
    from pytorch_forecasting import RecurrentNetwork

    model = RecurrentNetwork.from_dataset(_ar_dataset(), cell_type="LSTM", hidden_size=4, rnn_layers=1)
    with pytest.raises(ValueError, match="hidden_size"):
        use_nrnn(model, hidden_size=3)
