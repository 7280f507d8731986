"""The NRNN recursion with plain autograd ops: one step, and one layer and direction over a sequence.

The readable definition of :class:`~nrnn_plugin.layers.nrnn.NRNN`'s recursion (``docs/method.md``, "the NRNN
cell") and the path that supports higher-order derivatives; the faster kernels (:mod:`.nrnn_kernel`,
:mod:`nrnn_plugin.compiled`) compute the same and recompute through :func:`reference_unroll` for double backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nrnn_plugin.counter_noise import StateNoise, as_coefficients
from nrnn_plugin.layers.layout import SequenceLayout

__all__ = ["nrnn_step", "reference_unroll"]


def nrnn_step(xw: Tensor, h: Tensor, kernel: Tensor, step: Tensor | float, linear_part: bool) -> Tensor:
    """One deterministic step ``Psi(h, x) = h + d * (alpha A h + tanh(W h + U x + b))``.

    Args:
        xw: the projected input ``U x + b``, ``[B, H]``.
        h: the state entering the step, ``[B, H]``.
        kernel: ``[alpha A; W]`` stacked as ``[2H, H]`` when ``linear_part``, else ``W`` as ``[H, H]``.
        step: ``d``, a float or a ``[H]`` tensor.
        linear_part: whether the ``alpha A h`` term is present (``alpha != 0``).
    """
    z = F.linear(h, kernel)
    if linear_part:
        linear, pre = z.chunk(2, dim=1)
        drift = linear + torch.tanh(pre + xw)
    else:
        drift = torch.tanh(z + xw)
    return h + step * drift


def _entering_state(previous: Tensor | None, init: Tensor, size: int, carried: int) -> Tensor:
    """The state entering a step: ``carried`` rows continue the previous step, the rest start from ``init``."""
    if carried == 0:
        return init[:size]
    assert previous is not None
    if carried == size:
        return previous[:size]
    return torch.cat([previous[:carried], init[carried:size]])


def reference_unroll(
    xw: Tensor,
    layout: SequenceLayout,
    kernel: Tensor,
    step: Tensor | float,
    linear_part: bool,
    h0: Tensor,
    noise: StateNoise,
    *,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """One NRNN layer and direction over a sequence in the packed row layout, with optional noise.

    Args:
        xw: projected inputs ``U x + b`` ``[N, H]`` in ``layout``'s row order.
        kernel, step, linear_part: see :func:`nrnn_step`.
        h0: initial states ``[B, H]`` (samples sorted by length, as the layout).
        noise: per-row coefficients ``[N, H]`` (``h_next = gate * Psi + mult * h + add``), counter-based noise
            or ``None``.
        reverse: process the steps last to first (backward direction).

    Returns:
        ``out`` ``[N, H]`` (the state after every step, noise included) and ``h_n`` ``[B, H]``.
    """
    coefficients = as_coefficients(noise, xw)
    sizes = layout.sizes
    xw_steps = torch.split(xw, sizes)
    noise_steps = coefficients.split(sizes) if coefficients is not None and not coefficients.is_zero else None
    carried = layout.carried_rows(reverse)
    outputs: list[Tensor] = [xw.new_empty(0)] * layout.steps
    previous: Tensor | None = None
    for t in layout.order(reverse):
        h = _entering_state(previous, h0, sizes[t], carried[t])
        h_new = nrnn_step(xw_steps[t], h, kernel, step, linear_part)
        if noise_steps is not None:
            h_new = noise_steps[t].apply(h_new, h)
        outputs[t] = previous = h_new
    out = torch.cat(outputs)
    return out, layout.final_rows(out, reverse)
