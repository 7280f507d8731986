"""The NRNN as the recurrent layer of pytorch-forecasting models (``RecurrentNetwork``, ``DeepAR``).

pytorch-forecasting's models call ``self.rnn(x, hx, lengths=..., enforce_sorted=...)`` and use the layer's
``init_hidden_state``, ``repeat_interleave`` and ``handle_no_encoding`` (sequences of length 0 are allowed).
:class:`ForecastingNRNN` is an :class:`~nrnn_plugin.layers.nrnn.NRNN` with that interface, and :func:`use_nrnn`
swaps it into a model::

    from pytorch_forecasting import RecurrentNetwork
    from nrnn_plugin.adapters.forecasting import use_nrnn

    model = RecurrentNetwork.from_dataset(dataset, cell_type="GRU", hidden_size=32, rnn_layers=1)
    use_nrnn(model, dt=0.1, learn_dt=True)          # before the Trainer builds the optimizer
    register_noise(model, NoiseConfig(additive=0.05, scheme="reference"))   # optional: the Noisy RNN

The swap is not recorded in the model's hyper-parameters: to reload a checkpoint, build the model, call
:func:`use_nrnn` with the same options, then ``load_state_dict``. pytorch-forecasting is imported only by
:func:`use_nrnn`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import rnn as rnn_utils

from nrnn_plugin.layers.nrnn import NRNN, NoisyNRNN

__all__ = ["ForecastingNRNN", "NoisyForecastingNRNN", "use_nrnn"]


class ForecastingNRNN(NRNN):
    """the NRNN layer with pytorch-forecasting's recurrent-layer interface (zero-length sequences allowed).

    ``forward(x, hx=None, lengths=None, enforce_sorted=True) -> (output, h_n)``: with ``lengths`` (``[B]``, zeros
    allowed) the padded input is packed, the output is returned padded, and a sample of length 0 keeps its
    initial state as ``h_n`` (its output row is that of a 1-step sequence, as in pytorch-forecasting's own
    layers). Without ``lengths`` it is :meth:`NRNN.forward`.
    """

    def forward(
        self,
        x: Tensor | rnn_utils.PackedSequence,
        hx: Tensor | None = None,
        lengths: Tensor | None = None,
        enforce_sorted: bool = True,
    ) -> tuple[Tensor | rnn_utils.PackedSequence, Tensor]:
        if lengths is None:
            return super().forward(x, hx)
        if isinstance(x, rnn_utils.PackedSequence):
            raise ValueError(f"{type(self).__name__}: lengths must be None for a PackedSequence input, got {lengths!r}")
        if lengths.numel() and int(lengths.min()) < 0:
            raise ValueError(f"{type(self).__name__}: lengths must be >= 0, got min {int(lengths.min())}")
        batch_dim = 0 if self.batch_first else 1
        if int(lengths.max()) == 0:
            shape = list(x.shape[:2])
            shape[batch_dim] = lengths.shape[0]
            out = x.new_zeros(*shape, self.hidden_size * (2 if self.bidirectional else 1))
            return out, self.init_hidden_state(x) if hx is None else hx
        packed = rnn_utils.pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=self.batch_first, enforce_sorted=enforce_sorted
        )
        packed_out, h_n = super().forward(packed, hx)
        empty = lengths == 0
        if bool(empty.any()):
            initial = self.init_hidden_state(x) if hx is None else hx
            h_n = self.handle_no_encoding(h_n, empty[None, :, None], initial)
        assert isinstance(packed_out, rnn_utils.PackedSequence)
        out, _ = rnn_utils.pad_packed_sequence(packed_out, batch_first=self.batch_first)
        return out, h_n

    def init_hidden_state(self, x: Tensor) -> Tensor:
        """Zero state ``[num_layers * D, B, H]`` for the batch ``x``."""
        batch = x.shape[0] if self.batch_first else x.shape[1]
        directions = 2 if self.bidirectional else 1
        return x.new_zeros(self.num_layers * directions, batch, self.hidden_size)

    def repeat_interleave(self, hidden_state: Tensor, n_samples: int) -> Tensor:
        """Each sample's state repeated ``n_samples`` times along the batch dimension."""
        return hidden_state.repeat_interleave(n_samples, 1)

    def handle_no_encoding(self, hidden_state: Tensor, no_encoding: Tensor, initial_hidden_state: Tensor) -> Tensor:
        """``hidden_state`` with the samples flagged by ``no_encoding`` (``[1, B, 1]``) reset to the initial state."""
        return torch.where(no_encoding, initial_hidden_state, hidden_state)


class NoisyForecastingNRNN(ForecastingNRNN, NoisyNRNN):
    """:class:`ForecastingNRNN` made noisy by ``register_noise``: length handling first, then the noisy core."""

    nrnn_original_class: ClassVar[type[nn.Module]] = ForecastingNRNN


def use_nrnn(model: nn.Module, **nrnn_options: Any) -> nn.Module:
    """Replace ``model.rnn`` (a pytorch-forecasting LSTM/GRU) by a :class:`ForecastingNRNN`, in place.

    The new layer takes ``input_size``, ``hidden_size``, ``num_layers``, ``dropout`` and ``batch_first`` from the
    old one, and its device and dtype; ``nrnn_options`` are passed to :class:`~nrnn_plugin.layers.nrnn.NRNN` (``dt``,
    ``learn_dt``, ``beta``, ``alpha``, ``gamma_A``, ``gamma_W``, ``init_std``). Call it before an optimizer
    is built. Returns ``model``.

    Raises:
        TypeError: ``model`` has no ``rnn`` attribute holding a pytorch-forecasting recurrent layer.
        ValueError: ``nrnn_options`` tries to set a size taken from the old layer.
    """
    from pytorch_forecasting.models.nn.rnn import RNN as ForecastingRNN

    old = getattr(model, "rnn", None)
    if isinstance(old, ForecastingNRNN):
        raise TypeError("use_nrnn: model.rnn is already a ForecastingNRNN")
    if not isinstance(old, ForecastingRNN):
        raise TypeError(
            "use_nrnn: expected a pytorch-forecasting model whose `rnn` attribute is a pytorch_forecasting LSTM or "
            f"GRU (RecurrentNetwork, DeepAR), got {type(model).__name__} with rnn={type(old).__name__}"
        )
    fixed = {"input_size", "hidden_size", "num_layers", "batch_first", "bidirectional", "device", "dtype"}
    clash = sorted(fixed & set(nrnn_options))
    if clash:
        raise ValueError(f"use_nrnn: {clash} are taken from the model's current rnn, not from the options")
    nrnn_options.setdefault("dropout", old.dropout)
    weight = old.weight_ih_l0
    model.rnn = ForecastingNRNN(
        old.input_size,
        old.hidden_size,
        num_layers=old.num_layers,
        batch_first=old.batch_first,
        bidirectional=old.bidirectional,
        device=weight.device,
        dtype=weight.dtype,
        **nrnn_options,
    )
    return model
