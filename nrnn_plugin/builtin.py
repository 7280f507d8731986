"""Built-in hook implementations: the default schemes and sampler.

Registered first by the plugin manager (and marked ``trylast``), so any plugin can override them through the
same hooks.
"""

from __future__ import annotations

import torch

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.diffusion import BUILTIN_SCHEMES, Diffusion
from nrnn_plugin.hookspecs import hookimpl
from nrnn_plugin.noise import NoiseSource


@hookimpl(trylast=True)
def nrnn_diffusion(config: NoiseConfig, level: float) -> Diffusion:
    return BUILTIN_SCHEMES[config.scheme](config, level)


@hookimpl(trylast=True)
def nrnn_sample_noise(
    source: NoiseSource, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    return source.sample_gaussian(shape, device, dtype)
