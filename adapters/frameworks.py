"""Hooks for the Lightning forecasting frameworks (a default plugin of nrnn-plugin, registered as ``frameworks``).

Darts, NeuralForecast and GluonTS build their recurrent layers from ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
(the torch adapter makes them noisy) and train them in a LightningModule (the callback runs there). What differs
per framework is the regularizer's loss closure, which this plugin provides through ``nrnn_loss_closure``:

* Darts (``PLForecastingModule``): :func:`nrnn_plugin.adapters.darts.darts_loss` (its ``training_step`` also
  updates the training metrics);
* NeuralForecast (``BaseModel``): :func:`nrnn_plugin.adapters.neuralforecast.neuralforecast_loss` (its
  ``training_step`` also appends to ``train_trajectories``);
* GluonTS (``DeepARLightningModule``): none needed, its ``training_step`` only logs besides the loss.

It also provides the robustness suite's ``"point_forecast"`` task (:mod:`nrnn_plugin.adapters.point_forecast`):
the frameworks' models wrapped as point forecasters of context windows.

This module imports no framework: modules are recognised by their classes' module names, and the framework's
adapter module is imported only when one of its modules is met (the framework is then already imported).
The user-facing helpers live in :mod:`nrnn_plugin.adapters.darts`, :mod:`nrnn_plugin.adapters.neuralforecast`
and :mod:`nrnn_plugin.adapters.gluonts`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from torch import nn

from nrnn_plugin.plugins import hookimpl

__all__ = ["FAMILIES"]

#: (framework package, defining module, base class name, adapter module, closure name)
FAMILIES = (
    ("darts", "darts.models.forecasting.pl_forecasting_module", "PLForecastingModule", "darts", "darts_loss"),
    ("neuralforecast", "neuralforecast.common._base_model", "BaseModel", "neuralforecast", "neuralforecast_loss"),
)
_FRAMEWORKS = ("darts", "neuralforecast", "gluonts")


@hookimpl
def nrnn_loss_closure(module: nn.Module) -> Any:
    for cls in type(module).__mro__:
        for _, defining, name, adapter, closure in FAMILIES:
            if cls.__module__ == defining and cls.__name__ == name:
                return getattr(importlib.import_module(f"nrnn_plugin.adapters.{adapter}"), closure)
    return None


@hookimpl
def nrnn_robustness_task(batches: list[tuple[Any, Any]], task: str) -> Any:
    if task not in ("auto", "point_forecast"):
        return None
    tasks = importlib.import_module("nrnn_plugin.adapters.point_forecast")
    if not all(tasks.is_point_forecast_batch(batch) for batch in batches):
        return None
    return tasks.PointForecastTask(batches)


@hookimpl
def nrnn_adapter_info() -> dict[str, Any]:
    installed = [name for name in _FRAMEWORKS if importlib.util.find_spec(name) is not None]
    missing = "none of darts, neuralforecast, gluonts is installed (pip install 'nrnn-plugin[darts]', ...)"
    return {
        "name": "frameworks",
        "available": bool(installed),
        "reason": "" if installed else missing,
        "handles": [f"{defining}.{name} (loss closure)" for _, defining, name, _, _ in FAMILIES]
        + ["robustness task 'point_forecast'"],
    }
