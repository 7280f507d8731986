"""The NRNN recursion over a sequence: which kernel runs, and the Python kernel with a hand-written backward.

``unroll`` runs one layer and direction of :class:`~nrnn_plugin.layers.nrnn.NRNN` in the packed row layout of
:mod:`.layout`: the compiled kernel (:mod:`nrnn_plugin.compiled`, CPU, the noise generated inside it) where the
kernel choice allows it; otherwise padded (uniform-length) input runs :class:`NRNNSequence` (no autograd graph
in the loop, one recurrent GEMM per step, the weight gradient as one GEMM over all steps); packed input, noise
coefficients that require grad, ``torch.func`` transforms, forward-mode AD and ``use_kernel("reference")`` run
the plain autograd unroll (:mod:`.nrnn_reference`). All compute the same recursion.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nrnn_plugin.compiled import kernels as compiled
from nrnn_plugin.counter_noise import StateNoise, as_coefficients
from nrnn_plugin.diffusion import AffineNoise
from nrnn_plugin.layers.choice import compiled_allowed, current_kernel
from nrnn_plugin.layers.double_backward import differentiable_grads, wants_graph
from nrnn_plugin.layers.functions import needs_reference
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.nrnn_reference import nrnn_step, reference_unroll

__all__ = ["nrnn_step", "unroll", "NRNNSequence"]


def unroll(
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
    """One NRNN layer and direction over a sequence: the contract of :func:`.nrnn_reference.reference_unroll`.

    Runs the compiled kernel where the current choice allows it (CPU, float32/float64), else
    :class:`NRNNSequence` for padded input, else the autograd unroll (see the module docstring).
    """
    if current_kernel() != "reference" and not needs_reference(noise) and not _capturing():
        if compiled_allowed() and compiled.nrnn_applies(xw, kernel, step):
            return compiled.nrnn(xw, layout, kernel, step, h0, noise, reverse)
        if layout.uniform:
            return _sequence_kernel(xw, layout, kernel, step, linear_part, h0, as_coefficients(noise, xw), reverse)
    return reference_unroll(xw, layout, kernel, step, linear_part, h0, noise, reverse=reverse)


def _capturing() -> bool:
    """Under ``torch.jit.trace``, ``torch.export`` or ``torch.onnx.export``: the plain autograd ops are exported."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def _step_coefficient(coef: Tensor | float | None, steps: int, batch: int) -> Tensor | float | None:
    """A noise coefficient as ``[T, B, H or 1]`` (per-row tensors) or unchanged (numbers, 0-dim tensors)."""
    if isinstance(coef, Tensor) and coef.dim() == 2:
        return coef.view(steps, batch, coef.shape[1])
    return coef


def _sequence_kernel(
    xw: Tensor,
    layout: SequenceLayout,
    kernel: Tensor,
    step: Tensor | float,
    linear_part: bool,
    h0: Tensor,
    noise: AffineNoise | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`unroll` for a uniform layout through :class:`NRNNSequence` (time reversed for ``reverse``)."""
    steps, batch = layout.steps, layout.batch
    x = xw.view(steps, batch, xw.shape[1])
    coefs = (
        [None, None, None]
        if noise is None
        else [_step_coefficient(c, steps, batch) for c in (noise.gate, noise.mult, noise.add)]
    )
    if reverse:
        x = x.flip(0)
        coefs = [c.flip(0) if isinstance(c, Tensor) and c.dim() == 3 else c for c in coefs]
    out = NRNNSequence.apply(x, h0, kernel, step, linear_part, *coefs)
    h_n = out[-1]
    if reverse:
        out = out.flip(0)
    return out.reshape(steps * batch, out.shape[2]), h_n


def _at(coef: Tensor | float | None, t: int) -> Tensor | float | None:
    return coef[t] if isinstance(coef, Tensor) and coef.dim() == 3 else coef


def _reference_sequence(
    xw: Tensor,
    h0: Tensor,
    kernel: Tensor,
    step: Tensor | float,
    linear_part: bool,
    gate: Tensor | float | None,
    mult: Tensor | float | None,
    add: Tensor | float | None,
) -> Tensor:
    """:class:`NRNNSequence`'s recursion with autograd ops (``[T, B, H]`` coefficients or numbers): ``[T, B, H]``."""
    h, outs = h0, []
    for t in range(xw.shape[0]):
        psi = nrnn_step(xw[t], h, kernel, step, linear_part)
        noise = AffineNoise(_at(gate, t), _at(mult, t), _at(add, t))
        h = noise.apply(psi, h)
        outs.append(h)
    return torch.stack(outs)


class NRNNSequence(torch.autograd.Function):
    """The NRNN recursion over a whole padded sequence with a hand-written backward (BPTT).

    ``forward(xw [T, B, H], h0 [B, H], kernel [K H, H], step (float or [H]), linear_part, gate, mult, add)``
    returns the states after every step ``[T, B, H]``: ``h_{t+1} = gate_t * Psi(h_t) + mult_t * h_t + add_t``
    with ``Psi`` from :func:`nrnn_step`. Noise coefficients are ``None``, numbers, 0-dim tensors or
    ``[T, B, H or 1]`` tensors, treated as constants. Gradients flow to ``xw``, ``h0``, ``kernel`` and a tensor
    ``step``; double backward recomputes through the autograd recursion (:mod:`.double_backward`).
    """

    @staticmethod
    def forward(
        ctx: Any,
        xw: Tensor,
        h0: Tensor,
        kernel: Tensor,
        step: Tensor | float,
        linear_part: bool,
        gate: Tensor | float | None,
        mult: Tensor | float | None,
        add: Tensor | float | None,
    ) -> Tensor:
        steps, _, hidden = xw.shape
        out = xw.new_empty(xw.shape)
        acts = xw.new_empty(xw.shape)  # tanh(W h + U x + b) per step
        learn_step = isinstance(step, Tensor) and step.requires_grad
        drifts = xw.new_empty(xw.shape) if learn_step else None
        kernel_t = kernel.t()
        h = h0
        for t in range(steps):
            z = torch.mm(h, kernel_t)
            if linear_part:
                u = torch.tanh(torch.add(z[:, hidden:], xw[t]), out=acts[t])
                if drifts is not None:
                    f = torch.add(z[:, :hidden], u, out=drifts[t])
                else:
                    f = z[:, :hidden].add_(u)
            else:
                u = torch.tanh(z.add_(xw[t]), out=acts[t])
                f = u
                if drifts is not None:
                    drifts[t].copy_(u)
            g, m, a = _at(gate, t), _at(mult, t), _at(add, t)
            h_next = out[t]
            if isinstance(step, Tensor):
                torch.addcmul(h, f, step, out=h_next)
            else:
                torch.add(h, f, alpha=step, out=h_next)
            if g is not None:
                h_next.mul_(g)
            if isinstance(m, Tensor):
                h_next.addcmul_(h, m)
            elif m is not None:
                h_next.add_(h, alpha=m)
            if a is not None:
                h_next.add_(a)
            h = h_next
        ctx.linear_part = linear_part
        ctx.step_value = step if not isinstance(step, Tensor) else None
        ctx.coefs = (gate, mult, add)
        # xw: for double backward only
        ctx.save_for_backward(h0, kernel, out, acts, drifts, step if isinstance(step, Tensor) else None, xw)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        h0, kernel, out, acts, drifts, step_tensor, xw = ctx.saved_tensors
        if wants_graph():  # create_graph=True: differentiable gradients through the autograd recursion
            step_arg = step_tensor if step_tensor is not None else ctx.step_value
            coefs = [c.detach() if isinstance(c, Tensor) else c for c in ctx.coefs]
            with torch.enable_grad():
                again = _reference_sequence(xw, h0, kernel, step_arg, ctx.linear_part, *coefs)
                grads = differentiable_grads(
                    (again,), (grad_out,), (xw, h0, kernel, step_tensor), ctx.needs_input_grad[:4]
                )
            return (*grads, None, None, None, None)
        gate, mult, _ = ctx.coefs
        step = step_tensor if step_tensor is not None else ctx.step_value
        steps, batch, hidden = out.shape
        width = kernel.shape[0]
        grad_z = out.new_empty(steps, batch, width)  # d loss / d (h_t K^T), per step
        grad_psi = out.new_empty(out.shape) if drifts is not None else None
        # d Psi / d pre = step * tanh'(pre) = step * (1 - u^2), for all steps at once
        act_grad = torch.mul(acts, acts).neg_().add_(1.0).mul_(step)
        g_state = torch.zeros_like(h0)  # d loss / d h_{t+1} flowing from later steps
        linear_part = ctx.linear_part
        for t in range(steps - 1, -1, -1):
            g_total = g_state + grad_out[t]
            g_coef = _at(gate, t)
            dpsi = g_total * g_coef if g_coef is not None else g_total
            if grad_psi is not None:
                grad_psi[t] = dpsi
            if linear_part:
                torch.mul(dpsi, step, out=grad_z[t, :, :hidden])
                torch.mul(dpsi, act_grad[t], out=grad_z[t, :, hidden:])
            else:
                torch.mul(dpsi, act_grad[t], out=grad_z[t])
            g_state = torch.addmm(dpsi, grad_z[t], kernel)
            m_coef = _at(mult, t)
            if m_coef is not None:
                g_state.add_(g_total * m_coef)
        grad_x = grad_z[:, :, hidden:] if linear_part else grad_z
        grad_h0 = g_state if ctx.needs_input_grad[1] else None
        grad_kernel = None
        if ctx.needs_input_grad[2]:
            h_in = torch.cat([h0.unsqueeze(0), out[:-1]]).reshape(steps * batch, hidden)
            grad_kernel = torch.mm(grad_z.reshape(steps * batch, width).t(), h_in)
        grad_step = None
        if step_tensor is not None and ctx.needs_input_grad[3]:
            grad_step = (grad_psi * drifts).sum(dim=(0, 1))
        return (
            grad_x.contiguous() if ctx.needs_input_grad[0] else None,
            grad_h0,
            grad_kernel,
            grad_step,
            None,
            None,
            None,
            None,
        )
