"""The robustness suite's ``"point_forecast"`` task: a framework's trained model as a point forecaster of windows.

Darts, NeuralForecast and GluonTS models predict through their own pipelines (data frames, time series, data
sets); for :func:`nrnn_plugin.robustness.evaluate` each adapter wraps a trained model into a
:class:`Forecaster`, an ``nn.Module`` that maps context windows to point forecasts and contains the model's
network (so ``evaluate`` switches it to eval mode, keeps injected noise off, and differentiates through it for
the adversarial perturbations):

* :func:`nrnn_plugin.adapters.darts.forecaster`, :func:`nrnn_plugin.adapters.neuralforecast.forecaster`,
  :func:`nrnn_plugin.adapters.gluonts.forecaster`;
* :func:`windows` (Darts, NeuralForecast) or :func:`nrnn_plugin.adapters.gluonts.windows` build the batches.

A batch is ``(inputs, target)`` with ``inputs = {"x": [B, T, 1], "loc": [B, 1, 1], "scale": [B, 1, 1], ...}``:
``x`` is the context in standardised units (``(y - loc) / scale``, so a perturbation strength means the same for
every framework and series), further keys are framework fields; ``target [B, H]`` is the next ``H`` values in the
series' units. Metrics: ``mae`` and ``smape`` of the forecast; adversaries increase the MAE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nrnn_plugin.robustness import Task
from nrnn_plugin.validation import check_int

__all__ = ["PointForecastTask", "Forecaster", "windows", "is_point_forecast_batch"]


class Forecaster(nn.Module):
    """``forward(inputs) -> [B, H]`` point forecasts in the series' units; ``net`` is the framework's network."""

    def __init__(self, net: nn.Module, horizon: int) -> None:
        super().__init__()
        self.net = net
        self.horizon = check_int("Forecaster.horizon", horizon, minimum=1)

    @staticmethod
    def series_units(inputs: dict[str, Tensor]) -> Tensor:
        """The context ``[B, T, 1]`` in the series' units: ``x * scale + loc``."""
        return inputs["x"] * inputs["scale"] + inputs["loc"]


def is_point_forecast_batch(batch: Any) -> bool:
    """True for a ``(inputs, target)`` batch of this task (see the module docstring)."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        return False
    inputs, target = batch
    return isinstance(inputs, dict) and {"x", "loc", "scale"} <= set(inputs) and isinstance(target, Tensor)


class PointForecastTask(Task):
    """Perturb the standardised context ``inputs["x"]``; score MAE and sMAPE of ``model(inputs)`` on the horizon."""

    metrics = ("mae", "smape")

    def features(self, inputs: dict[str, Tensor]) -> Tensor:
        return inputs["x"]

    def with_features(self, inputs: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
        return {**inputs, "x": x}

    @staticmethod
    def _prediction(model: nn.Module, inputs: dict[str, Tensor], target: Tensor) -> Tensor:
        prediction = model(inputs)
        if not isinstance(prediction, Tensor) or prediction.shape != target.shape:
            got = tuple(prediction.shape) if isinstance(prediction, Tensor) else type(prediction).__name__
            raise TypeError(
                f"evaluate(task='point_forecast'): the forecaster must return [B, H] = {tuple(target.shape)}, got {got}"
            )
        return prediction

    def attack_loss(self, model: nn.Module, inputs: dict[str, Tensor], target: Tensor) -> Any:
        def loss(x: Tensor) -> Tensor:
            return (self._prediction(model, self.with_features(inputs, x), target) - target).abs().mean()

        return loss

    def score(self, model: nn.Module, inputs: dict[str, Tensor], target: Tensor) -> dict[str, tuple[float, int]]:
        prediction = self._prediction(model, inputs, target)
        error = (prediction - target).abs()
        smape = 2.0 * error / (prediction.abs() + target.abs() + 1e-8)
        return {"mae": (error.sum().item(), error.numel()), "smape": (smape.sum().item(), smape.numel())}


def windows(
    values: Sequence[float] | Tensor,
    context: int,
    horizon: int,
    origins: Sequence[int],
    *,
    loc: float,
    scale: float,
    dtype: torch.dtype = torch.float32,
) -> list[tuple[dict[str, Tensor], Tensor]]:
    """One batch of rolling-origin windows of a univariate series: context ``values[t - context : t]`` and target
    ``values[t : t + horizon]`` for every origin ``t``; ``loc`` / ``scale`` standardise the context (use the
    training part's mean and standard deviation)."""
    series = torch.as_tensor(values, dtype=torch.float64)
    context = check_int("windows.context", context, minimum=1)
    horizon = check_int("windows.horizon", horizon, minimum=1)
    if not origins or any(t < context or t + horizon > len(series) for t in origins):
        raise ValueError(
            f"windows: every origin t needs {context} <= t <= {len(series) - horizon} (context {context}, horizon "
            f"{horizon}, {len(series)} values), got {list(origins)}"
        )
    if scale <= 0:
        raise ValueError(f"windows: scale must be > 0, got {scale!r}")
    x = torch.stack([series[t - context : t] for t in origins]).unsqueeze(-1)
    target = torch.stack([series[t : t + horizon] for t in origins])
    batch = len(origins)
    inputs = {
        "x": ((x - loc) / scale).to(dtype),
        "loc": torch.full((batch, 1, 1), float(loc), dtype=dtype),
        "scale": torch.full((batch, 1, 1), float(scale), dtype=dtype),
    }
    return [(inputs, target.to(dtype))]
