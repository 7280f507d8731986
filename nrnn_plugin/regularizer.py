"""The explicit regularizer: the small-noise expansion of noise injection as a loss term (THEORY.md section 3).

Notation. For a model with noisy layers, let ``c`` be the noise coefficients of one draw (for every noisy module,
time step, sample and unit: ``gate - 1``, ``mult`` and ``add`` of :class:`~nrnn_plugin.diffusion.AffineNoise`)
and ``F(c)`` the loss computed with them injected; ``F(0)`` is the noise-free loss. The regularizer probes scale
the injected noise by ``s`` around the noise-free step (:func:`nrnn_plugin.runtime.noise_scale`), so the loss of a
probe is ``L(s) = F(s c)``: ``L(1)`` is a noisy training forward, ``L(0)`` the clean one. Then::

    E[L(1)] - L(0) = E[L'(0)] + E[L''(0)] / 2 + O(eps^3),      E[L''(0)] = R + Q   (eps^2 absorbed in c)

``E[L'(0)] = grad F(0) . E[c]`` vanishes for the unbiased schemes (Euler-Maruyama, Milstein) and is the
*first-order term* of biased ones (``scheme="reference"``, :attr:`~nrnn_plugin.diffusion.Diffusion.biased`),
computed from :meth:`~nrnn_plugin.diffusion.Diffusion.mean_coefficients` (``runtime.use_mean``), never sampled.
``R`` is the Gauss-Newton part ``E[u^T H u]`` (``u = dy/ds`` the tangent of the closure's outputs ``y``, ``H`` the
Hessian of the loss w.r.t. ``y``: ``>= 0`` for a loss convex in ``y``); ``Q = E[g . d^2y/ds^2]`` is the part
from the curvature of the recurrence (zero for a linear cell with unbiased noise).

Estimators. Each returns a 0-dim tensor, differentiable w.r.t. the parameters. Costs are counted in passes of
the closure (``F`` = one forward) before the training backward, which then runs through every graph built:

* ``fd``: ``(L(+eta) + L(-eta) - 2 L(0)) / (2 eta^2)`` with one draw recorded at ``+eta`` and replayed at
  ``-eta`` and ``0`` (:func:`nrnn_plugin.noise.recording` / ``replaying``), averaged over ``probes``. Biased
  schemes add ``(L_mean(eta) - L_mean(-eta)) / (2 eta)``. Works on any model and with the fast kernels. Cost:
  ``2 probes + 1`` F (``2 probes`` when ``clean_loss`` is given), ``+2`` F for biased schemes; the backward
  runs through each of them. In mode ``"regularizer"`` with the default weight 1, :func:`regularized_loss`
  and :func:`training_step` drop the clean pass from the backward (its net weight in the total is 0), so a
  regularized step is one noise-free forward plus ``2 probes`` noisy forward/backward passes: about
  ``0.4 + 2 r`` plain steps (``r`` = noisy/plain cost of a forward/backward pass).
* ``jet``: ``L''(0) / 2`` for each drawn path by double backward in the 0-dim probe scale ``s``
  (:func:`nrnn_plugin.runtime.noise_scale` with a tensor), through the autograd kernel
  (``use_kernel("reference")``); exact for the path, unbiased for ``(R + Q) / 2``. Biased schemes add
  ``L_mean'(0)``. Cost per probe: one F on the autograd kernel and two backward passes through it (the
  training backward then differentiates those): about 5-15 plain steps on CPU.
* ``exact``: ``grad F(0) . mu + (tr(Hess F(0) Sigma) + mu^T Hess F(0) mu) / 2`` with the exact mean ``mu`` and
  covariance ``Sigma = sum_k f_k f_k^T`` of the coefficients of the built-in schemes; deterministic,
  ``probes`` is ignored. Cost: one F, then one Hessian-vector product per noise coordinate (``rows * H``
  per state, vectorised in chunks of 256): tiny models only (the test oracle).

``fd`` with the default ``eta = 1`` probes at the configured noise level itself: then
``(L(1) + L(-1)) / 2 - L(0)`` is the antithetic estimate of ``E[L(1)] - L(0)`` (all even orders, exactly unbiased
for the symmetric Euler-Maruyama noise), which differs from the second-order value ``(R + Q) / 2`` by
``O(eps^4)``; a smaller ``eta`` approaches the pure second-order term (error ``O(eta^2 eps^4)``) at the price of
cancellation: keep the probes in float32 or float64 (autocast is switched off inside; half-precision losses are
refused).

``terms="R"`` needs the outputs: the closure then returns ``(output, loss_fn)`` with ``loss_fn(output)`` the scalar
loss and ``output`` a tensor or a tuple/list/dict of tensors. The split between ``R`` and ``Q`` depends on where
that boundary is drawn (THEORY.md puts it at the hidden states; with a linear read-out, logits are equivalent).
``fd`` computes ``R`` as a Jensen gap ``(l(y+) + l(y-) - 2 l((y+ + y-)/2)) / (2 eta^2)``, non-negative for
convex ``l``; ``jet`` as ``u^T H u / 2`` with ``u = dy/ds`` (double-backward trick) and a Hessian-vector
product of the loss in ``y``. The first-order term of biased schemes is
not part of ``R`` (it has either sign); ``terms="R+Q"`` includes it.

Dropout. ``fd`` runs the closure several times; the global RNG (CPU and the model's CUDA devices) is restored
before each pass so that every pass draws the same dropout masks. A ``clean_loss`` computed earlier by the
caller used other masks, so :func:`regularized_loss` only reuses it when the model has no active dropout
module (dropout applied with ``torch.nn.functional`` inside ``forward`` cannot be detected: use an eval-mode
closure, or do not pass the loss). ``jet`` and ``exact`` evaluate the closure once per probe and are not
affected.

The closure must only compute the loss with ``model`` (no ``backward()``, no ``zero_grad()``, no optimizer
step). Runtime state (``override``, ``probe_scale``, ``use_mean``, the kernel choice) is restored afterwards;
the noise streams advance (every call draws fresh probes). Results of the ``nrnn_regularizer_terms`` hook are
added to the value.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from nrnn_plugin.config import ESTIMATORS, NoiseConfig
from nrnn_plugin.diffusion import AffineNoise, Diffusion, EulerMaruyama, Milstein, ReferenceScheme
from nrnn_plugin.noise import NoiseTape, recording, replaying
from nrnn_plugin.runtime import NoiseRuntime, noise_scale, runtimes

__all__ = [
    "TERMS",
    "explicit_regularizer",
    "regularized_loss",
    "training_step",
    "model_config",
    "benchmark",
]

TERMS = ("R+Q", "R")

Closure = Callable[[], Any]
_HALF = (torch.float16, torch.bfloat16)


# ============================================================================================ public API


def explicit_regularizer(
    model: nn.Module,
    closure: Closure,
    estimator: str = "fd",
    probes: int = 1,
    terms: str = "R+Q",
    *,
    config: NoiseConfig | None = None,
    eta: float = 1.0,
    clean_loss: Tensor | None = None,
) -> Tensor:
    """Estimate ``E[loss with the configured noise] - loss without noise`` to second order.

    Args:
        model: a module with noisy layers (:func:`nrnn_plugin.register_noise`), in train or eval mode: noise
            is forced on and off here whatever ``module.training`` and the config's mode say. Noise levels are
            the registered (per-module) ones times the current schedule level.
        closure: ``closure()`` runs ``model`` and returns the scalar loss, or ``(output, loss_fn)`` with
            ``loss_fn(output)`` the scalar loss (required for ``terms="R"``). It must not call ``backward``.
        estimator: ``"fd"``, ``"jet"`` or ``"exact"`` (module docstring: accuracy and cost).
        probes: number of independent noise draws averaged (``fd``, ``jet``); ``exact`` ignores it.
        terms: ``"R+Q"`` (the full estimate, first-order term of biased schemes included) or ``"R"`` (the
            Gauss-Newton part only, ``>= 0`` for convex losses).
        config: passed to the ``nrnn_regularizer_terms`` hook; default: the first noisy module's config.
        eta: probe scale of ``fd`` (``> 0``; ``1`` = the configured noise level).
        clean_loss: ``L(0)`` already computed by the caller with the noise-free model in the same state
            (reused by ``fd`` with ``terms="R+Q"`` to save one forward; see "Dropout" in the module docstring).

    Returns:
        A 0-dim tensor (``(eps^2 / 2)(R + Q)`` in THEORY.md's notation), differentiable w.r.t. the parameters
        when gradients are enabled.

    Raises:
        ValueError: no noisy module in ``model``; an argument outside its allowed values; ``terms="R"`` with a
            closure that returns a bare loss; a half-precision loss with ``fd``; ``exact`` with a scheme
            whose noise moments are unknown.
    """
    _check_choice("estimator", estimator, ESTIMATORS)
    _check_choice("terms", terms, TERMS)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"explicit_regularizer: probes must be an integer >= 1, got {probes!r}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta <= 0:
        raise ValueError(f"explicit_regularizer: eta must be a finite number > 0, got {eta!r}")
    active = _active_runtimes(model)
    if config is None:
        config = next(runtimes(model)).config
    if active:
        with _probe_state(model):
            if estimator == "fd":
                value = _fd(model, closure, probes, terms, float(eta), clean_loss)
            elif estimator == "jet":
                value = _jet(model, closure, probes, terms)
            else:
                value = _exact(model, closure, terms)
    else:
        value = _zero(model)
    from nrnn_plugin.plugins import hook

    for extra in hook().nrnn_regularizer_terms(model=model, config=config, closure=closure):
        if extra is not None:
            value = value + extra
    return value


def regularized_loss(
    model: nn.Module,
    closure: Closure,
    loss: Tensor | None = None,
    config: NoiseConfig | None = None,
) -> tuple[Tensor, Tensor]:
    """The training loss of one step under the configured mode: ``(loss + weight * reg, reg)``.

    Args:
        model: a module with noisy layers.
        closure: as for :func:`explicit_regularizer`.
        loss: the main loss the training step computed with the model's own forward (noise-free in mode
            ``"regularizer"``, noisy in modes ``"noise"`` and ``"both"``); ``None`` calls ``closure()``.
        config: supplies ``mode``, ``regularizer_weight``, ``estimator`` and ``probes``; default
            :func:`model_config` (the registered configuration). Noise levels are always the registered ones.

    Returns:
        ``(total, reg)``: mode ``"noise"`` (or weight 0, or ``enabled=False``) gives ``(loss, 0)``; modes
        ``"regularizer"`` and ``"both"`` give ``(loss + weight * reg, reg)``. In mode ``"regularizer"`` the given
        ``loss`` is ``L(0)`` and ``fd`` reuses it, unless a noisy module injects in its own forward (the
        registered mode is not ``"regularizer"``), the model has active dropout modules or autocast is on.
        When it is reused, ``total`` is assembled so that ``L(0)`` enters with its net coefficient
        ``1 - weight``: same value and gradient, and with ``weight = 1`` (the default) ``total.backward()``
        does not run through the clean forward at all (``total`` is then ``mean (L(+1) + L(-1)) / 2``).
    """
    config = _step_config(model, config, "regularized_loss")
    if loss is None:
        loss = _evaluate(closure).loss
    return _assembled_loss(model, closure, loss, config, _reuses_clean_loss(model, config))


def training_step(
    model: nn.Module,
    closure: Closure,
    optimizer: torch.optim.Optimizer,
    config: NoiseConfig | None = None,
) -> tuple[Tensor, Tensor]:
    """One plain-torch optimizer step that honours the configured mode; returns ``(loss, reg)`` detached.

    ``zero_grad``, ``loss = closure()`` (the model's own forward: noisy or not by mode), :func:`regularized_loss`,
    ``backward``, ``optimizer.step()``. Put the model in train mode first; schedules are the caller's
    (:func:`nrnn_plugin.runtime.noise_level`).
    """
    config = _step_config(model, config, "training_step")
    reuse = _reuses_clean_loss(model, config)
    optimizer.zero_grad(set_to_none=True)
    # A reused L(0) of net weight 0 in the total (see regularized_loss) needs no graph.
    with torch.no_grad() if reuse and config.regularizer_weight == 1.0 else contextlib.nullcontext():
        loss = _evaluate(closure).loss
    total, reg = _assembled_loss(model, closure, loss, config, reuse)
    total.backward()
    optimizer.step()
    return loss.detach(), reg.detach()


def _step_config(model: nn.Module, config: NoiseConfig | None, caller: str) -> NoiseConfig:
    if config is None:
        return model_config(model)
    if not isinstance(config, NoiseConfig):
        raise TypeError(f"{caller}: config must be a NoiseConfig or None, got {type(config).__name__}")
    return config


def _assembled_loss(
    model: nn.Module, closure: Closure, loss: Tensor, config: NoiseConfig, reuse: bool
) -> tuple[Tensor, Tensor]:
    """``(loss + weight * reg, reg)``; ``reuse``: ``loss`` is ``fd``'s ``L(0)`` (:func:`_reuses_clean_loss`)."""
    if not config.uses_regularizer:
        return loss, torch.zeros((), device=loss.device, dtype=loss.dtype)
    weight = config.regularizer_weight
    if not reuse:
        reg = explicit_regularizer(model, closure, config.estimator, config.probes, "R+Q", config=config)
        return loss + weight * reg, reg
    # fd with eta = 1 is reg = mean_probes (L(+1) + L(-1)) / 2 - L(0) + (terms without L(0)). Passing L(0)
    # detached and putting its gradient back by hand gives the same value and gradient, and lets the weight-1
    # case (the default) skip the backward of the clean forward: L(0)'s coefficient in the total is 1 - weight.
    clean = loss.detach()
    reg_without_clean_grad = explicit_regularizer(
        model, closure, "fd", config.probes, "R+Q", config=config, clean_loss=clean
    )
    reg = reg_without_clean_grad - (loss - clean)
    anchor = clean if weight == 1.0 else (1.0 - weight) * loss + weight * clean
    return anchor + weight * reg_without_clean_grad, reg


def model_config(model: nn.Module) -> NoiseConfig:
    """The configuration ``register_noise`` gave ``model``'s noisy modules (the first one's).

    Raises ``ValueError`` if the model has no noisy module, or if its modules disagree on the fields that
    drive the regularizer (``mode``, ``regularizer_weight``, ``estimator``, ``probes``).
    """
    configs = [rt.config for rt in runtimes(model)]
    if not configs:
        raise ValueError(
            f"{type(model).__name__} has no noisy module; call nrnn_plugin.register_noise(model, config) first"
        )
    first = configs[0]
    for field in ("mode", "regularizer_weight", "estimator", "probes"):
        values = {getattr(c, field) for c in configs}
        if len(values) > 1:
            raise ValueError(
                f"the noisy modules of {type(model).__name__} disagree on NoiseConfig.{field} ({sorted(map(str, values))}); "
                "pass config= explicitly"
            )
    return first


# ============================================================================================ closures


class _Evaluation(NamedTuple):
    loss: Tensor
    output: Any = None
    loss_fn: Callable[[Any], Tensor] | None = None


def _evaluate(closure: Closure) -> _Evaluation:
    result = closure()
    if isinstance(result, Tensor):
        return _Evaluation(_check_scalar(result))
    if isinstance(result, (tuple, list)) and len(result) == 2 and callable(result[1]):
        output, loss_fn = result
        return _Evaluation(_check_scalar(loss_fn(output)), output, loss_fn)
    raise TypeError(
        "explicit_regularizer: closure() must return a scalar loss tensor or (output, loss_fn) with "
        f"loss_fn(output) the scalar loss, got {type(result).__name__}"
    )


def _check_scalar(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise TypeError(f"explicit_regularizer: the closure's loss must be a scalar tensor, got {shape}")
    return loss.reshape(())


def _needs_output(evaluation: _Evaluation) -> tuple[Any, Callable[[Any], Tensor]]:
    if evaluation.loss_fn is None:
        raise ValueError(
            "explicit_regularizer: terms='R' (Gauss-Newton part) needs the outputs and the loss separately: "
            "let closure() return (output, loss_fn) with loss_fn(output) the scalar loss, got a bare loss tensor"
        )
    return evaluation.output, evaluation.loss_fn


def _map(fn: Callable[..., Tensor], *trees: Any) -> Any:
    """Apply ``fn`` leaf-wise to tensors nested in tuples, lists and dicts of the same structure."""
    first = trees[0]
    if isinstance(first, Tensor):
        return fn(*trees)
    if isinstance(first, Mapping):
        return {key: _map(fn, *(t[key] for t in trees)) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_map(fn, *parts) for parts in zip(*trees))
    raise TypeError(f"explicit_regularizer: outputs must be tensors or tuples/lists/dicts of tensors, got {type(first).__name__}")


# ============================================================================================ state


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"explicit_regularizer: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _active_runtimes(model: nn.Module) -> list[NoiseRuntime]:
    found = list(runtimes(model))
    if not found:
        raise ValueError(
            f"explicit_regularizer: {type(model).__name__} has no noisy module; call "
            "nrnn_plugin.register_noise(model, config) first"
        )
    return [rt for rt in found if rt.config.has_noise and rt.level != 0.0]


@contextlib.contextmanager
def _probe_state(model: nn.Module) -> Iterator[None]:
    """Save every runtime switch the estimators turn and restore it afterwards; force noise on inside."""
    saved = [(rt, rt.override, rt.probe_scale, rt.use_mean, rt._diffusion) for rt in runtimes(model)]
    try:
        for rt, *_ in saved:
            rt.override, rt.probe_scale, rt.use_mean = True, 1.0, False
        yield
    finally:
        for rt, override, scale, use_mean, diffusion in saved:
            rt.override, rt.probe_scale, rt.use_mean, rt._diffusion = override, scale, use_mean, diffusion


@contextlib.contextmanager
def _mean_noise(model: nn.Module) -> Iterator[None]:
    """Inject the schemes' mean coefficients instead of draws (first-order term of biased schemes)."""
    states = [(rt, rt.use_mean) for rt in runtimes(model)]
    try:
        for rt, _ in states:
            rt.use_mean = True
        yield
    finally:
        for rt, use_mean in states:
            rt.use_mean = use_mean


def _has_first_order_term(model: nn.Module) -> bool:
    """True when an injecting module's scheme has a non-zero mean (``Diffusion.biased``, e.g. ``reference``)."""
    for runtime in _active_runtimes(model):
        diffusion = runtime.diffusion()
        if diffusion.biased and not diffusion.mean_coefficients().is_zero:
            return True
    return False


def _zero(model: nn.Module) -> Tensor:
    reference = next(model.parameters(), None)
    if reference is None:
        return torch.zeros(())
    return torch.zeros((), device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)


def _devices(model: nn.Module) -> list[torch.device]:
    devices = {t.device for t in model.parameters()} | {t.device for t in model.buffers()}
    return sorted(devices, key=str) or [torch.device("cpu")]


class _GlobalRng:
    """Snapshot of the global RNG streams that ops like dropout use (CPU and the model's CUDA devices)."""

    def __init__(self, devices: Sequence[torch.device]) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = {d: torch.cuda.get_rng_state(d) for d in devices if d.type == "cuda"}

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda.items():
            torch.cuda.set_rng_state(state, device)


@contextlib.contextmanager
def _full_precision(devices: Sequence[torch.device]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for device_type in sorted({d.type for d in devices}):
            with contextlib.suppress(RuntimeError, ValueError):  # device types without autocast support
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _has_active_dropout(model: nn.Module) -> bool:
    for module in model.modules():
        if not module.training:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if isinstance(module, nn.RNNBase) and module.dropout > 0 and module.num_layers > 1:
            return True
    return False


def _reuses_clean_loss(model: nn.Module, config: NoiseConfig) -> bool:
    """:func:`regularized_loss` takes the caller's loss as ``fd``'s ``L(0)`` (see its docstring): only when some
    module injects at all (at noise level 0 the regularizer is 0 and does not contain ``L(0)``)."""
    return (
        config.uses_regularizer
        and config.estimator == "fd"
        and config.mode == "regularizer"
        and bool(_active_runtimes(model))
        and _clean_loss_reusable(model)
    )


def _clean_loss_reusable(model: nn.Module) -> bool:
    """The caller's loss is ``L(0)`` of this step: no module injects noise in its own forward now, no active
    dropout module drew a mask the probes cannot replay, and no autocast made it low precision."""
    from nrnn_plugin.swap import noisy_modules

    if any(module._nrnn_runtime.injecting(module.training) for _, module in noisy_modules(model)):
        return False
    if _has_active_dropout(model):
        return False
    for device_type in {d.type for d in _devices(model)}:
        with contextlib.suppress(RuntimeError, TypeError):
            if torch.is_autocast_enabled(device_type):
                return False
    return True


# ============================================================================================ fd


def _fd(model: nn.Module, closure: Closure, probes: int, terms: str, eta: float, clean_loss: Tensor | None) -> Tensor:
    devices = _devices(model)
    rng = _GlobalRng(devices)
    total: Tensor | float = 0.0
    clean = clean_loss
    with _full_precision(devices):
        for _ in range(probes):
            rng.restore()
            with recording(model) as tapes, noise_scale(model, eta):
                plus = _evaluate(closure)
            _refuse_half(plus.loss)
            rng.restore()
            with replaying(model, tapes), noise_scale(model, -eta):
                minus = _evaluate(closure)
            if terms == "R":
                output_plus, loss_fn = _needs_output(plus)
                middle = _map(lambda a, b: 0.5 * (a + b), output_plus, minus.output)
                gap = plus.loss + minus.loss - 2.0 * _check_scalar(loss_fn(middle))
            else:
                if clean is None:
                    rng.restore()
                    zero_scale = torch.zeros((), device=plus.loss.device)
                    with replaying(model, tapes), noise_scale(model, zero_scale):
                        clean = _evaluate(closure).loss
                gap = plus.loss + minus.loss - 2.0 * clean
            total = total + gap
        value = total / (2.0 * eta * eta * probes)
        if terms == "R+Q" and _has_first_order_term(model):
            with _mean_noise(model):
                rng.restore()
                with noise_scale(model, eta):
                    mean_plus = _evaluate(closure).loss
                rng.restore()
                with noise_scale(model, -eta):
                    mean_minus = _evaluate(closure).loss
            value = value + (mean_plus - mean_minus) / (2.0 * eta)
    return value  # type: ignore[return-value]


def _refuse_half(loss: Tensor) -> None:
    if loss.dtype in _HALF:
        raise ValueError(
            f"explicit_regularizer: estimator 'fd' needs a float32 or float64 loss (finite differences of "
            f"{loss.dtype} losses cancel catastrophically), got {loss.dtype}; compute the loss in float32 or "
            "use estimator='jet'"
        )


# ============================================================================================ jet


def _jet(model: nn.Module, closure: Closure, probes: int, terms: str) -> Tensor:
    from nrnn_plugin.layers import use_kernel

    create_graph = torch.is_grad_enabled()
    # the scale's dtype is the gradients' accumulation dtype: at least float32, float64 for float64 models
    reference = _zero(model)
    dtype = torch.promote_types(reference.dtype, torch.float32)
    device = reference.device
    total: Tensor | float = 0.0
    with torch.enable_grad(), use_kernel("reference"), _double_backward_hint():
        for _ in range(probes):
            scale = torch.zeros((), device=device, dtype=dtype, requires_grad=True)
            with noise_scale(model, scale):
                evaluation = _evaluate(closure)
            if terms == "R":
                output, _ = _needs_output(evaluation)
                tangent = _output_tangent(output, scale)
                total = total + _curvature(evaluation.loss, output, tangent, create_graph)
            else:
                total = total + _second_derivative(evaluation.loss, scale, create_graph)
        value = total / (2.0 * probes)
        if terms == "R+Q" and _has_first_order_term(model):
            scale = torch.zeros((), device=device, dtype=dtype, requires_grad=True)
            with _mean_noise(model), noise_scale(model, scale):
                mean_loss = _evaluate(closure).loss
            (slope,) = torch.autograd.grad(mean_loss, scale, create_graph=create_graph, allow_unused=True)
            if slope is not None:
                value = value + slope
    return value if create_graph else value.detach()  # type: ignore[union-attr]


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
    outputs = list(_leaves(output))
    dummies = [torch.zeros_like(y, requires_grad=True) for y in outputs]
    (pulled,) = torch.autograd.grad(outputs, scale, dummies, create_graph=True, allow_unused=True)
    if pulled is None:
        return [torch.zeros_like(y) for y in outputs]
    tangents = torch.autograd.grad(pulled, dummies, create_graph=True, allow_unused=True)
    return [torch.zeros_like(y) if t is None else t for y, t in zip(outputs, tangents)]


def _curvature(loss: Tensor, output: Any, tangents: Sequence[Tensor], create_graph: bool) -> Tensor:
    """``u^T H u`` with ``H`` the Hessian of ``loss`` w.r.t. the output leaves (Hessian-vector product)."""
    outputs = list(_leaves(output))
    gradients = torch.autograd.grad(loss, outputs, create_graph=True, allow_unused=True)
    pairs = [(g, y, u) for g, y, u in zip(gradients, outputs, tangents) if g is not None and g.requires_grad]
    if not pairs:
        return loss.new_zeros(())
    curved = torch.autograd.grad(
        [g for g, _, _ in pairs], [y for _, y, _ in pairs], [u for _, _, u in pairs],
        create_graph=create_graph, allow_unused=True,
    )
    return _dot([c if c is not None else torch.zeros_like(u) for c, (_, _, u) in zip(curved, pairs)], [u for _, _, u in pairs])


def _leaves(tree: Any) -> Iterator[Tensor]:
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, Mapping):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, (tuple, list)):
        for value in tree:
            yield from _leaves(value)


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


# ============================================================================================ exact


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
        self.hidden: list[int] = []

    def next(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
        leaf = torch.zeros(tuple(shape), device=device, dtype=dtype, requires_grad=True)
        assert self.diffusion.hidden is not None
        self.draws.append(leaf)
        self.hidden.append(self.diffusion.hidden)
        return leaf


def _exact(model: nn.Module, closure: Closure, terms: str) -> Tensor:
    from nrnn_plugin.layers import use_kernel
    from nrnn_plugin.swap import noisy_modules

    create_graph = torch.is_grad_enabled()
    tapes: dict[str, _LeafTape] = {}
    originals: dict[str, Diffusion] = {}
    for name, module in noisy_modules(model):
        runtime: NoiseRuntime = module._nrnn_runtime  # type: ignore[assignment]
        originals[name] = runtime.diffusion()
        coefficient_scheme = _CoefficientDiffusion(originals[name])
        runtime._diffusion = (runtime.level, coefficient_scheme)
        tapes[name] = _LeafTape(coefficient_scheme)
    with torch.enable_grad(), use_kernel("reference"), replaying(model, tapes):
        evaluation = _evaluate(closure)
        leaves: list[Tensor] = []
        means: list[Tensor] = []
        blocks: list[tuple[int, Tensor]] = []  # (leaf index, moments) for every draw
        for name, tape in tapes.items():
            for leaf, hidden in zip(tape.draws, tape.hidden):
                moments = _moments(originals[name], hidden, leaf.dtype, leaf.device)
                index = len(leaves)
                leaves.append(leaf)
                # leaf [..., targets * 3H]: every leading index and target is an independent row
                view_shape = (*leaf.shape[:-1], leaf.shape[-1] // (3 * hidden), 3, hidden)
                means.append(moments.mean.expand(view_shape).reshape(leaf.shape))
                blocks.append((index, moments.factors))
        if not leaves:
            return _zero(model)
        if terms == "R":
            output, _ = _needs_output(evaluation)
            value = _exact_gauss_newton(output, evaluation.loss, leaves, means, blocks, create_graph)
        else:
            value = _exact_full(evaluation.loss, leaves, means, blocks, create_graph)
    return value if create_graph else value.detach()


def _dot(first: Sequence[Tensor], second: Sequence[Tensor]) -> Tensor:
    total = first[0].new_zeros(())
    for a, b in zip(first, second):
        total = total + (a * b).sum()
    return total


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
        first = _dot(grads, means)
        mean_hv = torch.autograd.grad(first, leaves, retain_graph=True, create_graph=create_graph)
        second = second + _dot(mean_hv, means)
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
    outputs = list(_leaves(output))
    loss_grads = torch.autograd.grad(loss, outputs, create_graph=True)
    dummies = [torch.zeros_like(y, requires_grad=True) for y in outputs]
    pulled = torch.autograd.grad(outputs, leaves, dummies, create_graph=True, allow_unused=True)

    def quadratic(index: int | None, directions: Tensor | list[Tensor], batched: bool) -> Tensor:
        if index is None:  # all leaves at once (the mean)
            inner = _dot([p for p in pulled if p is not None], [d for p, d in zip(pulled, directions) if p is not None])
            tangents = torch.autograd.grad(inner, dummies, retain_graph=True, create_graph=True, allow_unused=True)
        else:
            if pulled[index] is None:
                return loss.new_zeros(())
            tangents = torch.autograd.grad(
                pulled[index], dummies, directions, retain_graph=True, create_graph=True, allow_unused=True,
                is_grads_batched=batched,
            )
        tangents = tuple(torch.zeros_like(y) if t is None else t for y, t in zip(outputs, tangents))
        curved = torch.autograd.grad(
            loss_grads, outputs, tangents, retain_graph=True, create_graph=create_graph, is_grads_batched=batched
        )
        return _dot(curved, tangents)

    total = loss.new_zeros(())
    for index, factors in blocks:
        vectors = list(_row_vectors(leaves[index], factors))
        for start in range(0, len(vectors), _HVP_CHUNK):
            total = total + quadratic(index, torch.stack(vectors[start : start + _HVP_CHUNK]), True)
    if any(bool(m.any()) for m in means):
        total = total + quadratic(None, means, False)
    return 0.5 * total


# ============================================================================================ benchmark


def benchmark(
    *,
    cells: Sequence[str] = ("LSTM", "GRU", "RNN"),
    noises: Sequence[tuple[float, float]] = ((0.05, 0.0), (0.05, 0.02)),
    cases: Sequence[tuple[str, int] | tuple[str, int, float]] = (("fd", 1), ("fd", 4), ("jet", 1)),
    batch: int = 64,
    steps: int = 96,
    hidden: int = 64,
    input_size: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    **timing: Any,
) -> list[dict[str, Any]]:
    """Time a regularized training step against a plain one, paired in this process; returns one row per case.

    The model is ``cell(input_size, hidden)`` + a linear read-out of the last step, cross-entropy over 10
    classes, SGD. The plain step is ``zero_grad``, forward, backward, ``step`` of the noise-free model (fused
    kernels); the regularized step is :func:`training_step` in mode ``"regularizer"`` with the case's
    estimator, probes and ``regularizer_weight`` (a case is ``(estimator, probes)`` or ``(estimator, probes,
    weight)``, weight 1 by default; ``fd`` reuses the plain loss as ``L(0)``). Timing is
    :func:`nrnn_plugin.benchmarking.time_pair` (interleaved rounds, median of per-round ratios); ``timing``
    is passed to it (``clock="cpu"`` with one thread is robust on a shared machine, ``budget_s``,
    ``min_rounds``, ...). Rows: ``cell, additive, multiplicative, estimator, probes, weight, kernel, batch, steps,
    hidden, device, clock, plain_ms, regularized_ms, ratio, ratio_min, ratio_max``; ``kernel`` is the kernel
    the probes run on.
    """
    from nrnn_plugin.benchmarking import time_pair
    from nrnn_plugin.layers.recurrent import FUNCTION_KERNELS
    from nrnn_plugin.swap import register_noise

    classes = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
    modes = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN_TANH"}
    rows: list[dict[str, Any]] = []
    for cell in cells:
        if cell not in classes:
            raise ValueError(f"benchmark: cells must be among {sorted(classes)}, got {cell!r}")
        for additive, multiplicative in noises:
            for case in cases:
                estimator, probes = case[0], case[1]
                weight = float(case[2]) if len(case) > 2 else 1.0
                torch.manual_seed(seed)
                recurrent = classes[cell](input_size, hidden).to(device)
                head = nn.Linear(hidden, 10).to(device)
                model = nn.Sequential()
                model.add_module("rnn", recurrent)
                model.add_module("head", head)
                config = NoiseConfig(
                    additive=additive,
                    multiplicative=multiplicative,
                    mode="regularizer",
                    estimator=estimator,
                    probes=probes,
                    regularizer_weight=weight,
                    seed=seed,
                )
                register_noise(model, config)
                model.train()
                x = torch.randn(steps, batch, input_size, device=device)
                y = torch.randint(0, 10, (batch,), device=device)
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

                def closure() -> Tensor:
                    out, _ = recurrent(x)
                    return nn.functional.cross_entropy(head(out[-1]), y)

                def plain() -> None:
                    optimizer.zero_grad(set_to_none=True)
                    closure().backward()
                    optimizer.step()

                def regularized() -> None:
                    training_step(model, closure, optimizer, config)

                result = time_pair(plain, regularized, device=device, **timing)
                if estimator in ("jet", "exact"):
                    kernel = "reference"
                elif cell == "LSTM" and multiplicative == 0.0:
                    kernel = "fused"
                else:
                    kernel = "function" if modes[cell] in FUNCTION_KERNELS else "reference"
                rows.append(
                    {
                        "cell": cell,
                        "additive": additive,
                        "multiplicative": multiplicative,
                        "estimator": estimator,
                        "probes": probes,
                        "weight": weight,
                        "kernel": kernel,
                        "batch": batch,
                        "steps": steps,
                        "hidden": hidden,
                        "device": str(device),
                        "clock": timing.get("clock", "wall"),
                        "plain_ms": 1e3 * result.base_s,
                        "regularized_ms": 1e3 * result.other_s,
                        "ratio": result.ratio,
                        "ratio_min": result.ratio_min,
                        "ratio_max": result.ratio_max,
                    }
                )
    return rows
