"""Built-in hook implementations: the default schemes and sampler.

Registered first by the plugin manager (and marked ``trylast``), so any plugin can override them through the
same hooks.
"""

from __future__ import annotations

from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.diffusion import BUILTIN_SCHEMES, Diffusion
from nrnn_plugin.noise import Sampler, gaussian_sampler
from nrnn_plugin.plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def nrnn_diffusion(config: NoiseConfig) -> Diffusion:
    return BUILTIN_SCHEMES[config.scheme](config)


@hookimpl(trylast=True)
def nrnn_sampler(name: str, module: nn.Module, config: NoiseConfig) -> Sampler:
    return gaussian_sampler
