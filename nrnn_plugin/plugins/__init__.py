"""Plugins: the hook specifications, the plugin manager and the built-in hook implementations.

* :mod:`.hookspecs`: the hooks an adapter or plugin implements (``nrnn_noisy_class``, ``nrnn_diffusion``, ...);
* :mod:`.manager`: loading (built-ins, the shipped adapters by module path, third-party entry points),
  explicit registration and the report that ``nrnn plugins`` prints;
* :mod:`.builtin`: the default schemes and sampler, implemented through the same hooks.

Writing an adapter is described in ``docs/plugins.md``.
"""

from nrnn_plugin.plugins.hookspecs import hookimpl, hookspec
from nrnn_plugin.plugins.manager import (
    ALLOWLIST_VAR,
    DEFAULT_PLUGINS,
    DISABLE_AUTOLOAD_VAR,
    ENTRY_POINT_GROUP,
    PluginError,
    PluginRecord,
    all_results,
    first_result,
    get_plugin_manager,
    hook,
    plugin_report,
    register,
    reset_plugin_manager,
    unregister,
)

__all__ = [
    "hookimpl",
    "hookspec",
    "ALLOWLIST_VAR",
    "DEFAULT_PLUGINS",
    "DISABLE_AUTOLOAD_VAR",
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginRecord",
    "all_results",
    "first_result",
    "get_plugin_manager",
    "hook",
    "plugin_report",
    "register",
    "reset_plugin_manager",
    "unregister",
]
