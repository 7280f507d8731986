"""Built-in hook implementations: the default schemes and sampler (the counter-based stream).

Registered first by the plugin manager (and marked ``trylast``), so any plugin can override them through the
same hooks.
"""

from __future__ import annotations

from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.diffusion import BUILTIN_SCHEMES, Diffusion
from nrnn_plugin.noise import Sampler, counter_stream
from nrnn_plugin.plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def nrnn_diffusion(config: NoiseConfig) -> Diffusion:
    return BUILTIN_SCHEMES[config.scheme](config)


@hookimpl(trylast=True)
def nrnn_sampler(name: str, module: nn.Module, config: NoiseConfig) -> Sampler:
    return counter_stream
