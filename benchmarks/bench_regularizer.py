"""Explicit regularizer: training-step cost against a plain step, and agreement with Monte Carlo.

Speed: a training step in mode "regularizer" (noise-free forward + the regularizer's probes) against a plain
training step of the same model (fused kernels), paired and interleaved in one process, median of per-pair
ratios (timing code: :func:`nrnn_plugin.app.bench.regularizer_benchmark`). Writes ``regularizer_<device>.{csv,md}``
(``_cpu_clock_<n>_thread`` appended with ``--clock cpu``, ``_tuned_malloc`` when glibc's ``MALLOC_MMAP_THRESHOLD_``
or ``MALLOC_TRIM_THRESHOLD_`` is set). fd rows at weight 1 (the default) skip the clean backward; the weight-0.5
rows show the general case.

Monte Carlo (``--monte-carlo``): for tiny float64 models, the estimators ``exact``, ``jet`` and ``fd`` against an
antithetic Monte Carlo estimate of ``E[loss_noisy] - loss_clean`` at three noise levels. Writes
``regularizer_mc.{csv,md}``.

    .venv/bin/python benchmarks/bench_regularizer.py --quick                 # about a minute
    .venv/bin/python benchmarks/bench_regularizer.py --threads 2             # B=64, T=96, H=64, all cases
    .venv/bin/python benchmarks/bench_regularizer.py --threads 1 --clock cpu # robust on a shared machine
    .venv/bin/python benchmarks/bench_regularizer.py --monte-carlo --skip-speed
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.app.bench import regularizer_benchmark as benchmark
from nrnn_plugin.diagnostics import noise_gap
from nrnn_plugin.regularizer import explicit_regularizer

RESULTS = Path(__file__).resolve().parent / "results"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}
BATCHES = 8  # jet/fd estimates of the Monte Carlo table: mean and standard error over this many calls

SPEED_COLUMNS = [
    "cell",
    "additive",
    "multiplicative",
    "estimator",
    "probes",
    "weight",
    "kernel",
    "plain_ms",
    "regularized_ms",
    "ratio",
    "ratio_min",
    "ratio_max",
    "batch",
    "steps",
    "hidden",
    "device",
    "clock",
]

# (name, cell, loss, (additive, multiplicative) per unit of level, scheme, dt, levels)
MC_CASES = [
    (
        "Elman tanh, cross-entropy, additive, Euler-Maruyama",
        nn.RNN,
        "ce",
        (1.0, 0.0),
        "euler_maruyama",
        0.5,
        (1.6, 0.8, 0.4),
    ),
    ("GRU, MSE, multiplicative, Euler-Maruyama", nn.GRU, "mse", (0.0, 1.0), "euler_maruyama", 0.5, (0.8, 0.4, 0.2)),
    (
        "LSTM, cross-entropy, additive + multiplicative, Euler-Maruyama",
        nn.LSTM,
        "ce",
        (1.0, 1.0),
        "euler_maruyama",
        0.5,
        (0.8, 0.4, 0.2),
    ),
    (
        "GRU, cross-entropy, additive + multiplicative, reference scheme",
        nn.GRU,
        "ce",
        (1.0, 1.0),
        "reference",
        1.0,
        (0.8, 0.4, 0.2),
    ),
    (
        "LSTM, MSE, additive + multiplicative, reference scheme",
        nn.LSTM,
        "mse",
        (1.0, 1.0),
        "reference",
        1.0,
        (0.8, 0.4, 0.2),
    ),
]


def monte_carlo_rows(paths: int, probes: int) -> list[dict]:
    """Tiny float64 models (T=6, B=4, I=3, H=4, 3 outputs): estimators vs antithetic Monte Carlo."""
    rows = []
    for name, cls, loss, (add, mult), scheme, dt, levels in MC_CASES:
        for level in levels:
            torch.manual_seed(3)
            rnn, head = cls(3, 4).double(), nn.Linear(4, 3).double()
            x = torch.randn(6, 4, 3, dtype=torch.float64)
            y = torch.randint(0, 3, (4,)) if loss == "ce" else torch.randn(4, 3, dtype=torch.float64)
            config = nrnn.NoiseConfig(additive=add * level, multiplicative=mult * level, scheme=scheme, dt=dt, seed=3)
            nrnn.register_noise(rnn, config)

            def per_sample(copies: int):
                xs = x.repeat(1, copies, 1)
                ys = y.repeat(copies) if y.dim() == 1 else y.repeat(copies, 1)
                if loss == "ce":
                    return lambda: F.cross_entropy(head(rnn(xs)[0][-1]), ys, reduction="none")
                return lambda: ((head(rnn(xs)[0][-1]) - ys) ** 2).sum(-1)

            mc, stderr = noise_gap(rnn, per_sample(paths))
            for estimator in ("exact", "jet", "fd"):
                if estimator == "exact":
                    values = [float(explicit_regularizer(rnn, lambda: per_sample(1)().mean(), "exact").detach())]
                else:  # BATCHES independent calls, each averaging probes // BATCHES probes (replicated batch)
                    closure = per_sample(probes // BATCHES)
                    values = [
                        float(explicit_regularizer(rnn, lambda: closure().mean(), estimator).detach())
                        for _ in range(BATCHES)
                    ]
                estimate = sum(values) / len(values)
                spread = (
                    torch.tensor(values, dtype=torch.float64).std().item() / math.sqrt(len(values))
                    if len(values) > 1
                    else 0.0
                )
                rows.append(
                    {
                        "case": name,
                        "additive": add * level,
                        "multiplicative": mult * level,
                        "estimator": estimator if estimator == "exact" else f"{estimator} ({probes} probes)",
                        "estimate": estimate,
                        "estimate_stderr": spread,
                        "monte_carlo": mc,
                        "stderr": stderr,
                        "relative_error": abs(estimate - mc) / abs(mc),
                    }
                )
    return rows


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def speed_markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| cell | noise (add, mult) | estimator | probes | weight | probe kernel | plain ms | regularized ms | ratio (min-max) |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['additive']}, {r['multiplicative']} | {r['estimator']} | {r['probes']} | {r['weight']:g} | {r['kernel']} "
            f"| {r['plain_ms']:.1f} | {r['regularized_ms']:.1f} | {r['ratio']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def mc_markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| case | noise (add, mult) | estimator | estimate ± s.e. | Monte Carlo ± s.e. | relative error |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        estimate = f"{r['estimate']:.6f}" + (f" ± {r['estimate_stderr']:.6f}" if r["estimate_stderr"] else "")
        lines.append(
            f"| {r['case']} | {r['additive']:.2g}, {r['multiplicative']:.2g} | {r['estimator']} | {estimate} "
            f"| {r['monte_carlo']:.6f} ± {r['stderr']:.6f} | {100 * r['relative_error']:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fd with 1 probe on LSTM and GRU, few repeats")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for this run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or process CPU time (robust on a shared machine; use with --threads 1)",
    )
    parser.add_argument("--budget", type=float, default=6.0, help="seconds of timing per case (default 6)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help=f"where result files go (default {RESULTS})")
    parser.add_argument("--skip-speed", action="store_true", help="do not run the speed benchmark")
    parser.add_argument("--monte-carlo", action="store_true", help="also write the Monte Carlo agreement table")
    parser.add_argument("--paths", type=int, default=2**15, help="Monte Carlo paths per sample (default 2^15)")
    parser.add_argument("--probes", type=int, default=16000, help="jet/fd probes in the Monte Carlo table")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_regularizer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    if not args.skip_speed:
        timing = {
            "clock": args.clock,
            "budget_s": 1.5 if args.quick else args.budget,
            "min_rounds": 3 if args.quick else 5,
        }
        if args.quick:
            rows = benchmark(cells=("LSTM", "GRU"), cases=(("fd", 1),), device=args.device, warmup=1, **timing)
        else:
            rows = benchmark(
                cells=("LSTM", "GRU", "RNN"),
                cases=(("fd", 1), ("fd", 1, 0.5), ("fd", 4), ("jet", 1)),
                device=args.device,
                **timing,
            )
        stem = f"regularizer_{torch.device(args.device).type}"
        if args.clock == "cpu":  # kept apart from the wall-clock table
            stem += f"_cpu_clock_{torch.get_num_threads()}_thread"
        tuned_malloc = sorted(MALLOC_ENV & os.environ.keys())  # glibc keeps freed memory (benchmarking.py's CPU tip)
        if tuned_malloc:
            stem += "_tuned_malloc"
            machine += ", " + " ".join(f"{k}={os.environ[k]}" for k in tuned_malloc)
        write_csv(args.out_dir / f"{stem}.csv", rows, SPEED_COLUMNS)
        header = (
            f"Regularized training step (mode 'regularizer') / plain training step, B=64, T=96, H=64, input 16, "
            f"{args.device} ({machine}), {args.clock} clock, median of interleaved rounds."
            f"\n\nCommand: `{command.strip()}`"
        )
        text = speed_markdown(rows, header)
        (args.out_dir / f"{stem}.md").write_text(text)
        print(text)

    if args.monte_carlo:
        rows = monte_carlo_rows(args.paths, args.probes)
        columns = [
            "case",
            "additive",
            "multiplicative",
            "estimator",
            "estimate",
            "estimate_stderr",
            "monte_carlo",
            "stderr",
            "relative_error",
        ]
        write_csv(args.out_dir / "regularizer_mc.csv", rows, columns)
        header = (
            f"Estimated E[loss_noisy] - loss_clean vs antithetic Monte Carlo ({args.paths} x 4 paths), float64, "
            f"T=6, B=4, H=4. jet/fd: mean ± s.e. of {BATCHES} calls averaging {args.probes // BATCHES} probes each "
            f"(fd: eta=1); relative error = |estimate - MC| / MC.\n\nCommand: `{command.strip()}`"
        )
        text = mc_markdown(rows, header)
        (args.out_dir / "regularizer_mc.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
