"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def fresh_plugins(monkeypatch):
    """A plugin manager rebuilt for the test and again afterwards (env changes do not leak)."""
    from nrnn_plugin.plugins import reset_plugin_manager

    reset_plugin_manager()
    yield
    monkeypatch.undo()
    reset_plugin_manager()
