"""Shared fixtures and the suite's compute settings."""

from __future__ import annotations

import os

import pytest

# The suite's models are tiny: one compute thread is fastest (their matrix products are too small to split, and
# OpenMP workers that spin on a busy 2-core machine cost more than they give). Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def one_compute_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
