"""The forecasting / Lightning examples: time splits without leakage, and a one-epoch smoke run."""

from __future__ import annotations

import importlib.util
import math
import os
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


def test_lightning_cli_example_trains_with_the_callback_from_its_yaml(tmp_path):
    """The LightningCLI example, run as its docstring says with a tiny budget, trains with the NoisyRNNCallback its
    YAML declares: the checkpoint holds the callback's config and the noise stream of the model's LSTM."""
    import subprocess

    import torch

    env = {key: value for key, value in os.environ.items() if not key.startswith("NRNN_")}
    env["NRNN_ADDITIVE"] = "0.2"  # use_env: true in the YAML, so the environment overrides its level
    env.setdefault("OMP_NUM_THREADS", "1")  # a tiny model: one thread, no workers spinning on a busy machine
    command = [
        sys.executable,
        str(EXAMPLES / "lightning_cli.py"),
        "fit",
        "--config",
        str(EXAMPLES / "lightning_cli.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    state = torch.load(checkpoint, weights_only=False)["callbacks"]["NoisyRNNCallback"]  # written by this test
    assert state["config"]["additive"] == 0.2 and state["config"]["multiplicative"] == 0.05
    assert state["config"]["schedule"]["kind"] == "cosine" and list(state["sources"][0]) == ["lstm"]
