"""Noisy recurrent layers and cells (switched to by :func:`nrnn_plugin.register_noise`), the paper's NRNN layer,
and the kernels they run.

* :mod:`.recurrent`, :mod:`.cells`: noisy ``nn.RNN``/``nn.LSTM``/``nn.GRU`` and their cells;
* :mod:`.nrnn`: the NRNN (Lipschitz / Antisymmetric / Noisy RNN) layer and cell;
* :mod:`.kernels`: which kernel runs (:func:`use_kernel`); :mod:`.reference`, :mod:`.functions`,
  :mod:`.fused_lstm`, :mod:`.nrnn_kernel`: the kernels; :mod:`.signature`, :mod:`.layout`,
  :mod:`.sequence_io`: what they receive.
"""

from nrnn_plugin.layers.cells import NoisyGRUCell, NoisyLSTMCell, NoisyRNNCell
from nrnn_plugin.layers.choice import KERNELS, current_kernel, use_kernel
from nrnn_plugin.layers.nrnn import NRNN, NoisyNRNN, NoisyNRNNCell, NRNNCell
from nrnn_plugin.layers.recurrent import NoisyGRU, NoisyLSTM, NoisyRNN

__all__ = [
    "NoisyRNN",
    "NoisyLSTM",
    "NoisyGRU",
    "NoisyRNNCell",
    "NoisyLSTMCell",
    "NoisyGRUCell",
    "NRNN",
    "NRNNCell",
    "NoisyNRNN",
    "NoisyNRNNCell",
    "use_kernel",
    "current_kernel",
    "KERNELS",
]
