"""The hooks through which adapters and plugins extend nrnn-plugin.

A plugin is any module or object with functions named after these hooks and decorated with
:data:`hookimpl`; it is loaded from the ``nrnn_plugin`` entry-point group (or registered with
:func:`nrnn_plugin.plugins.register`). Built-in behaviour is implemented through the same hooks by
:mod:`nrnn_plugin.builtin` (registered first, so every plugin can override it), and the plain-torch adapter
is an entry-point plugin like any third-party adapter.

Writing an adapter for a new model family::

    # my_package/nrnn_adapter.py        (entry point: [project.entry-points.nrnn_plugin] my = "my_package.nrnn_adapter")
    from nrnn_plugin import hookimpl

    @hookimpl
    def nrnn_noisy_class(module, config):
        if type(module) is MyRNN:
            return NoisyMyRNN            # a statically defined subclass of MyRNN
        return None

Hooks marked *first result* stop at the first implementation that returns something other than ``None``;
plugins registered later are called first.
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
    from nrnn_plugin.noise import NoiseSource

PROJECT_NAME = "nrnn_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(firstresult=True)
def nrnn_noisy_class(module: nn.Module, config: NoiseConfig) -> type[nn.Module] | None:
    """Return the noisy class that ``module`` is switched to, or ``None`` if this adapter does not handle it.

    *First result.* The returned class must be a statically defined subclass of ``type(module)`` that adds
    no parameters or buffers (``register_noise`` reassigns ``module.__class__``), and it must define the
    class attribute ``nrnn_original_class`` (the class :func:`remove_noise` restores) and a class method
    ``nrnn_validate(module, config)`` that raises ``ValueError`` for options it cannot support.
    """


@hookspec(firstresult=True)
def nrnn_resolve_config(name: str, module: nn.Module, config: NoiseConfig) -> NoiseConfig | None:
    """Return the configuration for the module at qualified name ``name``, or ``None`` to keep ``config``.

    *First result.* Lets an adapter adapt the model-wide config to a module (e.g. a cell whose hidden state is
    never read must have its noise on another state) or a plugin set per-module noise levels.
    """


@hookspec(firstresult=True)
def nrnn_diffusion(config: NoiseConfig, level: float) -> Diffusion | None:
    """Return the :class:`~nrnn_plugin.diffusion.Diffusion` (the noise form and scheme) for ``config``.

    *First result.* ``level`` multiplies both noise levels (a schedule's current factor). The built-in
    implementation maps ``config.scheme`` to Euler-Maruyama, Milstein or the reference scheme.
    """


@hookspec(firstresult=True)
def nrnn_sample_noise(
    source: NoiseSource, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """Return standard Gaussian draws of ``shape`` on ``device`` in ``dtype`` for ``source``.

    *First result.* Called once per layer and sequence (not per time step). Implementations must use
    ``source.generator(device)`` (never the global RNG) so that runs stay reproducible and replayable.
    """


@hookspec
def nrnn_regularizer_terms(
    model: nn.Module, config: NoiseConfig, closure: Callable[[], Any]
) -> torch.Tensor | None:
    """Return an extra scalar term to add to the explicit regularizer, or ``None``.

    *All results* are summed into :func:`nrnn_plugin.explicit_regularizer`'s value. The term must be
    differentiable with respect to the parameters if it is to train them.
    """


@hookspec
def nrnn_adapter_info() -> dict[str, Any] | None:
    """Describe this adapter for ``nrnn plugins``: ``{"name", "available", "reason", "handles"}``.

    *All results.* ``available=False`` with a ``reason`` when an optional dependency is missing; the adapter
    must then return ``None`` from :func:`nrnn_noisy_class` for everything.
    """
