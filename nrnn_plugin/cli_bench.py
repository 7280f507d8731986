"""``nrnn bench``: how much a Noisy RNN training step costs, as ratios against PyTorch's fused kernels.

Two tables, both timed paired and interleaved in this process (ratios are far more stable than absolute times
on a shared machine):

1. Layers (:func:`nrnn_plugin.benchmarking.run_layer_benchmark`): a training step (forward + backward) of each
   noisy layer divided by the same step of the fused ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` with the same
   weights; ``eval_registered`` is an eval forward with noise registered (should be 1.0x: eval runs the fused
   kernel).
2. Explicit regularizer (:func:`nrnn_plugin.regularizer.benchmark`): a training step with the regularizer
   (``mode="regularizer"``) divided by a plain step, per estimator and number of probes.

Imports only torch and nrnn_plugin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nrnn_plugin import benchmarking
from nrnn_plugin.benchmarking import LayerSize

__all__ = ["BenchSettings", "DEFAULT", "QUICK", "TINY", "BenchResult", "run_bench", "format_regularizer_table"]


@dataclass(frozen=True)
class BenchSettings:
    """What ``nrnn bench`` times: layer sizes, cases and timing budget; the regularizer grid."""

    layer_grid: tuple[LayerSize, ...]
    layer_cases: tuple[str, ...] | None
    layer_timing: dict[str, Any]
    regularizer: dict[str, Any] = field(default_factory=dict)


DEFAULT = BenchSettings(
    layer_grid=(
        LayerSize(64, 24, 32, 8, 1),
        benchmarking.TARGET_SIZE,  # B=64, T=96, H=64
        LayerSize(64, 96, 64, 8, 2),
        LayerSize(256, 96, 128, 8, 1),
        LayerSize(64, 336, 64, 8, 1),
    ),
    layer_cases=None,
    layer_timing={"budget_s": 1.5},
    regularizer={"budget_s": 1.5},
)

QUICK = BenchSettings(
    layer_grid=benchmarking.QUICK_GRID,
    layer_cases=None,
    layer_timing={"min_rounds": 5, "max_rounds": 9, "budget_s": 0.8, "min_interval_s": 0.02},
    regularizer={
        "cells": ("LSTM", "GRU"),
        "noises": ((0.05, 0.02),),
        "cases": (("fd", 1), ("jet", 1)),
        "steps": 48,
        "min_rounds": 5,
        "max_rounds": 9,
        "budget_s": 0.8,
        "min_interval_s": 0.02,
    },
)

# A smoke test of the whole command (the test suite); its numbers mean nothing.
TINY = BenchSettings(
    layer_grid=(LayerSize(4, 6, 8, 4, 1),),
    layer_cases=("lstm_additive", "gru_add_mult", "eval_registered"),
    layer_timing={"min_rounds": 1, "max_rounds": 1, "budget_s": 0.0, "min_interval_s": 0.0, "warmup": 0},
    regularizer={
        "cells": ("GRU",),
        "noises": ((0.05, 0.02),),
        "cases": (("fd", 1),),
        "batch": 4,
        "steps": 6,
        "hidden": 8,
        "input_size": 4,
        "min_rounds": 1,
        "max_rounds": 1,
        "budget_s": 0.0,
        "min_interval_s": 0.0,
        "warmup": 0,
    },
)


@dataclass
class BenchResult:
    layer_rows: list[dict[str, Any]]
    regularizer_rows: list[dict[str, Any]]
    table: str
    files: list[Path]


def format_regularizer_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`nrnn_plugin.regularizer.benchmark` rows."""
    header = [
        "cell", "additive", "multiplicative", "estimator", "probes", "B", "T", "H",
        "plain ms", "regularized ms", "ratio", "kernel",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["cell"], f"{row['additive']:g}", f"{row['multiplicative']:g}", row["estimator"], str(row["probes"]),
            str(row["batch"]), str(row["steps"]), str(row["hidden"]), f"{row['plain_ms']:.1f}",
            f"{row['regularized_ms']:.1f}", f"{row['ratio']:.2f}x", row["kernel"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_bench(
    *,
    quick: bool = False,
    tiny: bool = False,
    clock: str = "wall",
    out_dir: str | Path | None = None,
    reporter: Any = None,
) -> BenchResult:
    """Run both benchmarks; returns the rows and the printable tables (and writes CSVs into ``out_dir``).

    ``clock`` is ``"wall"`` or ``"cpu"`` (process CPU time: robust on a shared machine with one thread; see
    :func:`nrnn_plugin.benchmarking.time_pair`).
    """
    from nrnn_plugin.regularizer import benchmark as regularizer_benchmark

    settings = TINY if tiny else QUICK if quick else DEFAULT
    started = time.perf_counter()

    def progress(row: dict[str, Any]) -> None:
        if reporter is not None:
            reporter.progress(
                f"{row['case']:<18} B={row['batch']:<4} T={row['steps']:<4} H={row['hidden']:<4} L={row['layers']}  "
                f"fused {row['base_ms']:8.2f} ms  noisy {row['noisy_ms']:8.2f} ms  ratio {row['ratio']:.2f}"
            )

    layer_rows = benchmarking.run_layer_benchmark(
        grid=settings.layer_grid,
        cases=list(settings.layer_cases) if settings.layer_cases is not None else None,
        on_result=progress,
        **{**settings.layer_timing, "clock": clock},
    )
    regularizer_rows: list[dict[str, Any]] = []
    cells = settings.regularizer.get("cells", ("LSTM", "GRU", "RNN"))
    for cell in cells:  # one cell at a time, for progress lines
        rows = regularizer_benchmark(**{**settings.regularizer, "cells": (cell,), "clock": clock})
        regularizer_rows.extend(rows)
        if reporter is not None:
            reporter.progress(
                f"regularizer {cell}: " + ", ".join(f"{r['estimator']}x{r['probes']} {r['ratio']:.2f}x" for r in rows)
            )
    elapsed = time.perf_counter() - started
    title = (
        f"nrnn bench{' --quick' if quick else ''}: cpu, torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s), {clock} clock, {elapsed:.0f} s"
    )
    table = "\n".join(
        [
            title,
            "",
            "Training step (forward + backward) of the noisy layer / the fused PyTorch module, same weights "
            "(median over paired rounds; eval_registered: eval forward with noise registered):",
            "",
            benchmarking.format_markdown(layer_rows),
            "Training step with the explicit regularizer (mode='regularizer') / a plain step:",
            "",
            format_regularizer_table(regularizer_rows),
        ]
    ).rstrip()
    files: list[Path] = []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        benchmarking.write_csv(layer_rows, out / "bench_layers.csv")
        benchmarking.write_csv(regularizer_rows, out / "bench_regularizer.csv")
        files = [out / "bench_layers.csv", out / "bench_regularizer.csv"]
    return BenchResult(layer_rows=layer_rows, regularizer_rows=regularizer_rows, table=table, files=files)
