"""The forecasting / Lightning examples: time splits without leakage, and a one-epoch smoke run."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("statsmodels")
pytest.importorskip("lightning")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # lightning_cli imports lightning_sunspots
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_co2_split_is_in_time_order_and_test_is_held_out():
    pytest.importorskip("pytorch_forecasting")
    example = _load("forecasting_co2")
    data = example.load_co2()
    assert len(data) == 2284 and not data.co2.isna().any()
    training, validation, test = example.datasets(data)
    train_end, val_end = int(len(data) * 0.70), int(len(data) * 0.85)
    first_prediction = lambda ds: ds.decoded_index.time_idx_first_prediction  # noqa: E731
    last_prediction = lambda ds: ds.decoded_index.time_idx_last  # noqa: E731
    assert last_prediction(training).max() < train_end
    assert first_prediction(validation).min() >= train_end and last_prediction(validation).max() < val_end
    assert first_prediction(test).min() >= val_end and len(test) > 0


def test_lightning_sunspots_smoke(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = _load("lightning_sunspots")
    data = example.SunspotData()
    sizes = {k: len(v) for k, v in data.parts.items()}
    assert sizes == {"train": 309 - 60 - 30 - 24, "val": 30, "test": 60}
    mse = example.run({"additive": 0.1, "schedule": {"kind": "linear", "warmup": 3}}, epochs=1, seed=0)
    assert math.isfinite(mse)
    assert _load("lightning_cli").main  # the CLI example imports
