"""Trained runs as a user handles them: forecasts with real dates, stopping with a signal, files that attack.

Every test drives ``python -m nrnn_plugin`` in a subprocess. Data is real and ships offline: statsmodels
macrodata (quarterly, three series stacked with a group id), elec_equip (monthly) and sunspots (yearly).
"""

from __future__ import annotations

import os
import pickle
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import (
    SMALL_RUN,
    assert_input_error,
    cli_env,
    elec_equip_frame,
    macro_frame,
    nrnn,
    sunspots_frame,
    write_run,
)

pytest.importorskip("pytorch_forecasting")
pytest.importorskip("statsmodels")

MACRO_RUN = """\
data:
  path: macro.csv
  time: quarter
  freq: null
  target: value
  group_ids: [series]
  static_categoricals: [series]
  max_encoder_length: 12
  max_prediction_length: 4
  normalizer: encoder
  validation: 16
  test: 16
model:
  class: RecurrentNetwork
  hidden_size: 8
  loss: MAE
trainer:
  max_epochs: 1
  limit_train_batches: 3
noise:
  additive: 0.05
  seed: 0
output:
  dir: runs/macro
"""


@pytest.fixture(scope="module")
def macro_run(tmp_path_factory) -> Path:
    """A tiny quarterly run (freq inferred: QS-OCT), trained once for the tests of this module."""
    folder = tmp_path_factory.mktemp("macro")
    macro_frame().to_csv(folder / "macro.csv", index=False)
    run = write_run(folder / "run.yaml", MACRO_RUN)
    result = nrnn("train", "--config", str(run), cwd=folder.parent)  # data.path is relative to the run file
    assert result.returncode == 0, result.stderr
    return folder / "runs" / "macro"


# ---------------------------------------------------------------------------------------------- predict


def test_predict_writes_forecasts_with_the_real_quarters(macro_run, tmp_path):
    data = macro_run.parent.parent / "macro.csv"
    result = nrnn("predict", "--run", str(macro_run), "--data", str(data), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "3 series x 4 steps, 2009-10-01 .. 2010-07-01" in result.stdout
    forecasts = pd.read_csv(tmp_path / "out" / "forecasts.csv")
    assert list(forecasts.columns) == ["series", "quarter", "horizon", "forecast"]
    assert sorted(set(forecasts["series"])) == ["cpi", "realcons", "realgdp"]
    one = forecasts[forecasts["series"] == "cpi"]
    assert list(one["quarter"]) == ["2009-10-01", "2010-01-01", "2010-04-01", "2010-07-01"]
    assert list(one["horizon"]) == [1, 2, 3, 4] and one["forecast"].notna().all()

    # The Python call gives the same table.
    from nrnn_plugin.app.predict import predict

    frame = predict(macro_run, data)
    assert frame["quarter"].dt.strftime("%Y-%m-%d").tolist() == forecasts["quarter"].tolist()
    pd.testing.assert_series_equal(frame["forecast"], forecasts["forecast"], check_dtype=False, atol=1e-5)


def test_predict_from_the_latest_history_only_with_monte_carlo_quantiles(macro_run, tmp_path):
    latest = macro_frame().groupby("series").tail(12)  # exactly max_encoder_length quarters per series
    latest.to_csv(tmp_path / "latest.csv", index=False)
    result = nrnn(
        "predict",
        "--run",
        str(macro_run),
        "--data",
        str(tmp_path / "latest.csv"),
        "--out",
        str(tmp_path / "o"),
        "--samples",
        "40",
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.stderr
    forecasts = pd.read_csv(tmp_path / "o" / "forecasts.csv")
    levels = ["q0.05", "q0.1", "q0.25", "q0.5", "q0.75", "q0.9", "q0.95"]
    assert list(forecasts.columns) == ["series", "quarter", "horizon", "forecast", *levels]
    assert (forecasts[levels].diff(axis=1).iloc[:, 1:] >= 0).all().all()  # quantiles are ordered
    assert (forecasts["q0.95"] > forecasts["q0.05"]).all()  # the hidden noise spreads the paths

    too_short = macro_frame().groupby("series").tail(5)
    too_short.to_csv(tmp_path / "short.csv", index=False)
    assert_input_error(
        nrnn("predict", "--run", str(macro_run), "--data", str(tmp_path / "short.csv"), "--out", str(tmp_path / "s")),
        "series 'cpi' has 5 observed step(s); the model reads 12",
    )
    assert not (tmp_path / "s").exists()


def test_a_monthly_run_with_given_freq_forecasts_month_starts(tmp_path):
    elec_equip_frame().to_csv(tmp_path / "elec.csv", index=False)
    text = (
        MACRO_RUN.replace("macro.csv", "elec.csv")
        .replace("time: quarter", "time: month")
        .replace("freq: null", "freq: M")  # the period alias: read as the dates' anchor (MS)
        .replace("target: value", "target: orders")
        .replace("  group_ids: [series]\n  static_categoricals: [series]\n", "")
    )
    run = write_run(tmp_path / "run.yaml", text)
    result = nrnn("train", "--config", str(run))
    assert result.returncode == 0, result.stderr
    assert "data.freq 'M' read as 'MS'" in result.stderr
    result = nrnn("predict", "--run", str(tmp_path / "runs" / "macro"), "--data", str(tmp_path / "elec.csv"))
    assert result.returncode == 0, result.stderr
    forecasts = pd.read_csv(tmp_path / "runs" / "macro" / "predictions" / "forecasts.csv")
    assert list(forecasts["month"]) == ["2016-06-01", "2016-07-01", "2016-08-01", "2016-09-01"]


# ---------------------------------------------------------------------------------------------- signals


def _stderr_lines(process: subprocess.Popen) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_train_and_leaves_the_previous_run_untouched(macro_run, tmp_path, sig, status):
    target = tmp_path / "run"
    shutil.copytree(macro_run, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    sunspots_frame().to_csv(tmp_path / "sunspots.csv", index=False)
    text = SMALL_RUN.format(data=tmp_path / "sunspots.csv", out=target).replace("max_epochs: 2", "max_epochs: 5000")
    run = write_run(tmp_path / "run.yaml", text)
    process = subprocess.Popen(
        [sys.executable, "-m", "nrnn_plugin", "train", "--config", str(run), "--overwrite"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    lines, seen, deadline = _stderr_lines(process), [], time.monotonic() + 120
    while time.monotonic() < deadline:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, "".join(seen)
        seen.append(line)
        if re.search(r"epoch +2/5000", line):  # training is under way, with a staging folder beside the target
            break
    else:
        raise AssertionError("training did not start in time: " + "".join(seen))
    assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    process.send_signal(sig)
    process.wait(timeout=60)
    stdout = process.stdout.read()
    while (line := lines.get(timeout=30)) is not None:  # the reader thread drains stderr to its end
        seen.append(line)
    stderr = "".join(seen)
    assert process.returncode == status, stderr
    assert f"nrnn train: stopped by {signal.Signals(sig).name}; outputs left as they were" in stderr
    assert "Traceback" not in stderr and stdout == ""
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.yaml", "sunspots.csv"]  # staging removed


# ---------------------------------------------------------------------------------------------- hostile files


class _Payload:
    """Unpickling this object runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _attack(name: str, run: Path, marker: Path) -> None:
    """Replace the artifact ``name`` of ``run`` by a file whose loading would create ``marker``."""
    import torch

    payload = _Payload(marker)
    if name == "sidecar (pickle)":
        (run / "model.nrnn.json").write_bytes(pickle.dumps(payload))
    elif name == "legacy sidecar":
        (run / "model.nrnn.json").unlink()
        torch.save({"format": "nrnn-run", "version": 1, "x": payload}, run / "model.nrnn.pt")
    elif name == "checkpoint (torch.save)":
        torch.save({"state_dict": {}, "hyper_parameters": {"loss": payload}}, run / "model.ckpt")
    elif name == "checkpoint (bare pickle)":
        (run / "model.ckpt").write_bytes(pickle.dumps(payload))
    else:
        raise AssertionError(name)


#: artifact -> (the command that reads it in the test, the error it must give); both commands read runs through
#: the same loader (nrnn_plugin.app.runs.load_run), each is exercised with a sidecar and a checkpoint attack.
ATTACKS = {
    "sidecar (pickle)": ("robustness", "is not an nrnn-plugin run sidecar (expected JSON); it was not executed"),
    "legacy sidecar": ("predict", "is the pickled sidecar of an older nrnn-plugin, which is never read"),
    "checkpoint (torch.save)": (
        "predict",
        "not a checkpoint that can be loaded safely (Trying to load unsupported GLOBAL",
    ),
    "checkpoint (bare pickle)": ("robustness", "is not a checkpoint written by torch.save (not a zip archive)"),
}


@pytest.mark.parametrize("artifact", list(ATTACKS))
def test_a_hostile_run_artifact_is_refused_without_running_it(macro_run, tmp_path, artifact):
    run = tmp_path / "run"
    shutil.copytree(macro_run, run)
    marker = tmp_path / "PWNED"
    _attack(artifact, run, marker)
    data = macro_run.parent.parent / "macro.csv"
    command, message = ATTACKS[artifact]
    option = "--run" if command == "predict" else "--checkpoint"
    assert_input_error(nrnn(command, option, str(run), "--data", str(data), "--out", str(tmp_path / "o")), message)
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


def test_a_hostile_run_file_or_data_file_is_refused_without_running_it(macro_run, tmp_path):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run.yaml"
    run.write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_input_error(nrnn("train", "--config", str(run)), "not valid YAML", "could not determine a constructor")
    data = macro_run.parent.parent / "macro.csv"
    for name in ("data.csv", "data.parquet"):
        (tmp_path / name).write_bytes(pickle.dumps(_Payload(marker)))
        for argv in (
            ("predict", "--run", str(macro_run), "--data", str(tmp_path / name), "--out", str(tmp_path / "p")),
            (
                "train",
                "--config",
                str(macro_run / "run.yaml"),
                "--data",
                str(tmp_path / name),
                "--out",
                str(tmp_path / "t"),
            ),
        ):
            assert_input_error(nrnn(*argv), name)
        assert not marker.exists(), name
    # the run file that train wrote is a valid run file again (absolute paths), and the data it names is fine
    assert data.is_file() and "path: " + str(data) in (macro_run / "run.yaml").read_text()


# ---------------------------------------------------------------------------------------------- variants


def test_named_variants_over_training_seeds_are_compared_paired_by_seed(tmp_path):
    sunspots_frame().to_csv(tmp_path / "sunspots.csv", index=False)
    for seed in (0, 1):
        text = SMALL_RUN.format(data=tmp_path / "sunspots.csv", out="x").replace(
            "limit_train_batches: 3", f"limit_train_batches: 3\n  seed: {seed}"
        )
        run = write_run(tmp_path / f"run{seed}.yaml", text)
        for variant, extra in (("noisy", ()), ("plain", ("--no-noise",))):
            out = tmp_path / "runs" / f"{variant}_{seed}"
            result = nrnn("train", "--config", str(run), "--out", str(out), "--max-epochs", "1", "--quiet", *extra)
            assert result.returncode == 0, result.stderr
    runs = tmp_path / "runs"
    result = nrnn(
        "robustness",
        "--checkpoint",
        f"plain={runs}/plain_*",
        "--checkpoint",
        f"noisy={runs}/noisy_*",
        "--data",
        str(tmp_path / "sunspots.csv"),
        "--perturbations",
        "white_noise",
        "--strengths",
        "0.4",
        "--seeds",
        "1",
        "--metric",
        "mae",
        "--out",
        str(tmp_path / "report"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == f"  plain: RecurrentNetwork; 2 run(s), seeds 0, 1 ({runs}/plain_*)"
    header = next(line for line in lines if line.startswith("perturbation"))
    assert header.split() == ["perturbation", "strength", "plain", "MAE", "noisy", "MAE", "noisy", "vs", "plain"]
    clean = next(line for line in lines if line.startswith("clean "))
    assert " ± " in clean and "/2 improved" in clean and "[" in clean  # mean ± std, paired change with its CI
    results = pd.read_csv(tmp_path / "report" / "robustness.csv")
    assert sorted(set(results["train_seed"])) == [0, 1] and set(results["variant"]) == {"plain", "noisy"}
    assert_input_error(
        nrnn("robustness", "--checkpoint", f"a={runs}/none_*", "--data", str(tmp_path / "sunspots.csv")),
        "no run folder or checkpoint matches",
    )


# ---------------------------------------------------------------------------------------------- calendars, bad input


def _calendar_table(kind: str) -> tuple[pd.DataFrame, str]:
    """A table on the calendar ``kind`` and the date of its last row: real data where it ships offline."""
    import numpy as np
    import statsmodels.api as sm

    if kind == "YE":  # sunspots, yearly, as year-end dates
        frame = sunspots_frame()
        frame["date"] = pd.to_datetime(frame["year"].astype(str) + "-12-31").dt.strftime("%Y-%m-%d")
        return frame[["date", "spots"]].rename(columns={"spots": "y"}), "2008-12-31"
    if kind == "W-SAT":  # Mauna Loa CO2, weekly on Saturdays
        frame = sm.datasets.co2.load_pandas().data.reset_index(names="date").iloc[:400]
        frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
        return frame.rename(columns={"co2": "y"}), frame["date"].iloc[-1]
    dates = pd.date_range("2024-01-01", periods=300, freq=kind)  # hourly or business days: no offline set
    values = np.sin(np.arange(300) / 7.0) + 0.01 * np.arange(300)
    return pd.DataFrame({"date": dates.strftime("%Y-%m-%d %H:%M:%S"), "y": values}), str(dates[-1])


@pytest.mark.parametrize(
    "kind, freq, first_forecast",
    [("YE", "null", "2009-12-31"), ("W-SAT", "W", "1965-11-27"), ("h", "null", "2024-01-13 12:00:00"),
     ("B", "B", "2025-02-24")],
    ids=["yearly end (inferred)", "weekly (W read as W-SAT)", "hourly (inferred)", "business days (given)"],
)  # fmt: skip
def test_train_and_predict_on_other_calendars(tmp_path, kind, freq, first_forecast):
    frame, _ = _calendar_table(kind)
    frame.to_csv(tmp_path / "d.csv", index=False)
    text = (
        MACRO_RUN.replace("macro.csv", "d.csv")
        .replace("time: quarter", "time: date")
        .replace("freq: null", f"freq: {freq}")
        .replace("target: value", "target: y")
        .replace("  group_ids: [series]\n  static_categoricals: [series]\n", "")
    )
    run = write_run(tmp_path / "run.yaml", text)
    result = nrnn("train", "--config", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    result = nrnn("predict", "--run", str(tmp_path / "runs" / "macro"), "--data", str(tmp_path / "d.csv"), "--quiet")
    assert result.returncode == 0, result.stderr
    forecasts = pd.read_csv(tmp_path / "runs" / "macro" / "predictions" / "forecasts.csv")
    assert forecasts["date"].iloc[0] == first_forecast and list(forecasts["horizon"]) == [1, 2, 3, 4]


BAD_INPUT = {
    "config folder": (lambda d: ["--config", str(d)], "--config: '{d}' is a folder; expected a run file (YAML)"),
    "txt data": (lambda d: ["--data", str(d / "d.txt")], "expected one of the suffixes"),
    "infinite target": (lambda d: ["--data", str(d / "inf.csv")], "column 'y' has 1 infinite value(s) (rows [7])"),
    "bad date": (lambda d: ["--data", str(d / "date.csv")], "(first at row 10: '2024-01-1x')"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_naming_what_is_wrong(tmp_path, case):
    frame, _ = _calendar_table("D")
    frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%Y-%m-%d")
    frame.to_csv(tmp_path / "d.txt", index=False)
    frame.assign(y=frame["y"].where(frame.index != 7, float("inf"))).to_csv(tmp_path / "inf.csv", index=False)
    frame.assign(date=frame["date"].where(frame.index != 10, "2024-01-1x")).to_csv(tmp_path / "date.csv", index=False)
    single = MACRO_RUN.replace("  group_ids: [series]\n  static_categoricals: [series]\n", "")
    run = write_run(
        tmp_path / "run.yaml", single.replace("time: quarter", "time: date").replace("target: value", "target: y")
    )
    argv, message = BAD_INPUT[case]
    args = argv(tmp_path)
    if case != "config folder":
        args = ["--config", str(run), *args]
    assert_input_error(nrnn("train", *args), message.format(d=tmp_path))


def test_unknown_reals_with_a_recurrent_network_names_the_role_to_change(tmp_path):
    text = MACRO_RUN.replace("  static_categoricals: [series]\n", "  unknown_reals: [other]\n")
    run = write_run(tmp_path / "run.yaml", text)
    assert_input_error(
        nrnn("train", "--config", str(run)),
        "data.unknown_reals: RecurrentNetwork decodes autoregressively",
        "move ['other'] to data.known_reals",
    )
