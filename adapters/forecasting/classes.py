"""Statically defined noisy classes for pytorch-forecasting's recurrent modules.

Importing this module imports pytorch-forecasting; :mod:`nrnn_plugin.adapters.forecasting` imports it only
when it meets a pytorch-forecasting module (which means pytorch-forecasting is already imported). The classes
are module-level so that pickling by reference keeps working (``docs/design.md``: swap by class).

``LSTM`` / ``GRU`` (``pytorch_forecasting.models.nn.rnn``)
    ``class NoisyForecastingLSTM(pf.LSTM, NoisyLSTM)`` has the MRO
    ``[NoisyForecastingLSTM, pf.LSTM, pf.RNN, ABC, NoisyLSTM, NoisyRecurrentMixin, nn.LSTM, nn.RNNBase, ...]``:
    pytorch-forecasting's ``forward(x, hx, lengths, enforce_sorted)`` runs first (zero-length sequences,
    packing by ``lengths``, restoring the initial state of empty sequences) and its ``super().forward`` reaches
    the noisy core with a ``PackedSequence``. Used by ``RecurrentNetwork``, ``DeepAR`` and
    ``TemporalFusionTransformer`` (``lstm_encoder``, ``lstm_decoder``).

``sLSTMCell`` / ``mLSTMCell`` (the xLSTM cells in ``pytorch_forecasting.layers._recurrent``)
    One step ``(h, c[, n])_{k+1} = Psi((h, c[, n])_k, x_k) + noise``: the cell's own forward computes
    ``Psi`` and the noise is added to the returned states (Euler-Maruyama on the cell's full state; the Ito
    multiplicative part uses the state before the step).

    * sLSTM reads ``h_prev`` (through ``hidden_weights``) and ``c_prev``: ``target`` ``"h"``, ``"c"`` or
      ``"both"`` as configured.
    * mLSTM never reads ``h_prev`` (its gates, query, key and value are functions of ``x`` only; ``h`` is an
      output). Noise on ``h`` would not enter the recurrence, so the adapter resolves the default
      ``target="h"`` to the memory ``c`` (``C_k = f C_{k-1} + i k v^T`` summed over keys), the state the
      recurrence does carry; ``target="both"`` is rejected. The normaliser state ``n`` stays noise-free, so
      ``h = o * tanh(c * n / |n|)`` keeps its deterministic normalisation.
"""

from __future__ import annotations

from typing import ClassVar

from pytorch_forecasting.layers._recurrent._mlstm.cell import mLSTMCell
from pytorch_forecasting.layers._recurrent._slstm.cell import sLSTMCell
from pytorch_forecasting.models.nn import rnn as pf_rnn
from torch import Tensor, nn

from nrnn_plugin.adapters.forecasting.nrnn import ForecastingNRNN, NoisyForecastingNRNN
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.diffusion import AffineNoise
from nrnn_plugin.layers import NoisyGRU, NoisyLSTM
from nrnn_plugin.layers.precision import autocast_dtype
from nrnn_plugin.runtime import NoiseRuntime, runtime_of

__all__ = [
    "NoisyForecastingLSTM",
    "NoisyForecastingGRU",
    "NoisySLSTMCell",
    "NoisyMLSTMCell",
    "NOISY_CLASSES",
    "resolve_config",
]


class NoisyForecastingLSTM(pf_rnn.LSTM, NoisyLSTM):
    """pytorch-forecasting's zero-length-capable ``LSTM`` with SDE noise on ``h``, ``c`` or both in training."""

    nrnn_original_class = pf_rnn.LSTM


class NoisyForecastingGRU(pf_rnn.GRU, NoisyGRU):
    """pytorch-forecasting's zero-length-capable ``GRU`` with SDE noise on ``h`` in training."""

    nrnn_original_class = pf_rnn.GRU


class _NoisyXLSTMCellMixin:
    """Shared pieces of the noisy xLSTM cells: runtime lookup and one draw per step."""

    nrnn_original_class: ClassVar[type[nn.Module]]
    hidden_size: int

    def _active_runtime(self) -> NoiseRuntime | None:
        assert isinstance(self, nn.Module)
        runtime = runtime_of(self)
        if runtime is None or not runtime.injecting(self.training):
            return None
        return runtime

    def _draw(self, runtime: NoiseRuntime, targets: tuple[str, ...], like: Tensor) -> dict[str, AffineNoise]:
        """Coefficients ``[B, H]`` per target for one step of a batch of ``like.shape[0]`` rows."""
        dtype = autocast_dtype(like.device.type) or like.dtype
        return runtime.draw(like.shape[0], self.hidden_size, targets, directions=0, device=like.device, dtype=dtype)[0]


class NoisySLSTMCell(_NoisyXLSTMCellMixin, sLSTMCell):
    """xLSTM's stabilised LSTM cell with noise on the returned ``h``, ``c`` or both during training.

    ``forward(x [B, I], h_prev [B, H], c_prev [B, H]) -> (h [B, H], c [B, H])`` as the original cell.
    """

    nrnn_original_class = sLSTMCell

    @classmethod
    def nrnn_validate(cls, module: nn.Module, config: NoiseConfig) -> None:
        """Every target is meaningful: the sLSTM step reads both ``h_prev`` and ``c_prev``."""

    def forward(self, x: Tensor, h_prev: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        h, c = super().forward(x, h_prev, c_prev)
        runtime = self._active_runtime()
        if runtime is None:
            return h, c
        targets = runtime.targets(has_cell_state=True)
        noise = self._draw(runtime, targets, h)
        if "h" in targets:
            h = noise["h"].apply(h, h_prev.to(h.dtype))
        if "c" in targets:
            c = noise["c"].apply(c, c_prev.to(c.dtype))
        return h, c


class NoisyMLSTMCell(_NoisyXLSTMCellMixin, mLSTMCell):
    """xLSTM's matrix-memory cell with noise on the memory ``c`` during training (see the module docstring).

    ``forward(x [B, I], h_prev, c_prev, n_prev [B, H]) -> (h, c, n)`` as the original cell.
    """

    nrnn_original_class = mLSTMCell

    @classmethod
    def nrnn_validate(cls, module: nn.Module, config: NoiseConfig) -> None:
        if config.target != "c":
            raise ValueError(
                f"NoiseConfig.target: expected 'h' or 'c' for {type(module).__name__} (xLSTM's mLSTM cell never "
                "reads its previous hidden state h, so noise on h would not enter the recurrence; 'h' is mapped "
                f"to the matrix memory c), got {config.target!r}"
            )

    def forward(self, x: Tensor, h_prev: Tensor, c_prev: Tensor, n_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, c, n = super().forward(x, h_prev, c_prev, n_prev)
        runtime = self._active_runtime()
        if runtime is None:
            return h, c, n
        noise = self._draw(runtime, ("c",), c)
        return h, noise["c"].apply(c, c_prev.to(c.dtype)), n


#: original class -> noisy class.
NOISY_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    pf_rnn.LSTM: NoisyForecastingLSTM,
    pf_rnn.GRU: NoisyForecastingGRU,
    sLSTMCell: NoisySLSTMCell,
    mLSTMCell: NoisyMLSTMCell,
    ForecastingNRNN: NoisyForecastingNRNN,
}


def resolve_config(module: nn.Module, config: NoiseConfig) -> NoiseConfig | None:
    """Per-module config: mLSTM's default target ``"h"`` becomes ``"c"``; ``None`` keeps ``config``."""
    if isinstance(module, mLSTMCell) and config.target == "h":
        return config.replace(target="c")
    return None
