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


def compiled_or_skip() -> None:
    """Load the compiled kernels, or skip where they cannot exist here (``NRNN_KERNELS=python``, no C++ compiler).

    A machine WITH a compiler on which they fail to build fails the test (the reason is in the error).
    """
    import os
    import shutil

    import pytest

    from nrnn_plugin.compiled import build

    if os.environ.get("NRNN_KERNELS", "").strip().lower() == "python":
        pytest.skip("NRNN_KERNELS=python: the compiled kernels are switched off")
    if shutil.which(os.environ.get("CXX", "c++")) is None and not build.loaded():
        pytest.skip("no C++ compiler: the compiled kernels cannot be built here")
    build.require()


def compiled_backward(tensor: torch.Tensor) -> bool:
    """True when a compiled operator's backward node is in the autograd graph behind ``tensor``."""
    stack, seen = [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "nrnn_" in type(node).__name__ and "_forward" in type(node).__name__:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def runtimes(model):
    """The runtimes of every noisy module of ``model``, in module order (public API: ``noise_runtimes``)."""
    from nrnn_plugin.runtime import noise_runtimes

    return [runtime for _, runtime in noise_runtimes(model)]
