"""Reference kernels: the noisy recurrences unrolled with plain autograd ops.

These are the readable definition of every noisy layer (cell maths in PyTorch's gate order) and the path
that supports higher-order derivatives (the regularizer's ``jet`` estimator). The input projection is hoisted
out of the loop (one GEMM for the whole sequence) and per-step views come from ``torch.split`` (indexing a
grad-requiring sequence inside the loop would make backward O(T^2)).

All kernels work on one layer and one direction in the packed layout of :mod:`.layout` and take a
:class:`~nrnn_plugin.layers.signature.LayerPass`:

    x: [N, I]  ->  out: [N, P], h_n: [B, P] (, c_n: [B, H])

with ``P = H`` except for an LSTM with a projection (``proj_size = P``: ``h = W_hr (o * tanh(c))``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nrnn_plugin.counter_noise import as_coefficients
from nrnn_plugin.layers.signature import LayerPass

__all__ = ["lstm_cell", "gru_cell", "elman_cell", "reference_unroll", "GATE_COUNT"]

GATE_COUNT = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def lstm_cell(xw: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM step from the projected input ``xw = W_ih x + b_ih`` (``[B, 4H]``).

    Returns the output gate ``o`` ``[B, H]``, the noise-free new cell ``f * c + i * g`` ``[B, H]`` and the gate
    pre-activations ``[B, 4H]``; the caller forms ``h = o * tanh(c)`` after any noise has entered ``c``.
    """
    gates = xw + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o), c_new, gates


def gru_cell(xw: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """One GRU step (PyTorch's formulation, reset gate applied after the hidden projection)."""
    gh = F.linear(h, w_hh, b_hh)
    x_r, x_z, x_n = xw.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n)


def elman_cell(xw: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, relu: bool) -> Tensor:
    """One Elman step ``act(W_ih x + b_ih + W_hh h + b_hh)``."""
    pre = xw + F.linear(h, w_hh, b_hh)
    return torch.relu(pre) if relu else torch.tanh(pre)


def _previous(prev_out: Tensor | None, init: Tensor, size: int, carried: int) -> Tensor:
    """The state entering a step: carried rows from the previous step's output, the rest from ``init``."""
    if carried == 0:
        return init if init.shape[0] == size else init[:size]
    assert prev_out is not None
    if carried == size:
        return prev_out if prev_out.shape[0] == size else prev_out[:size]
    return torch.cat([prev_out[:carried], init[carried:size]])


def reference_unroll(mode: str, p: LayerPass) -> tuple[Tensor, Tensor, Tensor | None]:
    """Noisy recurrence of one layer and direction with autograd ops.

    Args:
        mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
        p: inputs ``[N, I]``, layout, weights, initial states ``[B, H]``, noise coefficients and direction.

    Returns:
        ``out [N, P]`` (the noisy hidden state of every row), ``h_n [B, P]``, ``c_n [B, H]`` (or ``None``);
        ``P = H`` unless an LSTM has a projection ``w_hr [P, H]``, whose output ``h = w_hr (o * tanh(c))``
        is what receives ``noise_h``.
    """
    layout, x, h0, c0, reverse = p.layout, p.x, p.h0, p.c0, p.reverse
    noise_h, noise_c = as_coefficients(p.noise_h, x), as_coefficients(p.noise_c, x)
    w_ih, w_hh, b_ih, b_hh, w_hr = p.weights.w_ih, p.weights.w_hh, p.weights.b_ih, p.weights.b_hh, p.weights.w_hr
    sizes = layout.sizes
    xw_steps = torch.split(F.linear(x, w_ih, b_ih), sizes)
    noise_h_steps = noise_h.split(sizes) if noise_h is not None and not noise_h.is_zero else None
    noise_c_steps = noise_c.split(sizes) if noise_c is not None and not noise_c.is_zero else None
    carried = layout.carried_rows(reverse)
    outputs: list[Tensor] = [x.new_empty(0)] * layout.steps
    cells: list[Tensor] = [x.new_empty(0)] * layout.steps
    h_prev_out: Tensor | None = None
    c_prev_out: Tensor | None = None
    relu = mode == "RNN_RELU"
    for t in layout.order(reverse):
        size = sizes[t]
        h = _previous(h_prev_out, h0, size, carried[t])
        if mode == "LSTM":
            assert c0 is not None
            c = _previous(c_prev_out, c0, size, carried[t])
            o, c_new, _ = lstm_cell(xw_steps[t], h, c, w_hh, b_hh)
            if noise_c_steps is not None:
                c_new = noise_c_steps[t].apply(c_new, c)
            h_new = o * torch.tanh(c_new)
            if w_hr is not None:
                h_new = F.linear(h_new, w_hr)
            cells[t] = c_prev_out = c_new
        elif mode == "GRU":
            h_new = gru_cell(xw_steps[t], h, w_hh, b_hh)
        else:
            h_new = elman_cell(xw_steps[t], h, w_hh, b_hh, relu)
        if noise_h_steps is not None:
            h_new = noise_h_steps[t].apply(h_new, h)
        outputs[t] = h_prev_out = h_new
    out = torch.cat(outputs)
    h_n = layout.final_rows(out, reverse)
    c_n = layout.final_rows(torch.cat(cells), reverse) if mode == "LSTM" else None
    return out, h_n, c_n
