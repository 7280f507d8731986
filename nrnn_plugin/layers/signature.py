"""The kernel signature: what every noisy sequence kernel receives for one layer and one direction.

Every kernel (the autograd reference, the hand-written ``autograd.Function`` kernels) is called as
``kernel(mode, layer_pass) -> (out [N, H], h_n [B, H], c_n [B, H] | None)`` with ``mode`` one of
``nn.RNNBase.mode`` (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``) and a :class:`LayerPass`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nrnn_plugin.diffusion import AffineNoise
from nrnn_plugin.layers.layout import SequenceLayout

__all__ = ["LayerWeights", "LayerPass", "Kernel", "layer_weights", "MODES"]

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


@dataclass(frozen=True)
class LayerWeights:
    """The parameters of one layer and direction: ``w_ih [G*H, I]``, ``w_hh [G*H, H]``, biases ``[G*H]``.

    ``G`` is the number of gates (4 for LSTM, 3 for GRU, 1 for Elman); either bias may be ``None``.
    """

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None = None
    b_hh: Tensor | None = None

    def to(self, dtype: torch.dtype) -> LayerWeights:
        """The weights cast to ``dtype`` (autocast's compute dtype); ``self`` when they already have it."""
        if self.w_ih.dtype == dtype and all(b is None or b.dtype == dtype for b in (self.w_hh, self.b_ih, self.b_hh)):
            return self
        return LayerWeights(
            self.w_ih.to(dtype),
            self.w_hh.to(dtype),
            None if self.b_ih is None else self.b_ih.to(dtype),
            None if self.b_hh is None else self.b_hh.to(dtype),
        )


@dataclass(frozen=True)
class LayerPass:
    """One layer and one direction of a noisy recurrence over a batch of sequences.

    Attributes:
        x: the layer's inputs ``[N, I]`` in the packed, time-major row layout ``layout``.
        layout: which rows belong to which time step (:class:`~nrnn_plugin.layers.layout.SequenceLayout`).
        weights: the layer's parameters for this direction.
        h0: initial hidden state ``[B, H]`` (samples sorted by length, as the layout).
        c0: initial cell state ``[B, H]`` for LSTM, else ``None``.
        noise_h, noise_c: per-row noise coefficients of ``h`` and (LSTM) ``c``; ``None`` = no noise there.
        reverse: process time steps last to first (the backward direction of a bidirectional layer).
    """

    x: Tensor
    layout: SequenceLayout
    weights: LayerWeights
    h0: Tensor
    c0: Tensor | None = None
    noise_h: AffineNoise | None = None
    noise_c: AffineNoise | None = None
    reverse: bool = False


Kernel = Callable[[str, LayerPass], "tuple[Tensor, Tensor, Tensor | None]"]


def layer_weights(module: nn.Module, layer: int, direction: int) -> LayerWeights:
    """The parameters of ``layer`` / ``direction`` of an ``nn.RNNBase`` module (``weight_ih_l0_reverse``, ...)."""
    suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    w_ih = getattr(module, "weight_ih" + suffix)
    w_hh = getattr(module, "weight_hh" + suffix)
    if not getattr(module, "bias", True):
        return LayerWeights(w_ih, w_hh)
    return LayerWeights(w_ih, w_hh, getattr(module, "bias_ih" + suffix), getattr(module, "bias_hh" + suffix))
