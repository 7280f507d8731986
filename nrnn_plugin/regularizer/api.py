"""The explicit regularizer's API: the small-noise expansion of noise injection as a loss term.

The mathematics is in ``docs/method.md`` ("the explicit regularizer"); usage in ``docs/regularizer.md``.

Notation. For a model with noisy layers, let ``c`` be the noise coefficients of one draw (for every noisy module,
time step, sample and unit: ``gate - 1``, ``mult`` and ``add`` of :class:`~nrnn_plugin.diffusion.AffineNoise`)
and ``F(c)`` the loss computed with them injected; ``F(0)`` is the noise-free loss. The regularizer probes scale
the injected noise by ``s`` around the noise-free step (:func:`nrnn_plugin.runtime.noise_control`), so the loss of a
probe is ``L(s) = F(s c)``: ``L(1)`` is a noisy training forward, ``L(0)`` the clean one. Then::

    E[L(1)] - L(0) = E[L'(0)] + E[L''(0)] / 2 + O(eps^3),      E[L''(0)] = R + Q   (eps^2 absorbed in c)

``E[L'(0)] = grad F(0) . E[c]`` vanishes for the unbiased schemes (Euler-Maruyama, Milstein) and is the
*first-order term* of biased ones (``scheme="reference"``, :attr:`~nrnn_plugin.diffusion.Diffusion.biased`),
computed from :meth:`~nrnn_plugin.diffusion.Diffusion.mean_coefficients` (``noise_control(mean=True)``), never sampled.
``R`` is the Gauss-Newton part ``E[u^T H u]`` (``u = dy/ds`` the tangent of the closure's outputs ``y``, ``H`` the
Hessian of the loss w.r.t. ``y``: ``>= 0`` for a loss convex in ``y``); ``Q = E[g . d^2y/ds^2]`` is the part
from the curvature of the recurrence (zero for a linear cell with unbiased noise).

Estimators. Each returns a 0-dim tensor, differentiable w.r.t. the parameters. Costs are counted in passes of
the closure (``F`` = one forward) before the training backward, which then runs through every graph built:

* ``fd``: ``(L(+eta) + L(-eta) - 2 L(0)) / (2 eta^2)`` with one draw recorded at ``+eta`` and replayed at
  ``-eta`` and ``0`` (:func:`nrnn_plugin.runtime.recording` / ``replaying``), averaged over ``probes``. Biased
  schemes add ``(L_mean(eta) - L_mean(-eta)) / (2 eta)``. Works on any model and with the fast kernels. Cost:
  ``2 probes + 1`` F (``2 probes`` when ``clean_loss`` is given), ``+2`` F for biased schemes; the backward
  runs through each of them. In mode ``"regularizer"`` with the default weight 1, :func:`regularized_loss`
  and :func:`training_step` drop the clean pass from the backward (its net weight in the total is 0), so a
  regularized step is one noise-free forward plus ``2 probes`` noisy forward/backward passes: about
  ``0.4 + 2 r`` plain steps (``r`` = noisy/plain cost of a forward/backward pass).
* ``jet``: ``L''(0) / 2`` for each drawn path by double backward in the 0-dim probe scale ``s``
  (:func:`nrnn_plugin.runtime.noise_control` with a tensor scale), through the autograd kernel
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
that boundary is drawn (the method puts it at the hidden states; with a linear read-out, logits are equivalent).
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
step). Runtime switches (forced noise, probe scale, mean mode, scheme, the kernel choice) are restored afterwards;
the noise streams advance (every call draws fresh probes). Results of the ``nrnn_regularizer_terms`` hook are
added to the value.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from nrnn_plugin.config import ESTIMATORS, NoiseConfig
from nrnn_plugin.plugins.manager import PluginError, all_results
from nrnn_plugin.regularizer.closures import Closure, evaluate
from nrnn_plugin.regularizer.estimators import fd, jet
from nrnn_plugin.regularizer.exact import exact
from nrnn_plugin.regularizer.guards import active_runtimes, probe_state, reuses_clean_loss, zero_like
from nrnn_plugin.runtime import noise_runtimes
from nrnn_plugin.validation import check_choice, check_int, check_real

__all__ = ["TERMS", "explicit_regularizer", "regularized_loss", "training_step", "model_config"]

TERMS = ("R+Q", "R")


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
        A 0-dim tensor (``(eps^2 / 2)(R + Q)`` in the notation of ``docs/method.md``), differentiable w.r.t. the
        parameters when gradients are enabled.

    Raises:
        ValueError: no noisy module in ``model``; an argument outside its allowed values; ``terms="R"`` with a
            closure that returns a bare loss; a half-precision loss with ``fd``; ``exact`` with a scheme
            whose noise moments are unknown.
    """
    owner = "explicit_regularizer"
    check_choice(f"{owner}.estimator", estimator, ESTIMATORS)
    check_choice(f"{owner}.terms", terms, TERMS)
    probes = check_int(f"{owner}.probes", probes, minimum=1)
    eta = check_real(f"{owner}.eta", eta, minimum=0.0, strict=True)
    active = active_runtimes(model)
    if config is None:
        config = next(noise_runtimes(model))[1].config
    if active:
        with probe_state(model):
            if estimator == "fd":
                value = fd(model, closure, probes, terms, eta, clean_loss)
            elif estimator == "jet":
                value = jet(model, closure, probes, terms)
            else:
                value = exact(model, closure, terms)
    else:
        value = zero_like(model)
    for extra, plugin in all_results("nrnn_regularizer_terms", model=model, config=config, closure=closure):
        if not isinstance(extra, Tensor) or extra.numel() != 1:
            shape = f" of shape {tuple(extra.shape)}" if isinstance(extra, Tensor) else ""
            raise PluginError(
                f"plugin {plugin!r} answered nrnn_regularizer_terms with {type(extra).__name__}{shape}, "
                "expected a scalar tensor or None"
            )
        value = value + extra.reshape(())
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
        loss = evaluate(closure).loss
    return _assembled_loss(model, closure, loss, config, reuses_clean_loss(model, config))


def training_step(
    model: nn.Module,
    closure: Closure,
    optimizer: torch.optim.Optimizer,
    config: NoiseConfig | None = None,
) -> tuple[Tensor, Tensor]:
    """One plain-torch optimizer step that honours the configured mode; returns ``(loss, reg)`` detached.

    ``zero_grad``, ``loss = closure()`` (the model's own forward: noisy or not by mode), :func:`regularized_loss`,
    ``backward``, ``optimizer.step()``. Put the model in train mode first; schedules are the caller's
    (:func:`nrnn_plugin.runtime.set_noise_level`).
    """
    config = _step_config(model, config, "training_step")
    reuse = reuses_clean_loss(model, config)
    optimizer.zero_grad(set_to_none=True)
    # A reused L(0) of net weight 0 in the total (see regularized_loss) needs no graph.
    with torch.no_grad() if reuse and config.regularizer_weight == 1.0 else contextlib.nullcontext():
        loss = evaluate(closure).loss
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
    """``(loss + weight * reg, reg)``; ``reuse``: ``loss`` is ``fd``'s ``L(0)`` (:func:`.guards.reuses_clean_loss`)."""
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
    configs = [runtime.config for _, runtime in noise_runtimes(model)]
    if not configs:
        raise ValueError(
            f"{type(model).__name__} has no noisy module; call nrnn_plugin.register_noise(model, config) first"
        )
    first = configs[0]
    for field in ("mode", "regularizer_weight", "estimator", "probes"):
        values = {getattr(c, field) for c in configs}
        if len(values) > 1:
            raise ValueError(
                f"the noisy modules of {type(model).__name__} disagree on NoiseConfig.{field} "
                f"({sorted(map(str, values))}); pass config= explicitly"
            )
    return first
