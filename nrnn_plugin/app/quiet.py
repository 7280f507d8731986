"""What a command's user sees of the frameworks: ``NRNN_DEBUG`` and :func:`quiet_frameworks`.

Used by the subcommands (:mod:`nrnn_plugin.app.commands`) and by the demo's worker processes, never by the
library.
"""

from __future__ import annotations

import os

__all__ = ["DEBUG_VAR", "debug", "quiet_frameworks"]

DEBUG_VAR = "NRNN_DEBUG"


def debug() -> bool:
    """True when ``NRNN_DEBUG`` asks for tracebacks and framework warnings."""
    return os.environ.get(DEBUG_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def quiet_frameworks() -> None:
    """Silence Lightning's info banners and the framework warnings a CLI user cannot act on.

    Called by the subcommands that train or evaluate (never by the library). Each Lightning distribution sets
    its own logger levels on import, so every installed one is imported first (the noise callback imports them
    all anyway). ``NRNN_DEBUG=1`` keeps them.
    """
    if debug():
        return
    import importlib
    import logging
    import warnings

    from nrnn_plugin.integrations.distributions import installed_distributions

    for distribution in installed_distributions():
        importlib.import_module(distribution)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "pytorch_forecasting"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("lightning", "pytorch_lightning", "pytorch_forecasting", "torch", "sklearn"):
        warnings.filterwarnings("ignore", module=module)
        warnings.filterwarnings("ignore", module=module + r"\..*")
    # The noise callback's resume note and the pipeline's own warnings stay visible; Lightning's
    # "does not have many workers" and pytorch-forecasting's "attribute is an nn.Module" notices do not.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module` and is already saved.*")
