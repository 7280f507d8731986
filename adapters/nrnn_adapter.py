"""Adapter for the paper's own layer: :class:`~nrnn_plugin.layers.nrnn.NRNN` and ``NRNNCell``.

``register_noise`` switches them to :class:`~nrnn_plugin.layers.nrnn.NoisyNRNN` / ``NoisyNRNNCell`` (same
parameters, noise through the core's runtime and schemes). The pytorch-forecasting wrapper ``ForecastingNRNN``
belongs to the forecasting adapter.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.layers.nrnn import NRNN, NoisyNRNN, NoisyNRNNCell, NRNNCell
from nrnn_plugin.plugins import hookimpl

#: original class -> noisy class (exact types: a subclass may override ``forward`` and needs its own adapter).
NOISY_CLASSES: dict[type[nn.Module], type[nn.Module]] = {NRNN: NoisyNRNN, NRNNCell: NoisyNRNNCell}


@hookimpl
def nrnn_noisy_class(module: nn.Module, config: NoiseConfig) -> type[nn.Module] | None:
    return NOISY_CLASSES.get(type(module))


@hookimpl
def nrnn_adapter_info() -> dict[str, Any]:
    return {
        "name": "nrnn",
        "available": True,
        "reason": "",
        "handles": ["nrnn_plugin.NRNN", "nrnn_plugin.layers.NRNNCell"],
    }
