"""Exact fused fast path for an LSTM layer with additive noise on ``h`` (``docs/method.md``, "fused LSTM").

The previous hidden state enters an LSTM step only through ``W_hh h``. Adding noise ``a_{k-1}`` to
``h_{k-1}`` is therefore the same as running the fused kernel on the augmented input ``[x_k, a_{k-1}]`` with
``W_ih' = [W_ih | W_hh]`` (built with ``torch.cat`` from the original parameters, so gradients reach both),
and adding ``a_k`` to the emitted outputs. The cell state is untouched. Bidirectional layers share one
augmented input ``[x, a_fwd_prev, a_bwd_prev]`` with zero blocks in the other direction's weight.
"""

from __future__ import annotations

import torch
from torch import _VF, Tensor

from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.signature import LayerWeights

__all__ = ["lstm_additive_fused"]


def _shift_to_next_step(noise: Tensor, layout: SequenceLayout, reverse: bool) -> Tensor:
    """Row ``j`` gets the noise of the same sample's previously processed step (zero at its first step)."""
    batch = layout.batch
    zeros = noise.new_zeros(batch, noise.shape[1])
    if layout.uniform:
        if reverse:
            return torch.cat([noise[batch:], zeros])
        return torch.cat([zeros, noise[: noise.shape[0] - batch]])
    index = layout.previous_rows(reverse, noise.device) + 1
    return torch.cat([zeros[:1], noise]).index_select(0, index)


def lstm_additive_fused(
    x: Tensor,
    layout: SequenceLayout,
    batch_sizes: Tensor | None,
    weights: list[LayerWeights],
    h0: Tensor,
    c0: Tensor,
    additive: list[Tensor],
    training: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One (bi)LSTM layer with additive noise on ``h`` through the fused kernel.

    Args:
        x: layer input ``[N, I]`` in the packed layout ``layout``.
        batch_sizes: the packed sequence's ``batch_sizes`` (``None`` for padded input).
        weights: the layer's parameters per direction.
        h0, c0: initial states ``[D, B, H]``.
        additive: the noise added to ``h`` after every step, ``[N, H]`` per direction.

    Returns:
        ``out [N, D*H]`` (noisy hidden states), ``h_n [D, B, H]`` (noisy), ``c_n [D, B, H]``.
    """
    directions = len(weights)
    hidden = h0.shape[-1]
    shifted = [_shift_to_next_step(a, layout, reverse=d == 1) for d, a in enumerate(additive)]
    augmented = torch.cat([x, *shifted], dim=1)
    has_bias = weights[0].b_ih is not None
    flat: list[Tensor] = []
    for d, w in enumerate(weights):
        w_ih, w_hh, b_ih, b_hh = w.w_ih, w.w_hh, w.b_ih, w.b_hh
        blocks = [w_ih]
        for other in range(directions):
            blocks.append(w_hh if other == d else w_hh.new_zeros(w_hh.shape))
        flat.append(torch.cat(blocks, dim=1))
        flat.append(w_hh)
        if has_bias:
            assert b_ih is not None and b_hh is not None
            flat.extend((b_ih, b_hh))
    bidirectional = directions == 2
    if batch_sizes is None:
        padded = augmented.view(layout.steps, layout.batch, augmented.shape[1])
        out, h_n, c_n = _VF.lstm(padded, (h0, c0), flat, has_bias, 1, 0.0, training, bidirectional, False)
        out = out.reshape(layout.rows, directions * hidden)
    else:
        out, h_n, c_n = _VF.lstm(augmented, batch_sizes, (h0, c0), flat, has_bias, 1, 0.0, training, bidirectional)
    noise = additive[0] if directions == 1 else torch.cat(additive, dim=1)
    out = out + noise
    final_noise = torch.stack([layout.final_rows(a, reverse=d == 1) for d, a in enumerate(additive)])
    return out, h_n + final_noise, c_n
