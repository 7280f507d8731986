"""How close the LSTM ``fd`` regularizer step is to the cheapest step of its kind.

Three training steps of the same LSTM (B=64, T=96, H=64, input 16) + linear read-out, cross-entropy, SGD:

* ``plain``: the noise-free step with PyTorch's fused LSTM (the yardstick);
* ``library``: :func:`nrnn_plugin.regularizer.training_step` in mode ``"regularizer"`` (``fd``, 1 probe, weight 1);
* ``floor``: the same computation written by hand with no library code: a clean forward without a graph, one
  Gaussian draw, and two fused LSTM passes on ``[x, +a]`` and ``[x, -a]`` (the exact additive-noise fast
  path, THEORY.md section 7) averaged and backpropagated.

Rounds are interleaved; the medians of per-round ratios to ``plain`` are printed. Process CPU time with one
thread by default (robust on a shared machine)::

    .venv/bin/python benchmarks/lstm_regularizer_floor.py [--rounds 25] [--threads 1] [--clock cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.regularizer import training_step

B, T, H, INPUT = 64, 96, 64, 16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    torch.manual_seed(0)
    rnn, head = nn.LSTM(INPUT, H), nn.Linear(H, 10)
    model = nn.Sequential()
    model.add_module("rnn", rnn)
    model.add_module("head", head)
    config = nrnn.NoiseConfig(additive=0.05, mode="regularizer", seed=0)
    nrnn.register_noise(model, config)
    model.train()
    x, y = torch.randn(T, B, INPUT), torch.randint(0, 10, (B,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    widened = nn.LSTM(INPUT + H, H)  # the fast path's layer: [W_ih | W_hh] on [x, a]
    noise_std = config.additive * config.dt**0.5

    def closure() -> torch.Tensor:
        return F.cross_entropy(head(rnn(x)[0][-1]), y)

    def plain() -> None:
        optimizer.zero_grad(set_to_none=True)
        closure().backward()
        optimizer.step()

    def library() -> None:
        training_step(model, closure, optimizer, config)

    def floor() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            closure()
        noise = noise_std * torch.randn(T, B, H)
        plus = F.cross_entropy(head(widened(torch.cat([x, noise], 2))[0][-1]), y)
        minus = F.cross_entropy(head(widened(torch.cat([x, -noise], 2))[0][-1]), y)
        ((plus + minus) / 2).backward()
        optimizer.step()

    steps = {"plain": plain, "library": library, "floor": floor}
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.rounds):
        order = list(steps.items()) if round_ % 2 == 0 else list(reversed(steps.items()))
        for name, step in order:
            start = clock()
            step()
            times[name].append(clock() - start)
    print(f"B={B} T={T} H={H} input {INPUT}, {args.threads} thread(s), {args.clock} clock, {args.rounds} rounds")
    for name in steps:
        ratios = [t / p for t, p in zip(times[name], times["plain"])]
        print(f"{name:8s} {1e3 * statistics.median(times[name]):7.1f} ms   {statistics.median(ratios):.2f}x plain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
