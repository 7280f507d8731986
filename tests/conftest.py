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


@pytest.fixture
def fresh_plugins(monkeypatch):
    """A plugin manager rebuilt for the test and again afterwards (env changes do not leak)."""
    from nrnn_plugin.plugins import reset_plugin_manager

    reset_plugin_manager()
    yield
    monkeypatch.undo()
    reset_plugin_manager()
