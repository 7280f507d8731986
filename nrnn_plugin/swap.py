"""Reversible switching of recurrent modules to their noisy classes: register / remove / is / list.

``register_noise`` reassigns ``module.__class__`` to a statically defined noisy subclass chosen by the
``nrnn_noisy_class`` hook. No parameter, buffer, hook, device or dtype changes, so the optimizer stays valid,
``state_dict`` keys and values are identical, and a model trained with noise loads into the plain model with
``strict=True`` (and vice versa). ``remove_noise`` restores the original classes.

Registration is all-or-nothing: every hook result is checked (an error names the plugin that gave it) and
every module validated before the first class changes, and if a class assignment still fails the modules
already switched are switched back.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any, TypeVar, cast

import torch
from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.diffusion import AffineNoise, Diffusion
from nrnn_plugin.noise import NoiseSource, Sampler
from nrnn_plugin.plugins.manager import PluginError, first_result
from nrnn_plugin.runtime import NoiseRuntime, NoisyModule, attach_runtime, detach_runtime, runtime_of
from nrnn_plugin.runtime import noisy_modules as _walk

__all__ = ["register_noise", "remove_noise", "is_noisy", "noisy_modules"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)

#: Recurrent base classes: a module of these types that no adapter handles is an error, not a silent skip.
RECURRENT_BASES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase)


def _wrapped(model: nn.Module) -> str | None:
    """The attribute under which a wrapper holds the user's model (data parallel: ``module``, a
    ``torch.compile``-d module: ``_orig_mod``), or ``None`` for any other module."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return "module"
    if type(model).__name__ == "OptimizedModule" and type(model).__module__.startswith("torch._dynamo"):
        return "_orig_mod"
    return None


def _selected(name: str, config: NoiseConfig) -> bool:
    if config.include and not any(fnmatch.fnmatchcase(name, p) for p in config.include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in config.exclude)


def _display(name: str) -> str:
    return repr(name) if name else "<root>"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _stream_name(model: nn.Module, name: str) -> str:
    """The module's name as its noise stream knows it: relative to the user's model inside a wrapper, so the
    same seed gives the same noise with and without ``DataParallel``, DDP or ``torch.compile``."""
    inner = _wrapped(model)
    if inner is None:
        return name
    if name == inner:
        return ""
    return name[len(inner) + 1 :] if name.startswith(inner + ".") else name


def _checked_class(answer: Any, plugin: str | None, name: str, module: nn.Module) -> type[NoisyModule]:
    """The noisy class a plugin answered for ``module``, checked: a subclass of ``type(module)`` that follows
    the :class:`NoisyModule` protocol and restores ``type(module)``."""
    original = type(module)
    who = f"plugin {plugin!r}" if plugin else "a plugin"
    where = f"nrnn_noisy_class for {_display(name)} ({_qualname(original)})"
    if not isinstance(answer, type) or not issubclass(answer, original):
        shown = _qualname(answer) if isinstance(answer, type) else repr(answer)
        raise PluginError(f"{who} answered {where} with {shown}, which is not a subclass of {_qualname(original)}")
    if not isinstance(answer, NoisyModule):
        raise PluginError(
            f"{who} answered {where} with {_qualname(answer)}, which lacks nrnn_original_class or nrnn_validate "
            "(see nrnn_plugin.runtime.NoisyModule)"
        )
    contract = cast("type[NoisyModule]", answer)
    declared = contract.nrnn_original_class
    if declared is not original:
        raise PluginError(
            f"{who} answered {where} with {_qualname(answer)}, whose nrnn_original_class is {_qualname(declared)}; "
            f"remove_noise would not restore {_qualname(original)}"
        )
    return contract


def _resolved_config(name: str, module: nn.Module, config: NoiseConfig) -> NoiseConfig:
    answer, plugin = first_result("nrnn_resolve_config", name=name, module=module, config=config)
    if answer is None:
        return config
    if not isinstance(answer, NoiseConfig):
        raise PluginError(
            f"plugin {plugin!r} answered nrnn_resolve_config for {_display(name)} with {type(answer).__name__}, "
            "expected a NoiseConfig or None"
        )
    return answer


def _diffusion(config: NoiseConfig, hidden: int, device: torch.device) -> Diffusion:
    answer, plugin = first_result("nrnn_diffusion", config=config)
    if not isinstance(answer, Diffusion):
        raise PluginError(
            f"plugin {plugin!r} answered nrnn_diffusion for scheme {config.scheme!r} with "
            f"{type(answer).__name__}, expected a nrnn_plugin.diffusion.Diffusion"
        )
    try:  # a scheme that cannot produce coefficients fails here, not in the first training forward
        width = answer.width(hidden)
        if not isinstance(width, int) or width < 0:
            raise TypeError(f"width({hidden}) returned {width!r}, expected an integer >= 0")
        if width:
            probe = answer.coefficients(torch.zeros(2, width, device=device), hidden)
            if not isinstance(probe, AffineNoise):
                raise TypeError(f"coefficients() returned {type(probe).__name__}, expected AffineNoise")
    except Exception as exc:
        raise PluginError(
            f"plugin {plugin!r}: the diffusion {type(answer).__name__} it returned is unusable: {exc}"
        ) from exc
    return answer


def _sampler(name: str, module: nn.Module, config: NoiseConfig) -> tuple[Sampler, str]:
    """The sampler a plugin answered for the module, and its origin for error messages (draws are checked
    by the noise source)."""
    answer, plugin = first_result("nrnn_sampler", name=name, module=module, config=config)
    if not callable(answer):
        raise PluginError(f"plugin {plugin!r} answered nrnn_sampler with {type(answer).__name__}, expected a callable")
    return answer, f"plugin {plugin!r}"


def _device(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None or tensor.device.type == "meta":
        return torch.device("cpu")
    return tensor.device


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
        ValueError: an adapter rejects a module's options, a selected module is already noisy (call
            :func:`remove_noise` first: registering again would restart its noise stream), or no supported
            recurrent module is selected.
        nrnn_plugin.plugins.PluginError: a plugin's hook raised or answered something unusable (the message
            names the plugin).

    On any error the model is left exactly as it was.
    """
    config = NoiseConfig() if config is None else config
    if not isinstance(config, NoiseConfig):
        raise TypeError(f"register_noise: config must be a NoiseConfig, got {type(config).__name__}")
    if overrides:
        config = config.replace(**overrides)
    if not config.enabled:
        return model

    plan: list[tuple[nn.Module, type[NoisyModule], NoiseRuntime]] = []
    unsupported: list[str] = []
    already: list[str] = []
    for name, module in model.named_modules():
        if not _selected(name, config):
            continue
        if runtime_of(module) is not None:
            already.append(_display(name))
            continue
        answer, plugin = first_result("nrnn_noisy_class", module=module, config=config)
        if answer is None:
            if isinstance(module, RECURRENT_BASES):
                unsupported.append(f"{_display(name)} ({_qualname(type(module))})")
            continue
        noisy_class = _checked_class(answer, plugin, name, module)
        resolved = _resolved_config(name, module, config)
        noisy_class.nrnn_validate(module, resolved)
        device = _device(module)
        hidden = int(getattr(module, "hidden_size", 4))
        sampler, origin = _sampler(name, module, resolved)
        source = NoiseSource(_stream_name(model, name), resolved.seed, sampler, origin=origin)
        plan.append((module, noisy_class, NoiseRuntime(resolved, source, _diffusion(resolved, hidden, device))))
    if already:
        raise ValueError(
            f"register_noise: module(s) {', '.join(already)} of {type(model).__name__} are already noisy; registering "
            "again would restart their noise streams. Call nrnn_plugin.remove_noise(model) first, or select other "
            "modules with NoiseConfig.include / exclude"
        )
    if unsupported:
        raise TypeError(
            "register_noise: no adapter supports the recurrent module(s) "
            + ", ".join(unsupported)
            + "; implement the nrnn_noisy_class hook for them (see docs/plugins.md) or leave them out "
            "with NoiseConfig.exclude"
        )
    if not plan:
        selection = f" matching include={list(config.include)} / exclude={list(config.exclude)}"
        raise ValueError(
            f"register_noise: no supported recurrent module found in {type(model).__name__}"
            + (selection if config.include or config.exclude else "")
            + "; supported types are listed by `nrnn plugins`"
        )
    done: list[tuple[nn.Module, type[nn.Module]]] = []
    try:
        for module, noisy_class, runtime in plan:
            original = type(module)
            module.__class__ = cast("type[nn.Module]", noisy_class)  # a subclass of `original` (checked)
            done.append((module, original))
            attach_runtime(module, runtime)
    except BaseException:
        for module, original in reversed(done):
            module.__class__ = original
            detach_runtime(module)
        raise
    return model


def remove_noise(model: ModuleT) -> ModuleT:
    """Restore the original class of every noisy module of ``model``, in place; returns ``model``."""
    for _, module in list(_walk(model)):
        module.__class__ = cast("type[NoisyModule]", type(module)).nrnn_original_class
        detach_runtime(module)
    return model


def noisy_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every noisy module in ``model`` (``""`` for ``model`` itself)."""
    return _walk(model)


def is_noisy(model: nn.Module) -> bool:
    """True when ``model`` or any of its submodules is noisy."""
    return next(_walk(model), None) is not None
