"""``nrnn bench``: how much a Noisy RNN training step costs, as ratios against PyTorch's fused kernels.

Two tables, both timed paired and interleaved in this process (ratios are far more stable than absolute times
on a shared machine):

1. Layers (:func:`nrnn_plugin.app.benchmarking.run_layer_benchmark`): a training step (forward + backward) of each
   noisy layer divided by the same step of the fused ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` with the same
   weights; ``eval_registered`` is an eval forward with noise registered (should be 1.0x: eval runs the fused
   kernel).
2. Explicit regularizer (:func:`regularizer_benchmark`): a training step with the regularizer
   (``mode="regularizer"``) divided by a plain step, per estimator and number of probes.

Imports only torch and nrnn_plugin.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nrnn_plugin.app import benchmarking
from nrnn_plugin.app.benchmarking import LayerSize, time_pair
from nrnn_plugin.compiled import build as compiled_build
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.regularizer import training_step
from nrnn_plugin.swap import register_noise

__all__ = [
    "BenchSettings",
    "DEFAULT",
    "QUICK",
    "TINY",
    "BenchResult",
    "run_bench",
    "format_regularizer_table",
    "regularizer_benchmark",
]


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
    """A Markdown table of :func:`regularizer_benchmark` rows."""
    header = [
        "cell",
        "additive",
        "multiplicative",
        "estimator",
        "probes",
        "B",
        "T",
        "H",
        "plain ms",
        "regularized ms",
        "ratio",
        "kernel",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["cell"],
            f"{row['additive']:g}",
            f"{row['multiplicative']:g}",
            row["estimator"],
            str(row["probes"]),
            str(row["batch"]),
            str(row["steps"]),
            str(row["hidden"]),
            f"{row['plain_ms']:.1f}",
            f"{row['regularized_ms']:.1f}",
            f"{row['ratio']:.2f}x",
            row["kernel"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_bench(
    *,
    quick: bool = False,
    tiny: bool = False,
    clock: str = "wall",
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    reporter: Any = None,
) -> BenchResult:
    """Run both benchmarks; returns the rows and the printable tables (and writes CSVs into ``out_dir``).

    ``clock`` is ``"wall"`` or ``"cpu"`` (process CPU time: robust on a shared machine with one thread; see
    :func:`nrnn_plugin.app.benchmarking.time_pair`).
    """

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
            "Training memory: what one training forward keeps for backward, noisy / plain module of the same mode:",
            "",
            benchmarking.format_memory_markdown(layer_rows),
            "Training step with the explicit regularizer (mode='regularizer') / a plain step:",
            "",
            format_regularizer_table(regularizer_rows),
        ]
    ).rstrip()
    files: list[Path] = []
    if out_dir is not None:
        from nrnn_plugin.app.outputs import OutputFolder

        folder = OutputFolder(out_dir, overwrite=overwrite)
        with folder as staging:
            benchmarking.write_csv(layer_rows, staging / "bench_layers.csv")
            benchmarking.write_csv(regularizer_rows, staging / "bench_regularizer.csv")
        files = [folder.target / "bench_layers.csv", folder.target / "bench_regularizer.csv"]
    return BenchResult(layer_rows=layer_rows, regularizer_rows=regularizer_rows, table=table, files=files)


# ============================================================================================ benchmark


def regularizer_benchmark(
    *,
    cells: Sequence[str] = ("LSTM", "GRU", "RNN"),
    noises: Sequence[tuple[float, float]] = ((0.05, 0.0), (0.05, 0.02)),
    cases: Sequence[tuple[str, int] | tuple[str, int, float]] = (("fd", 1), ("fd", 4), ("jet", 1)),
    batch: int = 64,
    steps: int = 96,
    hidden: int = 64,
    input_size: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    **timing: Any,
) -> list[dict[str, Any]]:
    """Time a regularized training step against a plain one, paired in this process; returns one row per case.

    The model is ``cell(input_size, hidden)`` + a linear read-out of the last step, cross-entropy over 10
    classes, SGD. The plain step is ``zero_grad``, forward, backward, ``step`` of the noise-free model (fused
    kernels); the regularized step is :func:`training_step` in mode ``"regularizer"`` with the case's
    estimator, probes and ``regularizer_weight`` (a case is ``(estimator, probes)`` or ``(estimator, probes,
    weight)``, weight 1 by default; ``fd`` reuses the plain loss as ``L(0)``). Timing is
    :func:`nrnn_plugin.app.benchmarking.time_pair` (interleaved rounds, median of per-round ratios); ``timing``
    is passed to it (``clock="cpu"`` with one thread is robust on a shared machine, ``budget_s``,
    ``min_rounds``, ...). Rows: ``cell, additive, multiplicative, estimator, probes, weight, kernel, batch, steps,
    hidden, device, clock, plain_ms, regularized_ms, ratio, ratio_min, ratio_max``; ``kernel`` is the kernel
    the probes run on.
    """
    classes = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
    rows: list[dict[str, Any]] = []
    for cell in cells:
        if cell not in classes:
            raise ValueError(f"benchmark: cells must be among {sorted(classes)}, got {cell!r}")
        for additive, multiplicative in noises:
            for case in cases:
                estimator, probes = case[0], case[1]
                weight = float(case[2]) if len(case) > 2 else 1.0
                torch.manual_seed(seed)
                recurrent = classes[cell](input_size, hidden).to(device)
                head = nn.Linear(hidden, 10).to(device)
                model = nn.Sequential()
                model.add_module("rnn", recurrent)
                model.add_module("head", head)
                config = NoiseConfig(
                    additive=additive,
                    multiplicative=multiplicative,
                    mode="regularizer",
                    estimator=estimator,
                    probes=probes,
                    regularizer_weight=weight,
                    seed=seed,
                )
                register_noise(model, config)
                model.train()
                x = torch.randn(steps, batch, input_size, device=device)
                y = torch.randint(0, 10, (batch,), device=device)
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

                def closure() -> Tensor:
                    out, _ = recurrent(x)
                    return nn.functional.cross_entropy(head(out[-1]), y)

                def plain() -> None:
                    optimizer.zero_grad(set_to_none=True)
                    closure().backward()
                    optimizer.step()

                def regularized() -> None:
                    training_step(model, closure, optimizer, config)

                result = time_pair(plain, regularized, device=device, **timing)
                if estimator in ("jet", "exact"):
                    kernel = "reference"
                elif torch.device(device).type == "cpu" and compiled_build.loaded():
                    kernel = "compiled"
                elif cell == "LSTM" and multiplicative == 0.0:
                    kernel = "fused"
                else:
                    kernel = "function"
                rows.append(
                    {
                        "cell": cell,
                        "additive": additive,
                        "multiplicative": multiplicative,
                        "estimator": estimator,
                        "probes": probes,
                        "weight": weight,
                        "kernel": kernel,
                        "batch": batch,
                        "steps": steps,
                        "hidden": hidden,
                        "device": str(device),
                        "clock": timing.get("clock", "wall"),
                        "plain_ms": 1e3 * result.base_s,
                        "regularized_ms": 1e3 * result.other_s,
                        "ratio": result.ratio,
                        "ratio_min": result.ratio_min,
                        "ratio_max": result.ratio_max,
                    }
                )
    return rows
