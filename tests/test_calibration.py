"""nrnn_plugin.calibration: split-conformal bands reach their nominal coverage on held-out windows.

Statistical checks use fixed generators; the tolerance is 3.3 standard errors of the held-out coverage (test windows
and calibration windows both contribute), so a correct implementation fails about once in a thousand seeds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.calibration import (
    apply_offsets,
    central_band,
    choose_scale,
    conformal_offsets,
    coverage,
    wilson,
)
from nrnn_plugin.inference import sample_paths


def _within_sampling_error(fraction: float, level: float, n_test: int, n_cal: int, z: float = 3.29) -> bool:
    """``fraction`` is within ``z`` standard errors of ``level``. Two sources: the test windows (binomial, ``n_test``)
    and the calibration windows (the conformal quantile is itself estimated from ``n_cal`` scores: the coverage
    given the calibration set is Beta-distributed with variance about ``level (1 - level) / n_cal``), plus the
    conformal rank's rounding (at most ``1 / (n_cal + 1)`` above the level)."""
    se = math.sqrt(level * (1 - level) * (1 / n_test + 1 / n_cal))
    return level - z * se <= fraction <= level + 1 / (n_cal + 1) + z * se


def test_conformal_offsets_by_hand():
    lo = torch.zeros(4, 1)
    hi = torch.ones(4, 1)
    y = torch.tensor([[0.5], [1.5], [-1.0], [3.0]])  # scores -0.5, 0.5, 1.0, 2.0
    q = conformal_offsets(lo, hi, y, level=0.6)  # rank ceil(5 * 0.6) = 3 -> 1.0
    assert q.tolist() == [1.0]
    assert torch.isinf(conformal_offsets(lo, hi, y, level=0.9)).all()  # rank 5 > 4 windows
    new_lo, new_hi = apply_offsets(lo, hi, q)
    assert new_lo.flatten().tolist() == [-1.0] * 4 and new_hi.flatten().tolist() == [2.0] * 4
    with pytest.raises(ValueError, match="one shape"):
        conformal_offsets(lo, hi, y[:2])


def test_too_narrow_bands_become_nominal_on_held_out_data():
    """Samples from N(mu, 0.5^2) for targets from N(mu, 1): an 80% band covers ~42%; calibrated: 80%."""
    g = torch.Generator().manual_seed(0)
    n_val, n_test, horizon, s = 400, 3000, 4, 200
    mu = torch.randn(n_val + n_test, horizon, generator=g)
    target = mu + torch.randn(mu.shape, generator=g) * torch.linspace(1.0, 2.0, horizon)  # wider with horizon
    samples = mu.unsqueeze(-1) + 0.5 * torch.randn(*mu.shape, s, generator=g)
    lo, hi = central_band(samples, 0.8)
    raw = coverage(lo[n_val:], hi[n_val:], target[n_val:])
    assert raw.high < 0.5
    q = conformal_offsets(lo[:n_val], hi[:n_val], target[:n_val], 0.8)
    assert (q[1:] > q[:-1]).all()  # later steps need more widening
    new_lo, new_hi = apply_offsets(lo[n_val:], hi[n_val:], q)
    calibrated = coverage(new_lo, new_hi, target[n_val:])
    assert _within_sampling_error(calibrated.fraction, 0.8, n_test * horizon, n_val)
    for step in range(horizon):  # per step too
        per_step = coverage(new_lo[:, step : step + 1], new_hi[:, step : step + 1], target[n_val:, step : step + 1])
        assert _within_sampling_error(per_step.fraction, 0.8, n_test, n_val)


def test_too_wide_bands_are_narrowed():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(2000, 2, generator=g)
    target = mu + 0.3 * torch.randn(mu.shape, generator=g)
    samples = mu.unsqueeze(-1) + torch.randn(*mu.shape, 100, generator=g)
    lo, hi = central_band(samples, 0.8)
    q = conformal_offsets(lo[:500], hi[:500], target[:500], 0.8)
    assert (q < 0).all()
    new_lo, new_hi = apply_offsets(lo[500:], hi[500:], q)
    assert _within_sampling_error(coverage(new_lo, new_hi, target[500:]).fraction, 0.8, 3000, 500)


def test_wilson_interval_and_independent_count():
    low, high = wilson(80, 100)
    assert low == pytest.approx(0.711, abs=1e-3) and high == pytest.approx(0.867, abs=1e-3)
    lo, hi, y = torch.zeros(10, 5), torch.ones(10, 5), torch.full((10, 5), 0.5)
    assert coverage(lo, hi, y).n == 50 and coverage(lo, hi, y, independent=10).n == 10
    assert coverage(lo, hi, y).fraction == 1.0 and coverage(lo, hi, y).width == 1.0


class _AR(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(1, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def test_noisy_lstm_bands_calibrated_on_validation_windows_cover_on_test_windows():
    """End to end: an LSTM trained with hidden-state noise on a noisy AR(1) series, 3 steps ahead. Its raw
    Monte Carlo bands under-cover; after split-conformal calibration on validation windows they cover 80% of
    the held-out test windows within sampling error. Windows do not overlap across the three parts."""
    g = torch.Generator().manual_seed(0)
    steps = 12000
    series = torch.zeros(steps)
    for t in range(1, steps):
        series[t] = 0.8 * series[t - 1] + 0.5 * torch.randn((), generator=g)
    lookback, horizon = 12, 3
    windows = series.unfold(0, lookback + horizon, lookback + horizon)  # non-overlapping [W, 15]
    x, y = windows[:, :lookback, None], windows[:, lookback:]
    train, val, test = slice(0, 300), slice(300, 500), slice(500, None)
    torch.manual_seed(0)
    model = _AR()
    nrnn.register_noise(model, nrnn.NoiseConfig(additive=0.1, seed=0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        (model(x[train]) - y[train]).pow(2).mean().backward()
        opt.step()
    model.eval()

    def sample(part: slice, scale: float = 1.0) -> torch.Tensor:
        return sample_paths(model, x[part], 100, samples_per_forward=25, seed=1, scale=scale).permute(1, 2, 0)

    lo_v, hi_v = central_band(sample(val), 0.8)
    lo_t, hi_t = central_band(sample(test), 0.8)
    raw = coverage(lo_t, hi_t, y[test])
    assert raw.fraction < 0.6  # hidden-state noise alone is not a forecast distribution
    q = conformal_offsets(lo_v, hi_v, y[val], 0.8)
    calibrated = coverage(*apply_offsets(lo_t, hi_t, q), y[test])
    n_test = y[test].numel()
    assert n_test >= 250 * 3
    assert _within_sampling_error(calibrated.fraction, 0.8, n_test, 200), calibrated.describe()
    assert calibrated.width > raw.width

    scale, tried = choose_scale(lambda s: sample(val, s), y[val], 0.8, scales=(1.0, 4.0, 16.0, 64.0))
    assert tried[0][0] == 1.0 and tried[1][1] > tried[0][1]  # wider noise, wider bands
    assert tried[-1][1] >= 0.8 or scale == max(tried, key=lambda pair: pair[1])[0]
    assert math.isfinite(scale)


def test_choose_scale_stops_at_the_level_or_takes_the_best_coverage():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2000, 1, generator=g)
    noise = torch.randn(2000, 1, 200, generator=g)

    def widening(scale: float) -> torch.Tensor:  # centred paths: coverage grows with the scale
        return 0.3 * scale * noise

    scale, tried = choose_scale(widening, target, 0.8, scales=(1.0, 2.0, 4.0, 8.0, 16.0))
    assert scale == 4.0 and [s for s, _ in tried] == [1.0, 2.0, 4.0]  # path sd 1.2 >= target sd 1: stops there

    def drifting(scale: float) -> torch.Tensor:  # the median moves away as the noise grows
        return 0.3 * noise + (scale - 1.0)

    scale, tried = choose_scale(drifting, target, 0.8, scales=(1.0, 2.0, 3.0))
    assert scale == 1.0 and len(tried) == 3
