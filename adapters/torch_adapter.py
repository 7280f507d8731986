"""Adapter for PyTorch's own recurrent modules: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` and their cells.

Matches exact types only: a subclass of ``nn.LSTM`` may override ``forward`` and needs an adapter of its own
(pytorch-forecasting's ``LSTM``/``GRU`` have one), otherwise ``register_noise`` reports it as unsupported.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.layers import NoisyGRU, NoisyGRUCell, NoisyLSTM, NoisyLSTMCell, NoisyRNN, NoisyRNNCell
from nrnn_plugin.plugins import hookimpl

NOISY_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.RNN: NoisyRNN,
    nn.LSTM: NoisyLSTM,
    nn.GRU: NoisyGRU,
    nn.RNNCell: NoisyRNNCell,
    nn.LSTMCell: NoisyLSTMCell,
    nn.GRUCell: NoisyGRUCell,
}


@hookimpl
def nrnn_noisy_class(module: nn.Module, config: NoiseConfig) -> type[nn.Module] | None:
    return NOISY_CLASSES.get(type(module))


@hookimpl
def nrnn_adapter_info() -> dict[str, Any]:
    return {
        "name": "torch",
        "available": True,
        "reason": "",
        "handles": sorted(f"torch.nn.{cls.__name__}" for cls in NOISY_CLASSES),
    }
