"""Training-step speed of noisy recurrent layers relative to PyTorch's fused modules.

Prints a Markdown table of ratios (noisy / fused, forward + backward, paired and interleaved in one process;
median over rounds) and optionally writes every measurement to CSV. The timing code lives in
:mod:`nrnn_plugin.app.benchmarking`.

    python benchmarks/bench_layers.py --quick                      # < 1 minute
    python benchmarks/bench_layers.py --out benchmarks/results/layers_cpu.csv --markdown benchmarks/results/layers_cpu.md
    python benchmarks/bench_layers.py --device cuda --out benchmarks/results/layers_cuda.csv

CPU tip: ``MALLOC_MMAP_THRESHOLD_=10000000000 MALLOC_TRIM_THRESHOLD_=10000000000`` keeps glibc from returning
large buffers to the OS after every step (faster large shapes, fused and noisy alike).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from nrnn_plugin.app import benchmarking
from nrnn_plugin.app.benchmarking import CASES, LayerSize


def _parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid, short timing (< 1 minute)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--out", help="write all measurements to this CSV file")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    parser.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--batch", type=_parse_ints, help="override the grid: batch sizes, e.g. 64,256")
    parser.add_argument("--steps", type=_parse_ints, help="override the grid: sequence lengths")
    parser.add_argument("--hidden", type=_parse_ints, help="override the grid: hidden sizes")
    parser.add_argument("--layers", type=_parse_ints, help="override the grid: numbers of layers")
    parser.add_argument("--input-size", type=int, default=8)
    parser.add_argument("--budget", type=float, help="seconds of timing per (size, case) pair")
    parser.add_argument("--min-rounds", type=int, help="at least this many paired rounds per (size, case)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for this run")
    parser.add_argument(
        "--clock",
        choices=sorted(benchmarking.CLOCKS),
        default="wall",
        help="wall (default) or cpu: process CPU time, robust on a shared machine; use with --threads 1",
    )
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    grid = None
    if any(v is not None for v in (args.batch, args.steps, args.hidden, args.layers)):
        base = benchmarking.TARGET_SIZE
        grid = [
            LayerSize(b, t, h, args.input_size, layers)
            for b in args.batch or [base.batch]
            for t in args.steps or [base.steps]
            for h in args.hidden or [base.hidden]
            for layers in args.layers or [base.layers]
        ]
    cases = args.cases.split(",") if args.cases else None
    timing = {} if args.budget is None else {"budget_s": args.budget}
    timing["clock"] = args.clock
    if args.min_rounds is not None:
        timing["min_rounds"] = args.min_rounds
    started = time.perf_counter()
    measured: list[dict] = []

    def progress(row: dict) -> None:
        measured.append(row)
        if args.out:  # rewrite after every measurement so that an interrupted run keeps its rows
            benchmarking.write_csv(measured, args.out)
        print(
            f"  {row['case']:<18} B={row['batch']:<4} T={row['steps']:<4} H={row['hidden']:<4} L={row['layers']}"
            f"  fused {row['base_ms']:8.1f} ms  noisy {row['noisy_ms']:8.1f} ms  ratio {row['ratio']:.2f}"
            f"  [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}]",
            file=sys.stderr,
            flush=True,
        )

    rows = benchmarking.run_layer_benchmark(
        grid=grid, quick=args.quick, device=args.device, cases=cases, on_result=progress, **timing
    )
    elapsed = time.perf_counter() - started
    title = (
        f"Training-step time ratio noisy / fused (forward + backward; eval_registered: eval forward), "
        f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
        f"{elapsed:.0f} s\n"
    )
    table = benchmarking.format_markdown(rows)
    if any(row["train"] for row in rows):
        table += "\nTraining memory (saved for backward by one training forward):\n\n"
        table += benchmarking.format_memory_markdown(rows)
    print(title)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(
                f"{title}\nCommand: `python benchmarks/bench_layers.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n{table}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
