"""The plugin manager: built-in hooks, the shipped adapters, third-party entry points, explicit registration.

Loading order (later registrations are called first by *first result* hooks):

1. :mod:`nrnn_plugin.plugins.builtin`: the default schemes and sampler;
2. the adapters that ship with nrnn-plugin (:data:`DEFAULT_PLUGINS`), imported by module path, so they work
   without installed package metadata (a source tree on ``PYTHONPATH``, a zipapp, a vendored copy);
3. third-party entry points of the ``nrnn_plugin`` group, unless ``NRNN_PLUGIN_DISABLE_AUTOLOAD=1``; when
   ``NRNN_PLUGIN_ALLOWLIST=name1,name2`` is set, only those entry-point names load;
4. plugins passed to :func:`register`.

A plugin that fails to import (an exception, or ``sys.exit``) is skipped with a warning that names it, and
:func:`plugin_report` lists it with the reason (``nrnn plugins`` prints that report). ``KeyboardInterrupt`` is
never swallowed.

:func:`first_result` calls a *first result* hook and says which plugin answered; an exception raised inside a
hook is re-raised as :class:`PluginError` naming the plugin.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from nrnn_plugin.plugins import builtin, hookspecs
from nrnn_plugin.plugins.hookspecs import PROJECT_NAME

__all__ = [
    "ENTRY_POINT_GROUP",
    "DEFAULT_PLUGINS",
    "PluginError",
    "PluginRecord",
    "get_plugin_manager",
    "hook",
    "first_result",
    "all_results",
    "register",
    "unregister",
    "plugin_report",
    "reset_plugin_manager",
]

ENTRY_POINT_GROUP = "nrnn_plugin"
DISABLE_AUTOLOAD_VAR = "NRNN_PLUGIN_DISABLE_AUTOLOAD"
ALLOWLIST_VAR = "NRNN_PLUGIN_ALLOWLIST"

#: The adapters that ship with nrnn-plugin: plugin name -> module path (registered in this order).
DEFAULT_PLUGINS: dict[str, str] = {
    "torch": "nrnn_plugin.adapters.torch_adapter",
    "nrnn": "nrnn_plugin.adapters.nrnn_adapter",
    "forecasting": "nrnn_plugin.adapters.forecasting",
    "frameworks": "nrnn_plugin.adapters.frameworks",
}


class PluginError(RuntimeError):
    """A plugin's hook raised or returned something the library cannot use; the message names the plugin."""


@dataclass(frozen=True)
class PluginRecord:
    """One plugin the manager saw: loaded, or skipped with a reason."""

    name: str
    source: str  # "builtin", "shipped", "entry point <dist>", "registered"
    loaded: bool
    reason: str = ""


_manager: pluggy.PluginManager | None = None
_records: list[PluginRecord] = []


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _allowlist() -> set[str] | None:
    raw = os.environ.get(ALLOWLIST_VAR)
    if raw is None:
        return None
    return {item.strip() for item in raw.split(",") if item.strip()}


def _entry_points() -> list[metadata.EntryPoint]:
    """Third-party entry points of the group, sorted by name, each once (a distribution seen twice on
    ``sys.path`` lists its entry points twice)."""
    unique = {(ep.name, ep.value): ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(unique.values(), key=lambda ep: ep.name)


def _skip(name: str, source: str, what: str, exc: BaseException) -> None:
    reason = f"{type(exc).__name__}: {exc}"
    _records.append(PluginRecord(name, source, False, reason))
    warnings.warn(
        f"nrnn-plugin: plugin {name!r} ({what}) failed to load and was skipped: {reason}",
        RuntimeWarning,
        stacklevel=4,
    )


def _load(pm: pluggy.PluginManager, name: str, source: str, what: str, loader: Any) -> None:
    if pm.has_plugin(name):
        _records.append(PluginRecord(name, source, False, "a plugin with this name is already registered"))
        return
    try:
        plugin = loader()
        pm.register(plugin, name=name)
    except (Exception, SystemExit) as exc:  # a broken plugin must not take the library down
        _skip(name, source, what, exc)
        return
    _records.append(PluginRecord(name, source, True))


def _build() -> pluggy.PluginManager:
    _records.clear()
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="builtin")
    _records.append(PluginRecord("builtin", "builtin", True))
    for name, path in DEFAULT_PLUGINS.items():
        _load(pm, name, "shipped", path, lambda path=path: importlib.import_module(path))

    autoload = not _env_flag(DISABLE_AUTOLOAD_VAR)
    allow = _allowlist()
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else "?"
        source = f"entry point {dist}"
        if ep.value in DEFAULT_PLUGINS.values():  # an installed copy of this project's own metadata
            continue
        if not autoload:
            _records.append(PluginRecord(ep.name, source, False, f"{DISABLE_AUTOLOAD_VAR} is set"))
        elif allow is not None and ep.name not in allow:
            _records.append(PluginRecord(ep.name, source, False, f"not in {ALLOWLIST_VAR}"))
        else:
            _load(pm, ep.name, source, f"{ep.value}, from {dist}", ep.load)
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built (and entry points loaded) on first use."""
    global _manager
    if _manager is None:
        _manager = _build()
    return _manager


def hook() -> Any:
    """Shortcut for ``get_plugin_manager().hook``."""
    return get_plugin_manager().hook


def first_result(hook_name: str, **kwargs: Any) -> tuple[Any, str | None]:
    """Call the *first result* hook ``hook_name``; returns ``(result, name of the plugin that answered)``.

    ``(None, None)`` when no plugin answered. An exception raised inside a hook is re-raised as
    :class:`PluginError` (chained) naming the plugin and the hook. Hook wrappers are honoured by falling back
    to pluggy's own call (then the answering plugin is not known: ``None``).
    """
    caller = getattr(hook(), hook_name)
    impls = caller.get_hookimpls()
    if any(impl.hookwrapper or getattr(impl, "wrapper", False) for impl in impls):
        return caller(**kwargs), None
    for impl in reversed(impls):  # pluggy calls the last registered (and tryfirst) first
        try:
            result = impl.function(*(kwargs[arg] for arg in impl.argnames))
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} raised {type(exc).__name__} in hook {hook_name}: {exc}"
            ) from exc
        if result is not None:
            return result, impl.plugin_name
    return None, None


def all_results(hook_name: str, **kwargs: Any) -> list[tuple[Any, str]]:
    """Call the *all results* hook ``hook_name``; returns ``[(result, plugin name)]`` for every non-``None`` result.

    Plugins are called in pluggy's order (the last registered first). An exception raised inside a hook is
    re-raised as :class:`PluginError` naming the plugin and the hook.
    """
    results: list[tuple[Any, str]] = []
    for impl in reversed(getattr(hook(), hook_name).get_hookimpls()):
        try:
            result = impl.function(*(kwargs[arg] for arg in impl.argnames))
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} raised {type(exc).__name__} in hook {hook_name}: {exc}"
            ) from exc
        if result is not None:
            results.append((result, impl.plugin_name))
    return results


def register(plugin: object, name: str | None = None) -> str:
    """Register a plugin object or module explicitly; returns its name. Later plugins are called first."""
    pm = get_plugin_manager()
    registered = pm.register(plugin, name=name)
    if registered is None:
        raise ValueError(f"plugin {name or plugin!r} is already registered or blocked")
    _records.append(PluginRecord(registered, "registered", True))
    return registered


def unregister(plugin: object | None = None, name: str | None = None) -> None:
    """Remove a plugin registered with :func:`register` (by object or by name)."""
    pm = get_plugin_manager()
    label = name or (pm.get_name(plugin) if plugin is not None else None)
    removed = pm.unregister(plugin=plugin, name=name)
    if removed is not None:
        _records[:] = [r for r in _records if not (r.source == "registered" and r.name == label)]


def plugin_report() -> list[dict[str, Any]]:
    """Every plugin seen, loaded or skipped, with adapter details where the plugin provides them."""
    pm = get_plugin_manager()
    report = []
    for record in _records:
        entry: dict[str, Any] = {"name": record.name, "source": record.source, "loaded": record.loaded}
        if record.reason:
            entry["reason"] = record.reason
        plugin = pm.get_plugin(record.name) if record.loaded else None
        info_fn = getattr(plugin, "nrnn_adapter_info", None)
        if info_fn is not None:
            entry["adapter"] = info_fn()
        report.append(entry)
    return report


def reset_plugin_manager() -> None:
    """Forget the manager so the next use rebuilds it (re-reads entry points and environment variables)."""
    global _manager
    _manager = None
    _records.clear()
