"""The exact oracle of the explicit regularizer (estimator ``"exact"``): tiny models, the tests' ground truth.

With the coefficients of one draw as variables ``c`` (``[gate - 1 | mult | add]`` per state, row and unit) and
``F(c)`` the loss with them injected, the expected change of the loss to second order is
``grad F(0) . mu + (tr(Hess F(0) Sigma) + mu^T Hess F(0) mu) / 2`` with the exact mean ``mu`` and covariance
``Sigma = sum_k f_k f_k^T`` of the built-in schemes' coefficients. The coefficients enter as zero leaves that
require grad (a scheme whose draws *are* the coefficients, fed by a tape of leaves); the traces are Hessian-vector
products, one per noise coordinate, vectorised in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nrnn_plugin.diffusion import AffineNoise, Diffusion, EulerMaruyama, Milstein, ReferenceScheme
from nrnn_plugin.layers.kernels import use_kernel
from nrnn_plugin.noise import NoiseTape
from nrnn_plugin.regularizer.closures import Closure, evaluate, needs_output
from nrnn_plugin.regularizer.closures import leaves as tree_leaves
from nrnn_plugin.regularizer.estimators import dot
from nrnn_plugin.regularizer.guards import zero_like
from nrnn_plugin.runtime import noise_control, noise_runtimes, replaying

__all__ = ["exact"]


@dataclass
class _Moments:
    """Mean and covariance factors of the coefficient vector ``[gate - 1, mult, add]`` (``[3, H]``) of one row.

    ``mean``: ``[3, H]``; ``factors``: ``[K, 3, H]`` with covariance ``sum_k f_k f_k^T``.
    """

    mean: Tensor
    factors: Tensor


def _moments(diffusion: Diffusion, hidden: int, dtype: torch.dtype, device: torch.device) -> _Moments:
    """Exact first and second moments of the built-in schemes' coefficients (see nrnn_plugin.diffusion)."""
    kind = type(diffusion)
    mean = torch.zeros(3, hidden, dtype=dtype, device=device)
    factors: list[Tensor] = []
    sa, sm, dt = diffusion.sigma_add, diffusion.sigma_mult, diffusion.dt
    shared = diffusion.shared and sm > 0.0
    eye = torch.eye(hidden, dtype=dtype, device=device)

    def unit_factors(gate: float, mult: float, add: float) -> None:
        """One factor per unit with the given per-unit loadings on (gate - 1, mult, add)."""
        if gate == mult == add == 0.0:
            return
        block = torch.stack([gate * eye, mult * eye, add * eye], dim=1)  # [H(factor), 3, H]
        factors.append(block)

    def shared_factor(gate: float, mult: float) -> None:
        ones = torch.ones(hidden, dtype=dtype, device=device)
        factors.append(torch.stack([gate * ones, mult * ones, 0.0 * ones]).unsqueeze(0))

    if kind is EulerMaruyama:
        root = math.sqrt(dt)
        unit_factors(0.0, 0.0, root * sa)
        if sm > 0.0:
            if shared:
                shared_factor(0.0, root * sm)
            else:
                unit_factors(0.0, root * sm, 0.0)
    elif kind is Milstein:
        # one Gaussian xi per unit: (mult, add) = a xi + b (xi^2 - 1), Var(xi^2 - 1) = 2, E[xi (xi^2 - 1)] = 0
        root = math.sqrt(dt)
        unit_factors(0.0, root * sm, root * sa)
        if sm > 0.0:
            b = 0.5 * dt * math.sqrt(2.0)
            unit_factors(0.0, b * sm * sm, b * sa * sm)
    elif kind is ReferenceScheme:
        unit_factors(0.0, 0.0, sa)
        if sm > 0.0:
            # step = dt (1 - sm U), U ~ U[0, 1]: gate - 1 = step - 1, mult = 1 - step
            mean_step = dt * (1.0 - 0.5 * sm)
            std_step = dt * sm / math.sqrt(12.0)
            mean[0] = mean_step - 1.0
            mean[1] = 1.0 - mean_step
            if shared:
                shared_factor(std_step, -std_step)
            else:
                unit_factors(std_step, -std_step, 0.0)
        elif dt != 1.0:
            mean[0] = dt - 1.0
            mean[1] = 1.0 - dt
    else:
        raise ValueError(
            f"explicit_regularizer: estimator 'exact' knows the noise moments of the built-in schemes "
            f"(euler_maruyama, milstein, reference), not of {kind.__module__}.{kind.__qualname__}; use "
            "estimator='jet' or 'fd'"
        )
    stacked = torch.cat(factors) if factors else torch.zeros(0, 3, hidden, dtype=dtype, device=device)
    return _Moments(mean, stacked)


class _CoefficientDiffusion(Diffusion):
    """A scheme whose draws *are* the coefficients: ``[gate - 1 | mult | add]`` per state (width ``3H``)."""

    name = "coefficients"

    def __init__(self, original: Diffusion) -> None:
        super().__init__(original.config)
        self.original = original
        self.hidden: int | None = None

    @property
    def is_additive(self) -> bool:
        return False

    @property
    def is_zero(self) -> bool:
        return False

    def width(self, hidden_size: int) -> int:
        self.hidden = hidden_size  # read by the tape of the draw that follows
        return 3 * hidden_size

    def coefficients(self, draws: Tensor, hidden_size: int) -> AffineNoise:
        h = hidden_size
        return AffineNoise(1.0 + draws[:, :h], draws[:, h : 2 * h], draws[:, 2 * h :])


class _LeafTape(NoiseTape):
    """Hands out zero coefficient tensors that require grad (the variables of ``F(c)``) and keeps them."""

    def __init__(self, diffusion: _CoefficientDiffusion) -> None:
        super().__init__()
        self.diffusion = diffusion
        self.leaves: list[Tensor] = []
        self.hidden: list[int] = []

    def next(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
        leaf = torch.zeros(tuple(shape), device=device, dtype=dtype, requires_grad=True)
        assert self.diffusion.hidden is not None
        self.draws.append(leaf)
        self.leaves.append(leaf)
        self.hidden.append(self.diffusion.hidden)
        return leaf


def exact(model: nn.Module, closure: Closure, terms: str) -> Tensor:
    """The deterministic oracle ``grad F(0) . mu + (tr(Hess F(0) Sigma) + mu^T Hess F(0) mu) / 2`` (tiny models)."""
    create_graph = torch.is_grad_enabled()
    names = [name for name, _ in noise_runtimes(model)]
    with noise_control(model, scheme=_CoefficientDiffusion) as runtimes:
        schemes = {name: runtime.diffusion() for name, runtime in zip(names, runtimes)}
        tapes = {
            name: _LeafTape(scheme) for name, scheme in schemes.items() if isinstance(scheme, _CoefficientDiffusion)
        }
        with torch.enable_grad(), use_kernel("reference"), replaying(model, tapes):
            evaluation = evaluate(closure)
            leaves_: list[Tensor] = []
            means: list[Tensor] = []
            blocks: list[tuple[int, Tensor]] = []  # (leaf index, moments) for every draw
            for tape in tapes.values():
                for leaf, hidden in zip(tape.leaves, tape.hidden):
                    moments = _moments(tape.diffusion.original, hidden, leaf.dtype, leaf.device)
                    index = len(leaves_)
                    leaves_.append(leaf)
                    # leaf [..., targets * 3H]: every leading index and target is an independent row
                    view_shape = (*leaf.shape[:-1], leaf.shape[-1] // (3 * hidden), 3, hidden)
                    means.append(moments.mean.expand(view_shape).reshape(leaf.shape))
                    blocks.append((index, moments.factors))
            if not leaves_:
                return zero_like(model)
            if terms == "R":
                output, _ = needs_output(evaluation)
                value = _exact_gauss_newton(output, evaluation.loss, leaves_, means, blocks, create_graph)
            else:
                value = _exact_full(evaluation.loss, leaves_, means, blocks, create_graph)
    return value if create_graph else value.detach()


def _row_vectors(leaf: Tensor, factors: Tensor) -> Iterator[Tensor]:
    """Every covariance factor (``[K, 3, H]``) placed at every independent row of ``leaf`` (zeros elsewhere)."""
    hidden = factors.shape[-1]
    rows = leaf.numel() // (3 * hidden)
    for row in range(rows):
        for factor in factors:
            vector = leaf.new_zeros(rows, 3 * hidden)
            vector[row] = factor.reshape(-1)
            yield vector.reshape(leaf.shape)


_HVP_CHUNK = 256  # Hessian-vector products per vectorised backward


def _exact_full(
    loss: Tensor, leaves: list[Tensor], means: list[Tensor], blocks: list[tuple[int, Tensor]], create_graph: bool
) -> Tensor:
    grads = torch.autograd.grad(loss, leaves, create_graph=True)

    second = loss.new_zeros(())
    for index, factors in blocks:
        vectors = list(_row_vectors(leaves[index], factors))
        for start in range(0, len(vectors), _HVP_CHUNK):
            batch = torch.stack(vectors[start : start + _HVP_CHUNK])
            (products,) = torch.autograd.grad(
                grads[index], leaves[index], batch, retain_graph=True, create_graph=create_graph, is_grads_batched=True
            )
            second = second + (products * batch).sum()
    first = loss.new_zeros(())
    if any(bool(m.any()) for m in means):
        first = dot(grads, means)
        mean_hv = torch.autograd.grad(first, leaves, retain_graph=True, create_graph=create_graph)
        second = second + dot(mean_hv, means)
    return first + 0.5 * second


def _exact_gauss_newton(
    output: Any,
    loss: Tensor,
    leaves: list[Tensor],
    means: list[Tensor],
    blocks: list[tuple[int, Tensor]],
    create_graph: bool,
) -> Tensor:
    """``(sum_k (J f_k)^T H (J f_k) + (J mu)^T H (J mu)) / 2``: ``J = dy/dc``, ``H`` = Hessian of the loss in ``y``.

    ``J f`` by the double-backward trick (``J^T v`` is linear in a dummy ``v``), ``H u`` by a second backward of
    the loss gradient; both vectorised over the factors of one draw.
    """
    outputs = list(tree_leaves(output))
    loss_grads = torch.autograd.grad(loss, outputs, create_graph=True)
    dummies = [torch.zeros_like(y, requires_grad=True) for y in outputs]
    pulled = torch.autograd.grad(outputs, leaves, dummies, create_graph=True, allow_unused=True)

    def quadratic(index: int | None, directions: Tensor | list[Tensor], batched: bool) -> Tensor:
        if index is None:  # all leaves at once (the mean)
            inner = dot([p for p in pulled if p is not None], [d for p, d in zip(pulled, directions) if p is not None])
            tangents = torch.autograd.grad(inner, dummies, retain_graph=True, create_graph=True, allow_unused=True)
        else:
            if pulled[index] is None:
                return loss.new_zeros(())
            tangents = torch.autograd.grad(
                pulled[index],
                dummies,
                directions,
                retain_graph=True,
                create_graph=True,
                allow_unused=True,
                is_grads_batched=batched,
            )
        tangents = tuple(torch.zeros_like(y) if t is None else t for y, t in zip(outputs, tangents))
        curved = torch.autograd.grad(
            loss_grads, outputs, tangents, retain_graph=True, create_graph=create_graph, is_grads_batched=batched
        )
        return dot(curved, tangents)

    total = loss.new_zeros(())
    for index, factors in blocks:
        vectors = list(_row_vectors(leaves[index], factors))
        for start in range(0, len(vectors), _HVP_CHUNK):
            total = total + quadratic(index, torch.stack(vectors[start : start + _HVP_CHUNK]), True)
    if any(bool(m.any()) for m in means):
        total = total + quadratic(None, means, False)
    return 0.5 * total
