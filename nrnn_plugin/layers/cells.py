"""Noisy drop-in versions of ``nn.RNNCell``, ``nn.LSTMCell`` and ``nn.GRUCell``.

A cell computes one step ``Psi(h, x)``; the noisy cell returns ``Psi(h, x)`` plus the scheme's noise (which
may depend on the previous state ``h``, Ito convention). The cell itself runs PyTorch's fused cell; noise is
drawn once per call (one step) from the module's noise source. Unbatched input (``[I]``) is supported.
"""

from __future__ import annotations

from typing import ClassVar, NoReturn

import torch
from torch import Tensor, nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.diffusion import AffineNoise
from nrnn_plugin.layers.precision import autocast_dtype
from nrnn_plugin.layers.reference import lstm_cell
from nrnn_plugin.runtime import NoiseRuntime, refuse_scripting, runtime_of

__all__ = ["NoisyRNNCell", "NoisyLSTMCell", "NoisyGRUCell", "NoisyCellMixin"]


class NoisyCellMixin:
    """Noise injection for ``nn.RNNCellBase`` subclasses; placed before the torch class in the MRO."""

    nrnn_original_class: ClassVar[type[nn.Module]]
    hidden_size: int

    @classmethod
    def nrnn_validate(cls, module: nn.Module, config: NoiseConfig) -> None:
        """Reject ``target='c'`` for cells without a cell state."""
        if config.target == "c" and not isinstance(module, nn.LSTMCell):
            raise ValueError(
                f"NoiseConfig.target: expected 'h' or 'both' for {type(module).__name__} (it has no cell state), "
                "got 'c'"
            )

    def __prepare_scriptable__(self) -> NoReturn:
        refuse_scripting(self)  # torch.jit.script of a noisy module: an error that says what to do

    def _draw(self, runtime: NoiseRuntime, rows: int, targets: tuple[str, ...], like: Tensor) -> dict[str, AffineNoise]:
        dtype = autocast_dtype(like.device.type) or like.dtype
        return runtime.draw(rows, self.hidden_size, targets, directions=0, device=like.device, dtype=dtype)[0]


def _batched(input: Tensor, hx: Tensor | None) -> tuple[Tensor, Tensor | None, bool]:  # noqa: A002
    if input.dim() == 1:
        return input.unsqueeze(0), (None if hx is None else hx.unsqueeze(0)), False
    return input, hx, True


class _NoisySingleStateCell(NoisyCellMixin):
    """Forward of the cells with a single state (``nn.RNNCell``, ``nn.GRUCell``): ``Psi(h, x)`` plus noise."""

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:  # noqa: A002
        assert isinstance(self, nn.RNNCellBase)
        runtime = runtime_of(self)
        if runtime is None or not runtime.injecting(self.training) or (input.dim() == 2 and input.shape[0] == 0):
            return super().forward(input, hx)  # type: ignore[misc]
        x, h, batched = _batched(input, hx)
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        psi = super().forward(x, h)  # type: ignore[misc]
        noise = self._draw(runtime, x.shape[0], ("h",), psi)["h"]
        out = noise.apply(psi, h.to(psi.dtype))
        return out if batched else out.squeeze(0)


class NoisyRNNCell(_NoisySingleStateCell, nn.RNNCell):
    """``nn.RNNCell`` with noise on the returned state during training."""

    nrnn_original_class = nn.RNNCell


class NoisyGRUCell(_NoisySingleStateCell, nn.GRUCell):
    """``nn.GRUCell`` with noise on the returned state during training."""

    nrnn_original_class = nn.GRUCell


class NoisyLSTMCell(NoisyCellMixin, nn.LSTMCell):
    """``nn.LSTMCell`` with noise on the returned ``h``, ``c`` or both during training.

    With noise on ``c`` the step is recomputed from the gates so that the returned ``h = o * tanh(c)`` uses the
    noisy cell, exactly as the sequence layer does; otherwise PyTorch's fused cell runs and noise is added.
    """

    nrnn_original_class = nn.LSTMCell

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:  # noqa: A002
        runtime = runtime_of(self)
        if runtime is None or not runtime.injecting(self.training) or (input.dim() == 2 and input.shape[0] == 0):
            return super().forward(input, hx)
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            h, c = zeros, zeros
        else:
            h, c = hx if batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        targets = runtime.targets(has_cell_state=True)
        if "c" in targets:
            dtype = autocast_dtype(x.device.type) or x.dtype
            b_ih, b_hh = (None if b is None else b.to(dtype) for b in (self.bias_ih, self.bias_hh))
            xw = torch.nn.functional.linear(x.to(dtype), self.weight_ih.to(dtype), b_ih)
            o, c_new, _ = lstm_cell(xw, h.to(dtype), c.to(dtype), self.weight_hh.to(dtype), b_hh)
            noise = self._draw(runtime, x.shape[0], targets, c_new)
            c_new = noise["c"].apply(c_new, c.to(dtype))
            h_new = o * torch.tanh(c_new)
        else:
            h_new, c_new = super().forward(x, (h, c))
            noise = self._draw(runtime, x.shape[0], targets, h_new)
        if "h" in targets:
            h_new = noise["h"].apply(h_new, h.to(h_new.dtype))
        if not batched:
            return h_new.squeeze(0), c_new.squeeze(0)
        return h_new, c_new
