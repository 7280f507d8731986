"""How close the LSTM ``fd`` regularizer step is to the cheapest step of its kind.

Three training steps of the same LSTM (B=64, T=96, H=64, input 16) + linear read-out, cross-entropy, SGD:

* ``plain``: the noise-free step with PyTorch's fused LSTM (the yardstick);
* ``library``: :func:`nrnn_plugin.regularizer.training_step` in mode ``"regularizer"`` (``fd``, 1 probe, weight 1);
* ``floor``: the same computation written by hand with no library code: a clean forward without a graph, one
  Gaussian draw, and two fused LSTM passes on ``[x, +a]`` and ``[x, -a]`` (the exact additive-noise fast
  path, ``docs/method.md``) averaged and backpropagated.

Each step is timed against ``plain`` with :func:`nrnn_plugin.app.benchmarking.time_pair` (interleaved rounds, median
of per-round ratios). Process CPU time with one thread by default (robust on a shared machine)::

    .venv/bin/python benchmarks/lstm_regularizer_floor.py [--rounds 25] [--threads 1] [--clock cpu]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.app.benchmarking import time_pair
from nrnn_plugin.regularizer import training_step

B, T, H, INPUT = 64, 96, 64, 16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

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

    print(f"B={B} T={T} H={H} input {INPUT}, {args.threads} thread(s), {args.clock} clock, {args.rounds} rounds")
    for name, step in (("library", library), ("floor", floor)):
        timing = time_pair(plain, step, min_rounds=args.rounds, max_rounds=args.rounds, clock=args.clock)
        print(f"{name:8s} {1e3 * timing.other_s:7.1f} ms   {timing.ratio:.2f}x plain ({1e3 * timing.base_s:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
