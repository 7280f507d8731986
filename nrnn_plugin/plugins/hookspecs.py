"""The hooks through which adapters and plugins extend nrnn-plugin.

A plugin is any module or object with functions named after these hooks and decorated with :data:`hookimpl`.
The adapters that ship with nrnn-plugin are registered by module path (they work without installed package
metadata); third-party plugins are loaded from the ``nrnn_plugin`` entry-point group or registered with
:func:`nrnn_plugin.plugins.register`. Built-in behaviour is implemented through the same hooks by
:mod:`nrnn_plugin.plugins.builtin` (registered first, so every plugin can override it).

Writing an adapter for a new model family (see ``docs/plugins.md``)::

    # my_package/nrnn_adapter.py   [project.entry-points.nrnn_plugin] my = "my_package.nrnn_adapter"
    from nrnn_plugin import hookimpl

    @hookimpl
    def nrnn_noisy_class(module, config):
        if type(module) is MyRNN:
            return NoisyMyRNN            # a statically defined subclass of MyRNN
        return None

Hooks marked *first result* stop at the first implementation that returns something other than ``None``;
plugins registered later are called first. What a hook returns is checked where it enters the library, and
an error names the plugin that answered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

    from nrnn_plugin.config import NoiseConfig
    from nrnn_plugin.diffusion import Diffusion
    from nrnn_plugin.noise import Sampler

__all__ = ["PROJECT_NAME", "hookspec", "hookimpl"]

PROJECT_NAME = "nrnn_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(firstresult=True)
def nrnn_noisy_class(module: nn.Module, config: NoiseConfig) -> type[nn.Module] | None:
    """Return the noisy class that ``module`` is switched to, or ``None`` if this adapter does not handle it.

    *First result.* The returned class must be a statically defined subclass of ``type(module)`` that adds no
    parameters or buffers (``register_noise`` reassigns ``module.__class__``) and follows the
    :class:`nrnn_plugin.runtime.NoisyModule` protocol: a class attribute ``nrnn_original_class`` (the class
    :func:`~nrnn_plugin.remove_noise` restores; ``type(module)`` or, for an already noisy module, its
    original) and a class method ``nrnn_validate(module, config)`` that raises ``ValueError`` for options it
    cannot support.
    """


@hookspec(firstresult=True)
def nrnn_resolve_config(name: str, module: nn.Module, config: NoiseConfig) -> NoiseConfig | None:
    """Return the configuration for the module at qualified name ``name``, or ``None`` to keep ``config``.

    *First result.* Lets an adapter adapt the model-wide config to a module (e.g. a cell whose hidden state is
    never read must have its noise on another state) or a plugin set per-module noise levels.
    """


@hookspec(firstresult=True)
def nrnn_diffusion(config: NoiseConfig) -> Diffusion | None:
    """Return the :class:`~nrnn_plugin.diffusion.Diffusion` (the noise form and scheme) for ``config``.

    *First result.* Called once per noisy module when noise is registered; a schedule's level is applied
    afterwards with :meth:`Diffusion.at_level`. The built-in implementation maps ``config.scheme`` to
    Euler-Maruyama, Milstein or the reference scheme.
    """


@hookspec(firstresult=True)
def nrnn_sampler(name: str, module: nn.Module, config: NoiseConfig) -> Sampler | None:
    """Return the sampler of standard Gaussians for the module at qualified name ``name``.

    *First result.* Called once per noisy module when noise is registered; the sampler
    (:class:`nrnn_plugin.noise.Sampler`) is then called once per layer and sequence, never per time step. It
    must draw from ``source.generator(device)`` (never the global RNG) so that runs stay reproducible and
    replayable; its draws are tensors, used as given (the kernels then take coefficient tensors, so the noise
    is stored for backward). The built-in answer, ``nrnn_plugin.noise.counter_stream``, is not a tensor
    sampler: draws are keys of the counter-based stream, generated inside the kernels
    (:mod:`nrnn_plugin.philox`). ``nrnn_plugin.noise.gaussian_sampler`` is ``torch.randn`` on the generator.
    """


@hookspec
def nrnn_regularizer_terms(model: nn.Module, config: NoiseConfig, closure: Callable[[], Any]) -> torch.Tensor | None:
    """Return an extra scalar term to add to the explicit regularizer, or ``None``.

    *All results* are summed into :func:`nrnn_plugin.explicit_regularizer`'s value. The term must be a 0-dim
    tensor, differentiable with respect to the parameters if it is to train them.
    """


@hookspec(firstresult=True)
def nrnn_loss_closure(module: nn.Module) -> Callable[[nn.Module, Any, int], torch.Tensor] | None:
    """Return ``closure(module, batch, batch_idx) -> loss`` that recomputes ``module``'s training loss, or ``None``.

    *First result.* Used by the Lightning callback's regularizer modes to re-run the loss of a batch without
    side effects (logging, stored outputs) for a family of LightningModules whose ``training_step`` does more
    than compute the loss (pytorch-forecasting models, for instance).
    """


@hookspec(firstresult=True)
def nrnn_robustness_task(batches: list[tuple[Any, Any]], task: str) -> Any | None:
    """Return a robustness-evaluation task for ``batches``, or ``None`` if this plugin does not know them.

    *First result.* ``batches`` is the evaluation data as a list of ``(inputs, target)`` pairs; ``task`` is the
    name the user asked for (``"auto"`` or e.g. ``"forecasting"``). The result must be a
    :class:`nrnn_plugin.robustness.evaluate.Task` (features to perturb, scoring, the loss an adversary
    increases). The built-in classification task handles ``(X, y)`` tensors and batches of them.
    """


@hookspec
def nrnn_adapter_info() -> dict[str, Any] | None:
    """Describe this adapter for ``nrnn plugins``: ``{"name", "available", "reason", "handles"}``.

    *All results.* ``available=False`` with a ``reason`` when an optional dependency is missing; the adapter
    must then return ``None`` from :func:`nrnn_noisy_class` for everything.
    """
