"""nrnn-plugin: train existing RNN/LSTM/GRU models as Noisy RNNs.

Noise from a discretised stochastic differential equation is injected into the hidden states at every time
step during training (Lim, Erichson, Hodgkinson, Mahoney, "Noisy Recurrent Neural Networks", NeurIPS 2021);
evaluation runs the original fused forward. ``import nrnn_plugin`` needs torch and pluggy only; Lightning and
pytorch-forecasting are imported by the pieces that use them.

>>> import nrnn_plugin as nrnn
>>> cfg = nrnn.NoiseConfig(additive=0.05, multiplicative=0.02, seed=0)
>>> model = nrnn.register_noise(torch.nn.LSTM(8, 32), cfg)   # doctest: +SKIP

The rooms of the package and what each may import are drawn in ``docs/design.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nrnn_plugin.config import NoiseConfig, Schedule
from nrnn_plugin.plugins.hookspecs import hookimpl
from nrnn_plugin.swap import is_noisy, noisy_modules, register_noise, remove_noise

if TYPE_CHECKING:
    from nrnn_plugin.integrations.lightning import NoisyRNNCallback
    from nrnn_plugin.layers.nrnn import NRNN
    from nrnn_plugin.regularizer import explicit_regularizer

__version__ = "0.2.0"

__all__ = [
    "NoiseConfig",
    "Schedule",
    "register_noise",
    "remove_noise",
    "is_noisy",
    "noisy_modules",
    "explicit_regularizer",
    "NoisyRNNCallback",
    "NRNN",
    "hookimpl",
]

# Public names defined in modules that are imported on first use (optional dependencies, heavier code).
_LAZY = {
    "explicit_regularizer": ("nrnn_plugin.regularizer", "explicit_regularizer"),
    "NoisyRNNCallback": ("nrnn_plugin.integrations.lightning", "NoisyRNNCallback"),
    "NRNN": ("nrnn_plugin.layers.nrnn", "NRNN"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nrnn_plugin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
