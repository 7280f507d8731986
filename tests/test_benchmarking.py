"""The benchmark helpers run end to end on a tiny grid and format their results (no timing assertions)."""

from __future__ import annotations

import csv

import pytest
import torch

from nrnn_plugin.app import benchmarking
from nrnn_plugin.app.benchmarking import CASES, FULL_GRID, QUICK_GRID, LayerSize


def test_tiny_grid_runs_and_formats(tmp_path):
    size = LayerSize(batch=2, steps=3, hidden=4, input_size=2, layers=2)
    timing = {"min_rounds": 1, "max_rounds": 1, "budget_s": 0.0, "min_interval_s": 0.0, "warmup": 0}
    seen = []
    rows = benchmarking.run_layer_benchmark(grid=[size], cases=list(CASES), on_result=seen.append, **timing)
    assert [row["case"] for row in rows] == list(CASES) and seen == rows
    for row in rows:
        assert row["ratio"] > 0 and row["base_ms"] > 0 and row["noisy_ms"] > 0
        assert (row["batch"], row["steps"], row["hidden"], row["layers"]) == (2, 3, 4, 2)
    table = benchmarking.format_markdown(rows)
    lines = table.strip().splitlines()
    assert len(lines) == 3 and all(name in lines[0] for name in CASES)
    path = tmp_path / "out.csv"
    benchmarking.write_csv(rows, path)
    with path.open() as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert benchmarking.read_csv(path) == [{**row, "device": str(row["device"])} for row in rows]


def test_default_grids_and_timing(monkeypatch):
    """Without a grid the harness runs every size of the full grid once per case (the quick grid with --quick, with
    a short timing budget that explicit timing arguments override); measurement is stubbed out."""
    calls = []

    def fake_case(case, size, **kwargs):
        calls.append((case.name, size, kwargs))
        return {"case": case.name, "size": size}

    monkeypatch.setattr(benchmarking, "benchmark_case", fake_case)
    rows = benchmarking.run_layer_benchmark(cases=["gru_add_mult", "eval_registered"])
    assert [(name, size) for name, size, _ in calls] == [
        (name, size) for size in FULL_GRID for name in ("gru_add_mult", "eval_registered")
    ]
    assert len(set(FULL_GRID)) == len(FULL_GRID) and rows == [{"case": n, "size": s} for n, s, _ in calls]
    assert all("budget_s" not in kwargs for _, _, kwargs in calls)  # time_pair's own defaults

    calls.clear()
    benchmarking.run_layer_benchmark(quick=True, cases=["lstm_additive"], budget_s=0.1)
    assert [size for _, size, _ in calls] == list(QUICK_GRID)
    assert calls[0][2]["budget_s"] == 0.1 and calls[0][2]["min_rounds"] == 5  # quick defaults, overridden by hand


def test_errors():
    with pytest.raises(ValueError, match="unknown cases"):
        benchmarking.run_layer_benchmark(grid=[], cases=["nope"])
    with pytest.raises(ValueError, match="min_rounds"):
        benchmarking.time_pair(lambda: None, lambda: None, min_rounds=0)
    with pytest.raises(ValueError, match="clock"):
        benchmarking.time_pair(lambda: None, lambda: None, clock="sundial")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_the_compiled_kernels_keep_no_noise_for_backward(mode):
    """Training memory, counted exactly: with the noise generated inside the compiled kernels (and regenerated in
    backward) a noisy layer saves at most 1.1x what the plain module saves; the Python kernels, which keep the
    drawn noise, save more (so the measure can tell the difference)."""
    from nrnn_testing import compiled_or_skip

    from nrnn_plugin.layers import use_kernel
    from nrnn_plugin.swap import register_noise

    compiled_or_skip()
    size = LayerSize(batch=16, steps=24, hidden=32, input_size=4, layers=2)
    x = torch.randn(size.steps, size.batch, size.input_size)
    plain = benchmarking.saved_bytes(benchmarking.make_module(mode, size), x)
    noisy = register_noise(benchmarking.make_module(mode, size), additive=0.1, multiplicative=0.1)
    with use_kernel("compiled"):
        compiled = benchmarking.saved_bytes(noisy, x)
    with use_kernel("function"):
        python = benchmarking.saved_bytes(noisy, x)
    assert compiled <= 1.1 * plain
    assert python > compiled + 2 * size.steps * size.batch * size.hidden * 4  # at least the two noise planes
