"""The robustness suite's ``"point_forecast"`` task (the frameworks adapter's glue), framework-free: context
windows, the task chosen for such batches, metrics, and the perturbation acting on the standardised context."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nrnn_plugin.adapters.point_forecast import Forecaster, PointForecastTask, windows
from nrnn_plugin.robustness import evaluate
from nrnn_plugin.robustness.evaluate import _make_task

VALUES = torch.arange(40, dtype=torch.float64) * 0.5 + 10.0


class Persistence(Forecaster):
    """The last context value repeated, through a GRU so that the model has a recurrent layer."""

    def __init__(self, horizon: int) -> None:
        super().__init__(nn.GRU(1, 2), horizon)

    def forward(self, inputs):
        last = self.series_units(inputs)[:, -1]  # [B, 1]
        return last.expand(-1, self.horizon) + 0.0 * self.net(inputs["x"])[0].sum()


def test_windows_standardise_the_context_and_keep_the_target_in_series_units():
    ((inputs, target),) = windows(VALUES, 4, 3, [10, 20], loc=12.0, scale=2.0)
    assert inputs["x"].shape == (2, 4, 1) and target.shape == (2, 3)
    torch.testing.assert_close(inputs["x"][0, :, 0], ((VALUES[6:10] - 12.0) / 2.0).float())
    torch.testing.assert_close(target[1], VALUES[20:23].float())
    torch.testing.assert_close(Forecaster.series_units(inputs)[1, :, 0], VALUES[16:20].float())
    with pytest.raises(ValueError, match="every origin t needs 4 <= t <= 37"):
        windows(VALUES, 4, 3, [2], loc=0.0, scale=1.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        windows(VALUES, 4, 3, [10], loc=0.0, scale=0.0)


def test_the_task_is_chosen_for_point_forecast_batches_and_scores_mae_and_smape():
    batches = windows(VALUES, 4, 3, [10, 20, 30], loc=12.0, scale=2.0)
    assert type(_make_task("auto", batches, 8)) is PointForecastTask
    assert type(_make_task("point_forecast", batches, 8)) is PointForecastTask
    results = evaluate({"last": Persistence(3)}, batches, perturbations={"white_noise": [0.0, 0.5]}, seeds=[0, 1])
    clean = results[(results.strength == 0.0) & (results.metric == "mae")].value.iloc[0]
    assert clean == pytest.approx((0.5 + 1.0 + 1.5) / 3)  # persistence on a line of slope 0.5
    noisy = results[(results.strength == 0.5) & (results.metric == "mae")]
    assert (noisy.value != clean).all() and set(noisy.seed) == {0, 1}
    assert set(results.metric) == {"mae", "smape"}


def test_a_forecaster_of_the_wrong_shape_is_an_error():
    class Wrong(Persistence):
        def forward(self, inputs):
            return super().forward(inputs)[:, :1]

    with pytest.raises(TypeError, match=r"must return \[B, H\] = \(1, 3\), got \(1, 1\)"):
        evaluate({"wrong": Wrong(3)}, windows(VALUES, 4, 3, [10], loc=0.0, scale=1.0), perturbations={})
