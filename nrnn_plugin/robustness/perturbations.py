"""Test-time input perturbations (``docs/robustness.md``), applied to normalised inputs.

=========================  ===========================================================================
``white_noise``            ``x + sigma * z``, ``z ~ N(0, I)``
``multiplicative_noise``   ``x * (1 + sigma * z)``
``salt_and_pepper``        each element with probability ``alpha`` set to the data min or max (half each)
``fgsm``                   ``x + eps * sign(grad_x loss)`` (L-inf, one step)
``pgd``                    projected gradient ascent in the L-inf ball of radius ``eps`` (random start)
=========================  ===========================================================================

Random perturbations take an explicit ``torch.Generator`` and never touch the global RNG; draws are made on
the generator's device and moved to the input's device, so a CPU generator gives the same perturbation for an
input on any device. Adversarial perturbations take ``loss_fn(x) -> scalar`` (the loss to *increase*) and
differentiate it with respect to the input only; the caller decides through which model (the evaluation
runs them through the noise-free model, :func:`nrnn_plugin.robustness.evaluate`). A strength of 0 returns
the input unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "white_noise",
    "multiplicative_noise",
    "salt_and_pepper",
    "fgsm",
    "pgd",
    "input_gradient",
    "Perturbation",
    "PERTURBATIONS",
    "DEFAULT_STRENGTHS",
]

LossFn = Callable[[Tensor], Tensor]


def _check_strength(name: str, value: float, *, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return float(value)


def _check_generator(name: str, generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{name}: generator must be a torch.Generator (explicit seeding), got {type(generator).__name__}"
        )
    return generator


def _randn_like(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def _rand_like(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def white_noise(x: Tensor, sigma: float, *, generator: torch.Generator) -> Tensor:
    """``x + sigma * z`` with ``z ~ N(0, I)`` of ``x``'s shape."""
    sigma = _check_strength("white_noise: sigma", sigma)
    _check_generator("white_noise", generator)
    if sigma == 0.0:
        return x
    return x + sigma * _randn_like(x, generator)


def multiplicative_noise(x: Tensor, sigma: float, *, generator: torch.Generator) -> Tensor:
    """``x * (1 + sigma * z)`` with ``z ~ N(0, I)`` of ``x``'s shape (multiplicative white noise)."""
    sigma = _check_strength("multiplicative_noise: sigma", sigma)
    _check_generator("multiplicative_noise", generator)
    if sigma == 0.0:
        return x
    return x * (1.0 + sigma * _randn_like(x, generator))


def salt_and_pepper(
    x: Tensor,
    alpha: float,
    *,
    generator: torch.Generator,
    low: float | Tensor | None = None,
    high: float | Tensor | None = None,
) -> Tensor:
    """Each element independently, with probability ``alpha``, replaced by ``low`` or ``high`` (half each).

    Args:
        x: input of any shape (``[B, T, F]`` for sequences).
        alpha: fraction of corrupted elements, in ``[0, 1]``.
        low, high: the "pepper" and "salt" values: floats or tensors broadcastable to ``x`` (e.g. per feature
            ``[F]``); default ``x.min()`` / ``x.max()``. Pass the data set's range for batch-independent values.
    """
    alpha = _check_strength("salt_and_pepper: alpha", alpha, maximum=1.0)
    _check_generator("salt_and_pepper", generator)
    if alpha == 0.0:
        return x
    low_t = torch.as_tensor(x.detach().min() if low is None else low, dtype=x.dtype, device=x.device)
    high_t = torch.as_tensor(x.detach().max() if high is None else high, dtype=x.dtype, device=x.device)
    corrupt = _rand_like(x, generator) < alpha
    salt = _rand_like(x, generator) < 0.5
    return torch.where(corrupt, torch.where(salt, high_t, low_t), x)


def input_gradient(loss_fn: LossFn, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(loss, d loss / d x)`` for a detached copy of ``x``; parameter gradients are neither computed nor kept.

    cuDNN is disabled around the computation: its RNN backward refuses to run in eval mode.
    """
    x_var = x.detach().requires_grad_(True)
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        loss = loss_fn(x_var)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {tuple(loss.shape)}")
        (grad,) = torch.autograd.grad(loss, x_var)
    return loss.detach(), grad


def fgsm(loss_fn: LossFn, x: Tensor, eps: float) -> Tensor:
    """Fast gradient sign method: ``x + eps * sign(grad_x loss_fn(x))`` (L-inf budget ``eps``)."""
    eps = _check_strength("fgsm: eps", eps)
    if eps == 0.0:
        return x
    _, grad = input_gradient(loss_fn, x)
    return (x + eps * grad.sign()).detach()


def pgd(
    loss_fn: LossFn,
    x: Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient descent on ``-loss`` in the L-inf ball ``||x' - x||_inf <= eps`` (Madry et al.).

    Args:
        steps: number of signed-gradient steps.
        step_size: per-step size; default ``2.5 * eps / steps``.
        random_start: start from a uniform point of the ball (needs ``generator``); else from ``x``.
    Returns:
        The last iterate, inside the ball.
    """
    eps = _check_strength("pgd: eps", eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"pgd: steps must be an integer >= 1, got {steps!r}")
    if eps == 0.0:
        return x
    alpha = 2.5 * eps / steps if step_size is None else _check_strength("pgd: step_size", step_size)
    x = x.detach()
    if random_start:
        generator = _check_generator("pgd (random_start=True)", generator)
        x_adv = x + eps * (2.0 * _rand_like(x, generator) - 1.0)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        _, grad = input_gradient(loss_fn, x_adv)
        x_adv = x_adv + alpha * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    return x_adv


@dataclass(frozen=True)
class Perturbation:
    """A named perturbation as :func:`~nrnn_plugin.robustness.evaluate` uses it.

    ``apply(x, strength, generator=..., loss_fn=..., low=..., high=..., steps=...)`` dispatches to the function
    with the arguments it needs. ``adversarial`` ones need ``loss_fn``; ``random`` ones a generator.
    """

    name: str
    adversarial: bool
    random: bool
    description: str

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        generator: torch.Generator,
        loss_fn: LossFn | None = None,
        low: float | Tensor | None = None,
        high: float | Tensor | None = None,
        steps: int = 10,
    ) -> Tensor:
        if self.adversarial and loss_fn is None:
            raise ValueError(f"perturbation {self.name!r} is adversarial and needs loss_fn")
        if self.name == "white_noise":
            return white_noise(x, strength, generator=generator)
        if self.name == "multiplicative_noise":
            return multiplicative_noise(x, strength, generator=generator)
        if self.name == "salt_and_pepper":
            return salt_and_pepper(x, strength, generator=generator, low=low, high=high)
        if self.name == "fgsm":
            return fgsm(loss_fn, x, strength)  # type: ignore[arg-type]
        if self.name == "pgd":
            return pgd(loss_fn, x, strength, steps=steps, generator=generator)  # type: ignore[arg-type]
        raise ValueError(f"unknown perturbation {self.name!r}")


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("white_noise", False, True, "x + sigma z"),
        Perturbation("multiplicative_noise", False, True, "x (1 + sigma z)"),
        Perturbation("salt_and_pepper", False, True, "fraction alpha set to data min/max"),
        Perturbation("fgsm", True, False, "FGSM, L-inf eps"),
        Perturbation("pgd", True, True, "PGD, L-inf eps, random start"),
    )
}

#: Default strength grids on normalised (unit-scale) inputs; 0 is the clean input.
DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "white_noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "multiplicative_noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "salt_and_pepper": (0.0, 0.01, 0.02, 0.05, 0.1),
    "fgsm": (0.0, 0.01, 0.02, 0.05, 0.1),
    "pgd": (0.0, 0.01, 0.02, 0.05, 0.1),
}
