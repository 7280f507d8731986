"""Noisy recurrent layers and cells (switched to by :func:`nrnn_plugin.register_noise`)."""

from nrnn_plugin.layers.cells import NoisyGRUCell, NoisyLSTMCell, NoisyRNNCell
from nrnn_plugin.layers.recurrent import KERNELS, NoisyGRU, NoisyLSTM, NoisyRNN, current_kernel, use_kernel

__all__ = [
    "NoisyRNN",
    "NoisyLSTM",
    "NoisyGRU",
    "NoisyRNNCell",
    "NoisyLSTMCell",
    "NoisyGRUCell",
    "use_kernel",
    "current_kernel",
    "KERNELS",
]

from nrnn_plugin.layers import functions as _functions  # noqa: E402,F401  (registers FUNCTION_KERNELS)
