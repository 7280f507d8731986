"""Driving ``nrnn`` as a user does (subprocesses) and the real data the CLI tests use (statsmodels, offline)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

EXIT_INPUT = 2


def nrnn(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """Run ``python -m nrnn_plugin ARGS`` (what the ``nrnn`` console script runs)."""
    return subprocess.run(
        [sys.executable, "-m", "nrnn_plugin", *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra or {})}
    env.pop("NRNN_DEBUG", None)
    return env


def assert_input_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, no traceback, exactly one non-progress line on stderr holding every fragment."""
    assert result.returncode == EXIT_INPUT, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def write_run(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def sunspots_frame() -> pd.DataFrame:
    """Yearly sunspot numbers 1700-2008 (statsmodels): ``year`` (int), ``spots``."""
    import statsmodels.api as sm

    data = sm.datasets.sunspots.load_pandas().data
    return data.rename(columns={"YEAR": "year", "SUNACTIVITY": "spots"}).astype({"year": int})


def macro_frame() -> pd.DataFrame:
    """statsmodels macrodata, quarterly 1959-2009, three series stacked with a group id (``quarter`` dates)."""
    import statsmodels.api as sm

    macro = sm.datasets.macrodata.load_pandas().data
    quarters = pd.date_range("1959-01-01", periods=len(macro), freq="QS-OCT").strftime("%Y-%m-%d")
    series = {"realgdp": macro["realgdp"], "realcons": macro["realcons"], "cpi": macro["cpi"]}
    return pd.concat(
        [pd.DataFrame({"quarter": quarters, "series": name, "value": values}) for name, values in series.items()],
        ignore_index=True,
    )


def elec_equip_frame() -> pd.DataFrame:
    """Eurostat electrical equipment orders (statsmodels elec_equip), monthly 1995-2016, month-start dates."""
    from statsmodels.datasets import elec_equip

    frame = elec_equip.load_pandas().data.reset_index()
    frame.columns = ["month", "orders"]
    frame["month"] = pd.to_datetime(frame["month"]).dt.strftime("%Y-%m-%d")
    return frame


SMALL_RUN = """\
data:
  path: {data}
  time: year
  target: spots
  max_encoder_length: 12
  max_prediction_length: 4
  normalizer: group
  validation: 30
  test: 30
model:
  class: RecurrentNetwork
  hidden_size: 8
  rnn_layers: 1
  dropout: 0.0
  learning_rate: 0.01
  loss: MAE
trainer:
  max_epochs: 2
  batch_size: 32
  limit_train_batches: 3
noise:
  additive: 0.1
  multiplicative: 0.05
  seed: 0
output:
  dir: {out}
"""
