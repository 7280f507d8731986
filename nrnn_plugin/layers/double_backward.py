"""Double backward through the fast kernels: recompute through the autograd reference with the same noise.

The hand-written backward passes (:mod:`.functions`, :mod:`.nrnn_kernel`, the compiled operators) are not
themselves differentiable. When autograd asks for a differentiable gradient (``create_graph=True``: gradient
penalties, pytorch-forecasting's monotone constraints, the regularizer's ``jet``), grad mode is on inside
``backward``; the kernels then recompute their layer-direction through the differentiable reference
(:func:`~nrnn_plugin.layers.reference.reference_unroll`) with the same noise coefficients and return
``torch.autograd.grad(..., create_graph=True)`` of the recomputation. The saved inputs are the original,
graph-connected tensors, so the gradients are differentiable functions of the inputs, the weights, the initial
states and the incoming gradients. The first-order path is unchanged; the recomputation costs one reference
forward and its graph per layer-direction, only when a graph is requested.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nrnn_plugin.diffusion import AffineNoise
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.reference import reference_unroll
from nrnn_plugin.layers.signature import LayerPass, LayerWeights

__all__ = ["wants_graph", "reference_noise", "differentiable_grads", "recompute_sequence_grads"]


def wants_graph() -> bool:
    """True inside a ``backward`` that must return differentiable gradients (``create_graph=True``)."""
    return torch.is_grad_enabled()


def _coefficient(c: Tensor | None, rows: int) -> Tensor | None:
    """A kernel coefficient ``[N, H]``, ``[N, 1]`` or ``[1, 1]`` as the reference takes it (``[1, 1]`` -> 0-dim)."""
    if c is None:
        return None
    c = c.detach()  # constants for the kernels (coefficients that require grad take the reference path)
    return c.reshape(()) if c.dim() == 2 and c.shape[0] == 1 and rows != 1 else c


def reference_noise(gate: Tensor | None, mult: Tensor | None, add: Tensor | None, rows: int) -> AffineNoise | None:
    """Kernel coefficient tensors (``[N, H]``, ``[N, 1]``, ``[1, 1]`` or ``None``) back to :class:`AffineNoise`."""
    gate, mult, add = (_coefficient(c, rows) for c in (gate, mult, add))
    if gate is None and mult is None and add is None:
        return None
    return AffineNoise(gate, mult, add)


def differentiable_grads(
    outputs: Sequence[Tensor | None],
    grads: Sequence[Tensor | None],
    inputs: Sequence[Tensor | None],
    needs: Sequence[bool],
) -> list[Tensor | None]:
    """``autograd.grad(outputs, inputs, grads, create_graph=<grad mode>)`` for the inputs in ``needs``.

    Needed inputs that the outputs do not depend on get zeros; the others get ``None``.
    """
    pairs = [(o, g) for o, g in zip(outputs, grads) if o is not None and g is not None and o.requires_grad]
    wanted = [(i, t) for i, (t, n) in enumerate(zip(inputs, needs)) if n and t is not None]
    result: list[Tensor | None] = [None] * len(inputs)
    got: Sequence[Tensor | None] = [None] * len(wanted)
    if pairs and wanted:
        got = torch.autograd.grad(
            [o for o, _ in pairs],
            [t for _, t in wanted],
            [g for _, g in pairs],
            create_graph=torch.is_grad_enabled(),
            allow_unused=True,
        )
    for (i, t), g in zip(wanted, got):
        result[i] = g if g is not None else torch.zeros_like(t)
    return result


def recompute_sequence_grads(
    mode: str,
    layout: SequenceLayout,
    reverse: bool,
    inputs: Sequence[Tensor | None],
    noise_h: AffineNoise | None,
    noise_c: AffineNoise | None,
    grads: Sequence[Tensor | None],
    needs: Sequence[bool],
) -> list[Tensor | None]:
    """Gradients of ``inputs = (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)`` through the reference recomputation."""
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = inputs
    assert x is not None and w_ih is not None and w_hh is not None and h0 is not None
    with torch.enable_grad():
        weights = LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr)
        out, h_n, c_n = reference_unroll(mode, LayerPass(x, layout, weights, h0, c0, noise_h, noise_c, reverse))
        return differentiable_grads((out, h_n, c_n), grads, inputs, needs)
