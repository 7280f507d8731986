"""Adapter for pytorch-forecasting (a default plugin of nrnn-plugin, registered as ``forecasting``).

Everything nrnn-plugin knows about pytorch-forecasting lives in this package:

* :mod:`.classes`: the noisy classes of its recurrent modules: ``LSTM`` / ``GRU`` of
  ``pytorch_forecasting.models.nn.rnn`` (the layers of ``RecurrentNetwork``, ``DeepAR`` and
  ``TemporalFusionTransformer``; pytorch-forecasting's zero-length and packing logic stays in front of the
  noisy core) and the xLSTM cells ``sLSTMCell`` / ``mLSTMCell`` of ``xLSTMTime``;
* :mod:`.nrnn`: the paper's NRNN layer with pytorch-forecasting's recurrent interface (:func:`.nrnn.use_nrnn`);
* :mod:`.closure`: the regularizer's loss closure for pytorch-forecasting models;
* :mod:`.decoding`: median-path decoding and Monte Carlo :func:`forecast_samples`;
* :mod:`.robustness`: the robustness suite's ``"forecasting"`` task.

The v2 ``TFT`` uses plain ``nn.LSTM`` modules, which the torch adapter handles.

This module never imports pytorch-forecasting itself: modules are recognised by their class's module name, and
the submodules above are imported only when such a module (or batch) is met, that is when pytorch-forecasting is
already imported. Without pytorch-forecasting the adapter reports itself unavailable and handles nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.plugins import hookimpl

__all__ = ["forecast_samples", "use_nrnn", "HANDLED"]

#: Qualified names of the classes this adapter switches to a noisy class.
HANDLED = (
    "pytorch_forecasting.models.nn.rnn.LSTM",
    "pytorch_forecasting.models.nn.rnn.GRU",
    "pytorch_forecasting.layers._recurrent._slstm.cell.sLSTMCell",
    "pytorch_forecasting.layers._recurrent._mlstm.cell.mLSTMCell",
    "nrnn_plugin.adapters.forecasting.nrnn.ForecastingNRNN",
)
_PACKAGE = "pytorch_forecasting"
_OWN = __name__ + "."


def _from_forecasting(cls: type) -> bool:
    """True for classes defined by pytorch-forecasting or by this adapter (cheap, imports nothing)."""
    return cls.__module__.startswith((_PACKAGE + ".", _OWN))


def _classes() -> Any:
    return importlib.import_module(__name__ + ".classes")


@hookimpl
def nrnn_noisy_class(module: nn.Module, config: NoiseConfig) -> type[nn.Module] | None:
    if not _from_forecasting(type(module)):
        return None
    noisy: type[nn.Module] | None = _classes().NOISY_CLASSES.get(type(module))
    return noisy


@hookimpl
def nrnn_resolve_config(name: str, module: nn.Module, config: NoiseConfig) -> NoiseConfig | None:
    if not _from_forecasting(type(module)):
        return None
    resolved: NoiseConfig | None = _classes().resolve_config(module, config)
    return resolved


@hookimpl
def nrnn_loss_closure(module: nn.Module) -> Any:
    if not any(_from_forecasting(cls) and cls.__name__ == "BaseModel" for cls in type(module).__mro__):
        return None
    return importlib.import_module(__name__ + ".closure").forecasting_loss


@hookimpl
def nrnn_robustness_task(batches: list[tuple[Any, Any]], task: str) -> Any:
    if task not in ("auto", "forecasting"):
        return None
    inputs = batches[0][0]
    if not (isinstance(inputs, dict) and "encoder_cont" in inputs and "encoder_lengths" in inputs):
        return None
    return importlib.import_module(__name__ + ".robustness").ForecastingTask(batches)


@hookimpl
def nrnn_adapter_info() -> dict[str, Any]:
    available = importlib.util.find_spec(_PACKAGE) is not None
    return {
        "name": "forecasting",
        "available": available,
        "reason": "" if available else "pytorch-forecasting is not installed (pip install 'nrnn-plugin[forecasting]')",
        "handles": list(HANDLED),
    }


def __getattr__(name: str) -> Any:
    """``forecast_samples`` and ``use_nrnn`` import pytorch-forecasting: loaded on first use."""
    if name == "forecast_samples":
        return importlib.import_module(__name__ + ".decoding").forecast_samples
    if name == "use_nrnn":
        return importlib.import_module(__name__ + ".nrnn").use_nrnn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
