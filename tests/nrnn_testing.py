"""Test helpers importable from every test module (tests/ is on sys.path via pytest's pythonpath)."""

from __future__ import annotations

import torch

from nrnn_plugin.noise import NoiseSource


class ZeroNoise(NoiseSource):
    """A source whose draws are all zero: the noisy (unrolled) path must then equal the plain module."""

    def _sample(self, shape, device, dtype):  # type: ignore[no-untyped-def]
        return torch.zeros(shape, device=device, dtype=dtype)


class GeneratedNoise(NoiseSource):
    """Draws from a fixed generator, recording every draw so tests can rebuild the injected noise."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__("generated", seed=seed)
        self.generator_ = torch.Generator().manual_seed(seed)
        self.history: list[torch.Tensor] = []

    def _sample(self, shape, device, dtype):  # type: ignore[no-untyped-def]
        draw = torch.randn(shape, generator=self.generator_, dtype=torch.float64).to(device=device, dtype=dtype)
        self.history.append(draw)
        return draw


def runtimes(model):
    """The runtimes of every noisy module of ``model``, in module order (public API: ``noise_runtimes``)."""
    from nrnn_plugin.runtime import noise_runtimes

    return [runtime for _, runtime in noise_runtimes(model)]
