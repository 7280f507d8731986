"""Inference-time noise: the explicit switch (never model.train()), reproducible Monte Carlo paths, quantiles,
and pytorch-forecasting forecasts with hidden-state noise."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.adapters.forecasting import forecast_samples
from nrnn_plugin.counter_noise import key_tensor
from nrnn_plugin.inference import quantiles, sample_paths, sampling_noise
from nrnn_plugin.runtime import recording, runtime_of

CONFIG = nrnn.NoiseConfig(additive=0.1, seed=0)


class Regressor(nn.Module):
    """LSTM + dropout + head: ``[B, T, 2] -> [B, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, 8, batch_first=True)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(self.drop(out[:, -1]))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Regressor().eval()


@pytest.fixture
def x():
    return torch.randn(5, 7, 2, generator=torch.Generator().manual_seed(1))


def test_switch_injects_in_eval_without_train_mode(model, x):
    plain = copy.deepcopy(model)
    nrnn.register_noise(model, CONFIG)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))  # eval: noise-free
        with sampling_noise(model):
            assert not model.training and not model.drop.training
            noisy = model(x)
            # scale 0 inside the switch: dropout stays off, so the output is the plain eval output exactly
            with nrnn.runtime.noise_control(model, scale=0.0):
                assert torch.equal(model(x), plain(x))
        assert not torch.allclose(noisy, plain(x))
        assert torch.equal(model(x), plain(x))  # switched off again after the block


def test_seeded_sampling_is_reproducible_and_leaves_training_streams_alone(model, x):
    nrnn.register_noise(model, CONFIG)
    source = runtime_of(model.lstm).source
    model.train()
    model(x)  # the training stream has advanced once
    before = source.state_dict()
    model.eval()
    a = sample_paths(model, x, 6, seed=3)
    b = sample_paths(model, x, 6, seed=3)
    c = sample_paths(model, x, 6, seed=4)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    after = source.state_dict()
    assert after == before and before["offset"] == 1
    # without a seed the draws continue the module's stream (and advance it)
    sample_paths(model, x, 2)
    assert source.state_dict()["offset"] > before["offset"]


def test_sample_paths_shapes_and_tiling(model, x):
    nrnn.register_noise(model, CONFIG)
    paths = sample_paths(model, x, 7, seed=0)
    assert paths.shape == (7, 5, 1)
    # tiling: 7 samples in forwards of 3, 3 and 1 copies of the batch; one draw per forward
    with recording(model) as tapes:
        tiled = sample_paths(model, x, 7, samples_per_forward=3, seed=0)
    assert tiled.shape == (7, 5, 1)
    assert [d.shape[1] for d in tapes["lstm"].draws] == [7 * 15, 7 * 15, 7 * 5]  # rows = T x tiled batch
    assert len({tuple(p.flatten().tolist()) for p in tiled}) == 7  # every path has its own noise
    # the first tiled forward's first copy used exactly the first rows of its draw: replaying one-copy
    # forwards with those rows reproduces the tiled result (same distribution, same computation)
    with torch.no_grad(), sampling_noise(model):
        first = key_tensor(tapes["lstm"].draws[0], "cpu", torch.float32).view(1, 7, 3, 5, 8)[:, :, 0].reshape(1, 35, 8)
        runtime_of(model.lstm).source = nrnn.noise.FixedNoise([first], name="lstm")
        torch.testing.assert_close(model(x), tiled[0], rtol=0, atol=0)
    # outputs of a tuple-returning module (nn.LSTM) and a custom forward
    lstm = nrnn.register_noise(nn.LSTM(2, 4, batch_first=True), CONFIG).eval()
    assert sample_paths(lstm, x, 3).shape == (3, 5, 7, 4)
    assert sample_paths(lstm, x, 2, forward=lambda m, inp: m(inp)[1][0]).shape == (2, 1, 5, 4)


def test_quantiles_match_torch_quantile_and_are_ordered(model, x):
    nrnn.register_noise(model, CONFIG)
    paths = sample_paths(model, x, 50, samples_per_forward=25, seed=0)  # [50, 5, 1]
    bands = quantiles(paths, (0.1, 0.5, 0.9))
    assert bands.shape == (5, 1, 3)
    import numpy as np

    reference = np.moveaxis(np.quantile(paths.double().numpy(), [0.1, 0.5, 0.9], axis=0), 0, -1)
    torch.testing.assert_close(bands.double(), torch.from_numpy(reference), rtol=0, atol=1e-6)
    assert bool((bands[..., 0] <= bands[..., 1]).all() and (bands[..., 1] <= bands[..., 2]).all())
    assert bool((bands[..., 2] > bands[..., 0]).all())
    torch.testing.assert_close(quantiles(paths.movedim(0, -1), (0.1, 0.5, 0.9), dim=-1), bands)


def test_spread_grows_with_the_noise_scale(model, x):
    nrnn.register_noise(model, CONFIG)
    spread = [sample_paths(model, x, 64, samples_per_forward=64, seed=0, scale=s).std(dim=0).mean() for s in (0, 1, 3)]
    assert spread[0] == 0.0 and 0.0 < spread[1] < spread[2]


def test_errors_name_the_problem(model, x):
    with pytest.raises(ValueError, match="has no noisy module; call nrnn_plugin.register_noise"):
        sample_paths(model, x, 2)
    nrnn.register_noise(model, CONFIG)
    with pytest.raises(ValueError, match="n_samples: expected an integer >= 1, got 0"):
        sample_paths(model, x, 0)
    with pytest.raises(ValueError, match="samples_per_forward"):
        sample_paths(model, x, 2, samples_per_forward=0)
    bad_scale = pytest.raises(ValueError, match="scale: expected a finite number >= 0.0, got -1.0")
    with bad_scale, sampling_noise(model, scale=-1.0):
        pass
    with pytest.raises(ValueError, match=r"q must be .* in \[0, 1\]"):
        quantiles(torch.randn(4, 2), (0.5, 1.5))
    with pytest.raises(TypeError, match="cannot find a prediction tensor"):
        sample_paths(model, x, 1, forward=lambda m, inp: _call_returning_none(m, inp))


def _call_returning_none(model, inputs):
    from nrnn_plugin.inference import _prediction_of

    return _prediction_of(None)


# ---------------------------------------------------------------------------------------------- forecasting


@pytest.fixture(scope="module")
def dataset():
    pytest.importorskip("pytorch_forecasting")
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data.examples import generate_ar_data

    data = generate_ar_data(seasonality=10.0, timesteps=24, n_series=2, seed=0)
    return TimeSeriesDataSet(
        data,
        time_idx="time_idx",
        target="value",
        group_ids=["series"],
        max_encoder_length=6,
        max_prediction_length=3,
        time_varying_unknown_reals=["value"],
    )


def test_forecast_samples_recurrent_network(dataset):
    from pytorch_forecasting import RecurrentNetwork

    torch.manual_seed(0)
    model = RecurrentNetwork.from_dataset(dataset, hidden_size=6, rnn_layers=1, dropout=0.0)
    nrnn.register_noise(model, CONFIG)
    loader = dataset.to_dataloader(train=False, batch_size=8, num_workers=0)
    samples = forecast_samples(model, dataset, n_samples=10, batch_size=8, samples_per_forward=5, seed=0)
    windows = len(dataset)
    assert samples.shape == (windows, 3, 10)
    assert not model.training
    assert bool((samples.std(dim=-1) > 0).all())
    # scale 0: every path is the model's own noise-free (autoregressive) point forecast
    clean = forecast_samples(model, loader, n_samples=2, scale=0.0)
    with torch.no_grad():
        reference = torch.cat([model.to_prediction(model(x)) for x, _ in loader])
    torch.testing.assert_close(clean, reference.unsqueeze(-1).expand(-1, -1, 2), rtol=0, atol=0)
    assert torch.equal(forecast_samples(model, loader, 4, seed=1), forecast_samples(model, loader, 4, seed=1))


def test_forecast_samples_deepar_combines_its_sampling_with_hidden_noise(dataset):
    from pytorch_forecasting import DeepAR

    torch.manual_seed(0)
    model = nrnn.register_noise(DeepAR.from_dataset(dataset, hidden_size=6, rnn_layers=1, dropout=0.0), CONFIG)
    torch.manual_seed(0)
    with recording(model) as tapes:
        samples = forecast_samples(model, dataset, n_samples=6, samples_per_forward=3, seed=0)
    assert samples.shape == (len(dataset), 3, 6) and torch.isfinite(samples).all()
    # autoregressive decoding (eval): per forward, the encoder draws once and the decoder once per step
    assert len(tapes["rnn"].draws) % (1 + 3) == 0
    assert not model.training


def test_calibrated_forecast_bands_cover_held_out_series():
    """pytorch-forecasting: bands fitted on the validation series' windows cover 80% of other series' windows.

    The series are i.i.d. draws of one AR process (``generate_ar_data`` with different seeds), one window each,
    so validation and test windows are exchangeable and independent. Tolerance: 3.3 standard errors of the
    held-out coverage from 1000 test and 1000 calibration windows (the scores of the 3 steps of one window are
    correlated, so a window counts once)."""
    from pytorch_forecasting import RecurrentNetwork, TimeSeriesDataSet
    from pytorch_forecasting.data.examples import generate_ar_data

    from nrnn_plugin.adapters.forecasting.calibration import calibrate_bands, loader_targets
    from nrnn_plugin.calibration import central_band, coverage

    def windows(seed: int) -> TimeSeriesDataSet:
        data = generate_ar_data(seasonality=10.0, timesteps=9, n_series=1000, seed=seed)
        return TimeSeriesDataSet(
            data, time_idx="time_idx", target="value", group_ids=["series"], max_encoder_length=6,
            max_prediction_length=3, time_varying_unknown_reals=["value"],
        )  # fmt: skip

    validation, test = windows(1), windows(2)
    torch.manual_seed(0)
    model = nrnn.register_noise(RecurrentNetwork.from_dataset(validation, hidden_size=6, rnn_layers=1), CONFIG)
    bands = calibrate_bands(model, validation, level=0.8, n_samples=20, seed=0, scales=(1.0, 4.0))
    assert bands.offsets.shape == (3,) and [s for s, _ in bands.tried][0] == 1.0
    y = loader_targets(test)
    assert y.shape == (len(test), 3)
    samples = forecast_samples(model, test, 20, seed=1)
    raw = coverage(*central_band(samples, 0.8), y)
    calibrated = coverage(*bands.apply(samples), y)
    assert raw.fraction < 0.5 < calibrated.fraction  # an untrained model's raw bands are far too narrow
    se = (0.8 * 0.2 * (1 / 1000 + 1 / 1000)) ** 0.5
    assert len(test) == 1000 and abs(calibrated.fraction - 0.8) < 3.3 * se, calibrated.describe()
