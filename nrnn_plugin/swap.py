"""Reversible switching of recurrent modules to their noisy classes: register / remove / is / list.

``register_noise`` reassigns ``module.__class__`` to a statically defined noisy subclass chosen by the
``nrnn_noisy_class`` hook. No parameter, buffer, hook, device or dtype changes, so the optimizer stays valid,
``state_dict`` keys and values are identical, and a model trained with noise loads into the plain model with
``strict=True`` (and vice versa). ``remove_noise`` restores the original classes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any, TypeVar

from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.noise import NoiseSource
from nrnn_plugin.plugins import hook
from nrnn_plugin.runtime import NoiseRuntime

__all__ = ["register_noise", "remove_noise", "is_noisy", "noisy_modules"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)

#: Recurrent base classes: a module of these types that no adapter handles is an error, not a silent skip.
RECURRENT_BASES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase)


def _selected(name: str, config: NoiseConfig) -> bool:
    if config.include and not any(fnmatch.fnmatchcase(name, p) for p in config.include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in config.exclude)


def _display(name: str) -> str:
    return repr(name) if name else "<root>"


def register_noise(model: ModuleT, config: NoiseConfig | None = None, **overrides: Any) -> ModuleT:
    """Make every supported recurrent module of ``model`` (or ``model`` itself) noisy, in place.

    Args:
        model: any ``nn.Module``; its recurrent submodules are found by ``named_modules()``.
        config: the noise configuration (default ``NoiseConfig()``); ``overrides`` are applied on top
            (``register_noise(model, additive=0.05)``).

    Returns:
        ``model`` itself. With ``config.enabled=False`` nothing changes.

    Raises:
        TypeError: a selected recurrent module is of a type no adapter supports (the message names the class
            and the ``nrnn_noisy_class`` hook to implement).
        ValueError: an adapter rejects a module's options (e.g. ``proj_size``), or no supported recurrent
            module is selected.

    Validation happens before anything is changed: on error the model is left as it was.
    """
    config = NoiseConfig() if config is None else config
    if not isinstance(config, NoiseConfig):
        raise TypeError(f"register_noise: config must be a NoiseConfig, got {type(config).__name__}")
    if overrides:
        config = config.replace(**overrides)
    if not config.enabled:
        return model

    plan: list[tuple[str, nn.Module, type[nn.Module], NoiseConfig]] = []
    unsupported: list[str] = []
    hooks = hook()
    for name, module in model.named_modules():
        if not _selected(name, config):
            continue
        noisy_class = hooks.nrnn_noisy_class(module=module, config=config)
        if noisy_class is None:
            if isinstance(module, RECURRENT_BASES):
                unsupported.append(f"{_display(name)} ({type(module).__module__}.{type(module).__qualname__})")
            continue
        resolved = hooks.nrnn_resolve_config(name=name, module=module, config=config) or config
        noisy_class.nrnn_validate(module, resolved)  # type: ignore[attr-defined]
        plan.append((name, module, noisy_class, resolved))
    if unsupported:
        raise TypeError(
            "register_noise: no adapter supports the recurrent module(s) "
            + ", ".join(unsupported)
            + "; implement the nrnn_noisy_class hook for them (see nrnn_plugin.hookspecs) or leave them out "
            "with NoiseConfig.exclude"
        )
    if not plan:
        raise ValueError(
            f"register_noise: no supported recurrent module found in {type(model).__name__}"
            + (f" matching include={list(config.include)} / exclude={list(config.exclude)}" if config.include or config.exclude else "")
            + "; supported types are listed by `nrnn plugins`"
        )
    for name, module, noisy_class, resolved in plan:
        module.__class__ = noisy_class
        module._nrnn_runtime = NoiseRuntime(resolved, NoiseSource(name, resolved.seed))  # type: ignore[assignment]
    return model


def remove_noise(model: ModuleT) -> ModuleT:
    """Restore the original class of every noisy module of ``model``, in place; returns ``model``."""
    for _, module in list(noisy_modules(model)):
        module.__class__ = type(module).nrnn_original_class  # type: ignore[attr-defined]
        del module._nrnn_runtime
    return model


def noisy_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every noisy module in ``model`` (``""`` for ``model`` itself)."""
    for name, module in model.named_modules():
        if getattr(module, "_nrnn_runtime", None) is not None:
            yield name, module


def is_noisy(model: nn.Module) -> bool:
    """True when ``model`` or any of its submodules is noisy."""
    return next(noisy_modules(model), None) is not None
