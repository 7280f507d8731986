"""Training-step speed of a model with noisy recurrent layers under ``torch.compile`` against the same model eager.

The model is ``Linear(I, H) -> noisy layer -> Linear(H, 1)`` with a mean-square loss, at B=64, T=96, H=64, I=8 by
default. Under ``torch.compile`` (default backend, inductor) the noisy layer's forward always runs eagerly. With
Dynamo's defaults a frame that calls a recurrent module (plain or noisy) runs eagerly as a whole; with
``--allow-rnn`` (``torch._dynamo.config.allow_rnn = True``) the plain model compiles into one graph and the noisy
model into graphs around its noisy layer. Reports the first compiled step's extra time (compilation) and the
paired, interleaved ratio compiled / eager of a training step (forward + backward), median over rounds
(:func:`nrnn_plugin.app.benchmarking.time_pair`), for the noisy model and for the plain model.

    python benchmarks/bench_compile.py                     # every layer, 2 threads, Dynamo's defaults
    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python benchmarks/bench_compile.py --allow-rnn \
        --markdown benchmarks/results/compile_cpu_allow_rnn.md
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch._dynamo.utils import counters

import nrnn_plugin as nrnn
from nrnn_plugin.app.benchmarking import time_pair

LAYERS: dict[str, tuple[Callable[[int, int], nn.Module], dict[str, float]]] = {
    "LSTM, additive": (lambda i, h: nn.LSTM(i, h), {"additive": 0.05}),
    "LSTM, additive + multiplicative": (lambda i, h: nn.LSTM(i, h), {"additive": 0.05, "multiplicative": 0.02}),
    "GRU, additive + multiplicative": (lambda i, h: nn.GRU(i, h), {"additive": 0.05, "multiplicative": 0.02}),
    "RNN (tanh), additive + multiplicative": (lambda i, h: nn.RNN(i, h), {"additive": 0.05, "multiplicative": 0.02}),
    "NRNN, additive + multiplicative": (lambda i, h: nrnn.NRNN(i, h), {"additive": 0.05, "multiplicative": 0.02}),
}


class Model(nn.Module):
    """``Linear -> recurrent layer -> Linear``; input ``[T, B, I]``, output ``[T, B, 1]``."""

    def __init__(self, rnn: nn.Module, input_size: int, hidden: int) -> None:
        super().__init__()
        self.inp, self.rnn, self.out = nn.Linear(input_size, hidden), rnn, nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(self.inp(x))[0])


def _step(model: Callable[[torch.Tensor], torch.Tensor], params: list[nn.Parameter], x: torch.Tensor):
    def step() -> None:
        for p in params:
            p.grad = None
        model(x).square().mean().backward()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per layer")
    parser.add_argument("--allow-rnn", action="store_true", help="torch._dynamo.config.allow_rnn = True")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch._dynamo.config.allow_rnn = args.allow_rnn
    x = torch.randn(args.steps, args.batch, args.input_size, generator=torch.Generator().manual_seed(0))
    lines = [
        f"torch {torch.__version__}, {args.threads} threads, B={args.batch} T={args.steps} H={args.hidden} "
        f"I={args.input_size}, allow_rnn={args.allow_rnn}; training step, compiled / eager (median over rounds "
        "[min, max]); graphs: the Dynamo graphs compiled",
        "",
        "| layer | model | graphs | compile s (first step) | compiled / eager |",
        "|---|---|---|---|---|",
    ]
    for name, (make, noise) in LAYERS.items():
        for noisy in (True, False):
            torch.manual_seed(0)
            eager = Model(make(args.hidden, args.hidden), args.input_size, args.hidden)
            if noisy:
                nrnn.register_noise(eager, **noise)
            twin = copy.deepcopy(eager)
            torch._dynamo.reset()
            counters.clear()
            compiled = torch.compile(twin)
            eager_step = _step(eager, list(eager.parameters()), x)
            compiled_step = _step(compiled, list(twin.parameters()), x)
            eager_step()
            started = time.perf_counter()
            compiled_step()
            first = time.perf_counter() - started
            started = time.perf_counter()
            eager_step()
            first -= time.perf_counter() - started
            timing = time_pair(eager_step, compiled_step, budget_s=args.budget, min_rounds=7)
            graphs = counters["stats"]["unique_graphs"]
            lines.append(
                f"| {name} | {'noisy' if noisy else 'plain'} | {graphs} | {max(first, 0.0):.1f} | "
                f"{timing.ratio:.2f}x [{timing.ratio_min:.2f}, {timing.ratio_max:.2f}] |"
            )
            print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
