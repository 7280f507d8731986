"""The plugin manager: built-in hooks, entry-point adapters, explicit registration.

Loading order (later registrations are called first by *first result* hooks):

1. :mod:`nrnn_plugin.builtin` - the default schemes and sampler;
2. the adapters that ship with nrnn-plugin (entry points of the ``nrnn-plugin`` distribution);
3. third-party entry points of the ``nrnn_plugin`` group, unless ``NRNN_PLUGIN_DISABLE_AUTOLOAD=1``; when
   ``NRNN_PLUGIN_ALLOWLIST=name1,name2`` is set, only those entry-point names load;
4. plugins passed to :func:`register`.

A plugin that fails to import is skipped with a warning that names it, and :func:`plugin_report` lists it
with the reason (``nrnn plugins`` prints that report).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from nrnn_plugin import hookspecs
from nrnn_plugin.hookspecs import PROJECT_NAME

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginRecord",
    "get_plugin_manager",
    "hook",
    "register",
    "unregister",
    "plugin_report",
    "reset_plugin_manager",
]

ENTRY_POINT_GROUP = "nrnn_plugin"
OWN_DISTRIBUTION = "nrnn-plugin"
DISABLE_AUTOLOAD_VAR = "NRNN_PLUGIN_DISABLE_AUTOLOAD"
ALLOWLIST_VAR = "NRNN_PLUGIN_ALLOWLIST"


@dataclass(frozen=True)
class PluginRecord:
    """One plugin the manager saw: loaded, or skipped with a reason."""

    name: str
    source: str  # "builtin", "entry point <dist>", "registered"
    loaded: bool
    reason: str = ""


_manager: pluggy.PluginManager | None = None
_records: list[PluginRecord] = []


def _normalise(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _allowlist() -> set[str] | None:
    raw = os.environ.get(ALLOWLIST_VAR)
    if raw is None:
        return None
    return {item.strip() for item in raw.split(",") if item.strip()}


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _build() -> pluggy.PluginManager:
    from nrnn_plugin import builtin

    _records.clear()
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="builtin")
    _records.append(PluginRecord("builtin", "builtin", True))

    autoload = not _env_flag(DISABLE_AUTOLOAD_VAR)
    allow = _allowlist()
    own, third_party = [], []
    seen: set[str] = set()
    for ep in _entry_points():
        key = f"{ep.name}={ep.value}"
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        dist = _normalise(ep.dist.name) if ep.dist is not None else ""
        (own if dist == OWN_DISTRIBUTION else third_party).append(ep)

    for ep in own:
        _load_entry_point(pm, ep)
    for ep in third_party:
        dist = ep.dist.name if ep.dist is not None else "?"
        if not autoload:
            _records.append(PluginRecord(ep.name, f"entry point {dist}", False, f"{DISABLE_AUTOLOAD_VAR} is set"))
        elif allow is not None and ep.name not in allow:
            _records.append(PluginRecord(ep.name, f"entry point {dist}", False, f"not in {ALLOWLIST_VAR}"))
        else:
            _load_entry_point(pm, ep)
    return pm


def _load_entry_point(pm: pluggy.PluginManager, ep: metadata.EntryPoint) -> None:
    dist = ep.dist.name if ep.dist is not None else "?"
    source = f"entry point {dist}"
    if pm.has_plugin(ep.name):
        _records.append(PluginRecord(ep.name, source, False, "a plugin with this name is already registered"))
        return
    try:
        plugin = ep.load()
        pm.register(plugin, name=ep.name)
    except Exception as exc:  # a broken third-party plugin must not take the library down
        reason = f"{type(exc).__name__}: {exc}"
        _records.append(PluginRecord(ep.name, source, False, reason))
        warnings.warn(
            f"nrnn-plugin: plugin {ep.name!r} ({ep.value}, from {dist}) failed to load and was skipped: {reason}",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    _records.append(PluginRecord(ep.name, source, True))


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built (and entry points loaded) on first use."""
    global _manager
    if _manager is None:
        _manager = _build()
    return _manager


def hook() -> Any:
    """Shortcut for ``get_plugin_manager().hook``."""
    return get_plugin_manager().hook


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
    removed = pm.unregister(plugin=plugin, name=name)
    label = name or (pm.get_name(plugin) if plugin is not None else None)
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
