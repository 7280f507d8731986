"""Adapter for the paper's own layer: :class:`~nrnn_plugin.nrnn.NRNN` and :class:`~nrnn_plugin.nrnn.NRNNCell`.

``register_noise`` switches them to :class:`~nrnn_plugin.nrnn.NoisyNRNN` / ``NoisyNRNNCell`` (same parameters,
noise through the core's runtime and schemes). The pytorch-forecasting wrapper
(:class:`nrnn_plugin.adapters.forecasting_nrnn.ForecastingNRNN`) is handled too; its module is consulted only
when it has been imported (a model containing that wrapper has necessarily imported it), so this adapter never
imports pytorch-forecasting.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.hookspecs import hookimpl
from nrnn_plugin.nrnn import NRNN, NoisyNRNN, NoisyNRNNCell, NRNNCell

NOISY_CLASSES: dict[type[nn.Module], type[nn.Module]] = {NRNN: NoisyNRNN, NRNNCell: NoisyNRNNCell}
# Re-registering an already noisy module keeps its class.
NOISY_CLASSES.update({noisy: noisy for noisy in list(NOISY_CLASSES.values())})

_FORECASTING_MODULE = "nrnn_plugin.adapters.forecasting_nrnn"


def _classes() -> dict[type[nn.Module], type[nn.Module]]:
    forecasting = sys.modules.get(_FORECASTING_MODULE)
    if forecasting is None:
        return NOISY_CLASSES
    return {**NOISY_CLASSES, **forecasting.NOISY_CLASSES}


@hookimpl
def nrnn_noisy_class(module: nn.Module, config: NoiseConfig) -> type[nn.Module] | None:
    return _classes().get(type(module))


@hookimpl
def nrnn_adapter_info() -> dict[str, Any]:
    handles = ["nrnn_plugin.nrnn.NRNN", "nrnn_plugin.nrnn.NRNNCell", f"{_FORECASTING_MODULE}.ForecastingNRNN"]
    return {"name": "nrnn", "available": True, "reason": "", "handles": handles}
