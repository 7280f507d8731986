"""The sampling estimators of the explicit regularizer: ``fd`` (antithetic finite differences) and ``jet``.

Accuracy, cost and the dropout and precision rules of both are described in :mod:`nrnn_plugin.regularizer.api`.
Both probe the model with noise forced on (:func:`~nrnn_plugin.regularizer.guards.probe_state` is entered by
the caller) and scale the injected noise with :func:`nrnn_plugin.runtime.noise_control`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nrnn_plugin.layers.kernels import use_kernel
from nrnn_plugin.regularizer.closures import Closure, check_scalar, evaluate, leaves, map_tree, needs_output
from nrnn_plugin.regularizer.guards import GlobalRng, full_precision, has_first_order_term, model_devices, zero_like
from nrnn_plugin.runtime import noise_control, recording, replaying

__all__ = ["fd", "jet", "dot"]

_HALF = (torch.float16, torch.bfloat16)


def dot(first: Sequence[Tensor], second: Sequence[Tensor]) -> Tensor:
    """``sum_i (first_i * second_i).sum()`` as a 0-dim tensor."""
    total = first[0].new_zeros(())
    for a, b in zip(first, second):
        total = total + (a * b).sum()
    return total


def fd(model: nn.Module, closure: Closure, probes: int, terms: str, eta: float, clean_loss: Tensor | None) -> Tensor:
    """The antithetic finite-difference estimate (see :mod:`nrnn_plugin.regularizer.api`)."""
    devices = model_devices(model)
    rng = GlobalRng(devices)
    total: Tensor | float = 0.0
    clean = clean_loss
    with full_precision(devices):
        for _ in range(probes):
            rng.restore()
            with recording(model) as tapes, noise_control(model, scale=eta):
                plus = evaluate(closure)
            _refuse_half(plus.loss)
            rng.restore()
            with replaying(model, tapes), noise_control(model, scale=-eta):
                minus = evaluate(closure)
            if terms == "R":
                output_plus, loss_fn = needs_output(plus)
                middle = map_tree(lambda a, b: 0.5 * (a + b), output_plus, minus.output)
                gap = plus.loss + minus.loss - 2.0 * check_scalar(loss_fn(middle))
            else:
                if clean is None:
                    rng.restore()
                    zero_scale = torch.zeros((), device=plus.loss.device)
                    with replaying(model, tapes), noise_control(model, scale=zero_scale):
                        clean = evaluate(closure).loss
                gap = plus.loss + minus.loss - 2.0 * clean
            total = total + gap
        assert isinstance(total, Tensor)  # probes >= 1
        value = total / (2.0 * eta * eta * probes)
        if terms == "R+Q" and has_first_order_term(model):
            with noise_control(model, mean=True):
                rng.restore()
                with noise_control(model, scale=eta):
                    mean_plus = evaluate(closure).loss
                rng.restore()
                with noise_control(model, scale=-eta):
                    mean_minus = evaluate(closure).loss
            value = value + (mean_plus - mean_minus) / (2.0 * eta)
    return value


def _refuse_half(loss: Tensor) -> None:
    if loss.dtype in _HALF:
        raise ValueError(
            f"explicit_regularizer: estimator 'fd' needs a float32 or float64 loss (finite differences of "
            f"{loss.dtype} losses cancel catastrophically), got {loss.dtype}; compute the loss in float32 or "
            "use estimator='jet'"
        )


def jet(model: nn.Module, closure: Closure, probes: int, terms: str) -> Tensor:
    """The second directional derivative in the probe scale, by double backward (see :mod:`.api`)."""
    create_graph = torch.is_grad_enabled()
    # the scale's dtype is the gradients' accumulation dtype: at least float32, float64 for float64 models
    reference = zero_like(model)
    dtype = torch.promote_types(reference.dtype, torch.float32)
    device = reference.device
    total: Tensor | float = 0.0
    with torch.enable_grad(), use_kernel("reference"), _double_backward_hint():
        for _ in range(probes):
            scale = torch.zeros((), device=device, dtype=dtype, requires_grad=True)
            with noise_control(model, scale=scale):
                evaluation = evaluate(closure)
            if terms == "R":
                output, _ = needs_output(evaluation)
                tangent = _output_tangent(output, scale)
                total = total + _curvature(evaluation.loss, output, tangent, create_graph)
            else:
                total = total + _second_derivative(evaluation.loss, scale, create_graph)
        assert isinstance(total, Tensor)  # probes >= 1
        value = total / (2.0 * probes)
        if terms == "R+Q" and has_first_order_term(model):
            scale = torch.zeros((), device=device, dtype=dtype, requires_grad=True)
            with noise_control(model, mean=True, scale=scale):
                mean_loss = evaluate(closure).loss
            (slope,) = torch.autograd.grad(mean_loss, scale, create_graph=create_graph, allow_unused=True)
            if slope is not None:
                value = value + slope
    return value if create_graph else value.detach()


def _second_derivative(loss: Tensor, scale: Tensor, create_graph: bool) -> Tensor:
    """``d^2 loss / d scale^2`` by double backward (``0`` where the loss does not depend on ``scale``)."""
    (slope,) = torch.autograd.grad(loss, scale, create_graph=True, allow_unused=True)
    if slope is None or not slope.requires_grad:
        return loss.new_zeros(())
    (curvature,) = torch.autograd.grad(slope, scale, create_graph=create_graph, allow_unused=True)
    return loss.new_zeros(()) if curvature is None else curvature


def _output_tangent(output: Any, scale: Tensor) -> list[Tensor]:
    """``d output / d scale`` (one tensor per output leaf) by the double-backward trick: ``v . dy/ds`` is linear
    in a dummy cotangent ``v``; its gradient in ``v`` is the tangent."""
    outputs = list(leaves(output))
    dummies = [torch.zeros_like(y, requires_grad=True) for y in outputs]
    (pulled,) = torch.autograd.grad(outputs, scale, dummies, create_graph=True, allow_unused=True)
    if pulled is None:
        return [torch.zeros_like(y) for y in outputs]
    tangents = torch.autograd.grad(pulled, dummies, create_graph=True, allow_unused=True)
    return [torch.zeros_like(y) if t is None else t for y, t in zip(outputs, tangents)]


def _curvature(loss: Tensor, output: Any, tangents: Sequence[Tensor], create_graph: bool) -> Tensor:
    """``u^T H u`` with ``H`` the Hessian of ``loss`` w.r.t. the output leaves (Hessian-vector product)."""
    outputs = list(leaves(output))
    gradients = torch.autograd.grad(loss, outputs, create_graph=True, allow_unused=True)
    pairs = [(g, y, u) for g, y, u in zip(gradients, outputs, tangents) if g is not None and g.requires_grad]
    if not pairs:
        return loss.new_zeros(())
    curved = torch.autograd.grad(
        [g for g, _, _ in pairs],
        [y for _, y, _ in pairs],
        [u for _, _, u in pairs],
        create_graph=create_graph,
        allow_unused=True,
    )
    return dot(
        [c if c is not None else torch.zeros_like(u) for c, (_, _, u) in zip(curved, pairs)], [u for _, _, u in pairs]
    )


@contextlib.contextmanager
def _double_backward_hint() -> Iterator[None]:
    try:
        yield
    except (RuntimeError, NotImplementedError) as exc:
        text = str(exc).lower()
        if "double backward" in text or "twice" in text or "not implemented" in text:
            raise RuntimeError(
                "explicit_regularizer: estimator 'jet' differentiates the closure twice (double backward) and an "
                f"operation does not support it ({exc}); use estimator='fd'"
            ) from exc
        raise
