"""Adapter for pytorch-forecasting's recurrent modules (entry point ``forecasting`` in group ``nrnn_plugin``).

Handles, by exact type:

* ``pytorch_forecasting.models.nn.rnn.LSTM`` and ``.GRU`` - the layers of ``RecurrentNetwork``, ``DeepAR``
  and ``TemporalFusionTransformer`` (``lstm_encoder`` / ``lstm_decoder``). pytorch-forecasting's own forward
  (zero-length sequences, packing by ``lengths``) stays in front of the noisy core.
* the xLSTM cells ``sLSTMCell`` (noise on ``h``, ``c`` or both) and ``mLSTMCell`` (noise on the matrix memory
  ``c``: the cell never reads ``h_prev``, so the default ``target="h"`` is resolved to ``"c"`` and
  ``target="both"`` is rejected) used by ``xLSTMTime``.

The v2 ``TFT`` (``_tft_v2``) uses plain ``nn.LSTM`` modules, which the torch adapter handles.

This module never imports pytorch-forecasting itself: a module is recognised by its class's qualified name,
and the noisy classes (:mod:`._forecasting_classes`) are imported only when such a module is met, that is
when pytorch-forecasting is already imported. Without pytorch-forecasting the adapter reports itself
unavailable and handles nothing.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.hookspecs import hookimpl

#: Qualified names of the classes this adapter switches to a noisy class.
HANDLED = (
    "pytorch_forecasting.models.nn.rnn.LSTM",
    "pytorch_forecasting.models.nn.rnn.GRU",
    "pytorch_forecasting.layers._recurrent._slstm.cell.sLSTMCell",
    "pytorch_forecasting.layers._recurrent._mlstm.cell.mLSTMCell",
)
_PACKAGE = "pytorch_forecasting"
_CLASSES_MODULE = "nrnn_plugin.adapters._forecasting_classes"


def _is_candidate(module: nn.Module) -> bool:
    """True for pytorch-forecasting modules and for this adapter's own noisy classes (cheap, no import)."""
    module_name = type(module).__module__
    return module_name.startswith(_PACKAGE + ".") or module_name == _CLASSES_MODULE


def _classes() -> Any:
    return importlib.import_module(_CLASSES_MODULE)


@hookimpl
def nrnn_noisy_class(module: nn.Module, config: NoiseConfig) -> type[nn.Module] | None:
    if not _is_candidate(module):
        return None
    return _classes().NOISY_CLASSES.get(type(module))


@hookimpl
def nrnn_resolve_config(name: str, module: nn.Module, config: NoiseConfig) -> NoiseConfig | None:
    if not _is_candidate(module):
        return None
    return _classes().resolve_config(module, config)


@hookimpl
def nrnn_adapter_info() -> dict[str, Any]:
    available = importlib.util.find_spec(_PACKAGE) is not None
    return {
        "name": "forecasting",
        "available": available,
        "reason": "" if available else "pytorch-forecasting is not installed (pip install 'nrnn-plugin[forecasting]')",
        "handles": list(HANDLED),
    }
