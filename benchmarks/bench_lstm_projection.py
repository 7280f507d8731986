"""Training-step speed of a noisy ``nn.LSTM(proj_size=P)`` relative to PyTorch's fused module with the same shape.

The projected LSTM runs the hand-written function kernel (the fused fast path has no projection); for
comparison, the same layer without a projection under the function kernel (multiplicative noise, so the fused
path does not apply) is timed against its fused module. Ratios are medians over paired, interleaved rounds
(:func:`nrnn_plugin.app.benchmarking.time_pair`).

    python benchmarks/bench_lstm_projection.py                  # ~1 minute
    python benchmarks/bench_lstm_projection.py --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.app.benchmarking import _training_step, time_pair

SHAPES = [(64, 50, 64, 1), (64, 50, 64, 16), (256, 100, 128, 32)]  # batch, steps, hidden, proj (0: none)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per pair")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = nrnn.NoiseConfig(additive=0.05, multiplicative=0.02, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), clock {args.clock}")
    print("| B | T | H | P | fused ms | noisy / fused (proj P) | noisy / fused (no proj) |")
    print("|---|---|---|---|---|---|---|")
    for batch, steps, hidden, proj in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(steps, batch, 8)
        cells = []
        base_ms = 0.0
        for size in (proj, 0):
            fused = nn.LSTM(8, hidden, proj_size=size)
            noisy = nrnn.register_noise(copy.deepcopy(fused), config).train()
            timing = time_pair(
                _training_step(fused, x), _training_step(noisy, x), budget_s=args.budget, clock=args.clock
            )
            cells.append(f"{timing.ratio:.2f} [{timing.ratio_min:.2f}, {timing.ratio_max:.2f}]")
            if size:
                base_ms = timing.base_s * 1e3
        print(f"| {batch} | {steps} | {hidden} | {proj} | {base_ms:.1f} | {cells[0]} | {cells[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
