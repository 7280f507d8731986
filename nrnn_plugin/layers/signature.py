"""The kernel signature: what every noisy sequence kernel receives for one layer and one direction.

Every kernel (the autograd reference, the hand-written ``autograd.Function`` kernels) is called as
``kernel(mode, layer_pass) -> (out [N, H], h_n [B, H], c_n [B, H] | None)`` with ``mode`` one of
``nn.RNNBase.mode`` (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``) and a :class:`LayerPass`.
For an LSTM with a projection (``proj_size = P > 0``) the hidden state ``h`` (``out``, ``h0``, ``h_n``) has
``P`` units and the cell state ``c`` (``c0``, ``c_n``) has ``H``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nrnn_plugin.counter_noise import StateNoise
from nrnn_plugin.layers.layout import SequenceLayout

__all__ = ["LayerWeights", "LayerPass", "Kernel", "layer_weights", "MODES"]

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


@dataclass(frozen=True)
class LayerWeights:
    """The parameters of one layer and direction: ``w_ih [G*H, I]``, ``w_hh [G*H, P]``, biases ``[G*H]``.

    ``G`` is the number of gates (4 for LSTM, 3 for GRU, 1 for Elman); either bias may be ``None``.
    ``w_hr [P, H]`` is an LSTM's projection of the hidden state (``h = w_hr (o * tanh(c))``, ``nn.LSTM``'s
    ``weight_hr_l{k}`` when ``proj_size = P > 0``); ``None`` means no projection (``P = H``).
    """

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None = None
    b_hh: Tensor | None = None
    w_hr: Tensor | None = None

    @property
    def hidden_size(self) -> int:
        """``H``: the units of the gates (and of an LSTM's cell state)."""
        return self.w_hh.shape[1] if self.w_hr is None else self.w_hr.shape[1]

    @property
    def state_size(self) -> int:
        """The units of the recurrent state ``h``: ``P`` with a projection, else ``H``."""
        return self.w_hh.shape[1]

    def to(self, dtype: torch.dtype) -> LayerWeights:
        """The weights cast to ``dtype`` (autocast's compute dtype); ``self`` when they already have it."""
        tensors = (self.w_ih, self.w_hh, self.b_ih, self.b_hh, self.w_hr)
        if all(t is None or t.dtype == dtype for t in tensors):
            return self

        def cast(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(dtype)

        return LayerWeights(self.w_ih.to(dtype), self.w_hh.to(dtype), cast(self.b_ih), cast(self.b_hh), cast(self.w_hr))


@dataclass(frozen=True)
class LayerPass:
    """One layer and one direction of a noisy recurrence over a batch of sequences.

    Attributes:
        x: the layer's inputs ``[N, I]`` in the packed, time-major row layout ``layout``.
        layout: which rows belong to which time step (:class:`~nrnn_plugin.layers.layout.SequenceLayout`).
        weights: the layer's parameters for this direction.
        h0: initial hidden state ``[B, P]`` (samples sorted by length, as the layout; ``P = H`` without a
            projection).
        c0: initial cell state ``[B, H]`` for LSTM, else ``None``.
        noise_h, noise_c: the noise of ``h`` and (LSTM) ``c``: per-row coefficients
            (:class:`~nrnn_plugin.diffusion.AffineNoise`), counter-based noise the kernel generates itself
            (:class:`~nrnn_plugin.counter_noise.CounterNoise`; kernels without a generator call
            :func:`~nrnn_plugin.counter_noise.as_coefficients`), or ``None`` = no noise there.
        reverse: process time steps last to first (the backward direction of a bidirectional layer).
    """

    x: Tensor
    layout: SequenceLayout
    weights: LayerWeights
    h0: Tensor
    c0: Tensor | None = None
    noise_h: StateNoise = None
    noise_c: StateNoise = None
    reverse: bool = False


Kernel = Callable[[str, LayerPass], "tuple[Tensor, Tensor, Tensor | None]"]


def layer_weights(module: nn.Module, layer: int, direction: int) -> LayerWeights:
    """The parameters of ``layer`` / ``direction`` of an ``nn.RNNBase`` module (``weight_ih_l0_reverse``, ...)."""
    suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    w_ih = getattr(module, "weight_ih" + suffix)
    w_hh = getattr(module, "weight_hh" + suffix)
    w_hr = getattr(module, "weight_hr" + suffix) if getattr(module, "proj_size", 0) else None
    if not getattr(module, "bias", True):
        return LayerWeights(w_ih, w_hh, w_hr=w_hr)
    return LayerWeights(w_ih, w_hh, getattr(module, "bias_ih" + suffix), getattr(module, "bias_hh" + suffix), w_hr)
