"""The Lightning distributions: which are installed, and one callback base class that belongs to all of them.

Lightning ships as two distributions with separate class trees: ``lightning`` (imported as ``lightning.pytorch``;
used by pytorch-forecasting and GluonTS) and ``pytorch-lightning`` (imported as ``pytorch_lightning``; used by
Darts and NeuralForecast, which do not install ``lightning``). ``lightning.pytorch.Callback`` and
``pytorch_lightning.Callback`` are different classes: a Trainer wraps a single callback into a list only when
it is an instance of its own ``Callback``, and a ``LightningCLI`` (or any framework's type check) accepts only
subclasses of its own ``Callback``.

:func:`callback_base` is the base class of :class:`~nrnn_plugin.integrations.lightning.NoisyRNNCallback`: the
``Callback`` of the one distribution that is installed, or, when both are, a class that subclasses both (the two
``Callback`` classes are plain classes with the same hooks and no state, so the combination is sound). Either
way the callback is a real ``Callback`` of whichever distribution the user's framework runs on.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__all__ = ["DISTRIBUTIONS", "installed_distributions", "callback_base", "MISSING_LIGHTNING"]

#: The import names of the Lightning distributions, in the order their ``Callback`` classes appear as bases.
DISTRIBUTIONS = ("lightning.pytorch", "pytorch_lightning")

MISSING_LIGHTNING = (
    "NoisyRNNCallback needs Lightning, and neither `lightning` nor `pytorch-lightning` is installed: install the "
    "framework you train with (Darts, NeuralForecast, GluonTS and pytorch-forecasting bring one), or "
    "`pip install lightning`"
)


def installed_distributions() -> tuple[str, ...]:
    """The import names of the installed Lightning distributions (a subset of :data:`DISTRIBUTIONS`).

    A distribution counts as installed when its top-level package can be found; a found but broken
    installation raises when :func:`callback_base` imports it, it is never skipped silently.
    """
    return tuple(name for name in DISTRIBUTIONS if importlib.util.find_spec(name.split(".")[0]) is not None)


def callback_base() -> Any:
    """The base class of the callback: every installed distribution's ``Callback`` (see the module docstring).

    Raises:
        ImportError: no Lightning distribution is installed (:data:`MISSING_LIGHTNING`).
    """
    classes = tuple(importlib.import_module(name).Callback for name in installed_distributions())
    if not classes:
        raise ImportError(MISSING_LIGHTNING)
    if len(classes) == 1:
        return classes[0]
    return type(
        "LightningCallback",
        classes,
        {"__module__": __name__, "__doc__": "``Callback`` of every installed Lightning distribution."},
    )
