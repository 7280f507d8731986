"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["compiled", "python"])
def kernel_backend(request):
    """Run the test on both kernel back-ends: the compiled CPU kernels and the Python kernels (what a machine
    without a C++ compiler runs; ``use_kernel("fused")``: the fused LSTM path where exact, the hand-written
    Python kernels elsewhere). Yields the back-end's name."""
    from nrnn_testing import compiled_or_skip

    from nrnn_plugin.layers import use_kernel

    if request.param == "compiled":
        compiled_or_skip()
    with use_kernel("compiled" if request.param == "compiled" else "fused"):
        yield request.param


@pytest.fixture
def fresh_plugins(monkeypatch):
    """A plugin manager rebuilt for the test and again afterwards (env changes do not leak)."""
    from nrnn_plugin.plugins import reset_plugin_manager

    reset_plugin_manager()
    yield
    monkeypatch.undo()
    reset_plugin_manager()
