"""Plain PyTorch: the explicit regularizer instead of (or with) noise injection, plus stability diagnostics.

sklearn's bundled handwritten digits (8x8 images) are read as sequences of 8 rows of 8 pixels and classified
by a GRU. Three runs from the same initialisation and data order:

* ``plain``: no noise;
* ``noise``: Noisy-RNN training (noise injected into the hidden state at every step);
* ``regularizer``: noise-free training of ``loss + weight * reg``, ``reg`` the explicit regularizer
  (the small-noise expansion of what that noise does to the loss, ``docs/method.md``: the explicit regularizer).

For each run: test accuracy, the regularizer of the trained model (how much the noise would cost it), the
finite-time Lyapunov exponent of the hidden dynamics and the median first-order input margin.

    .venv/bin/python examples/plain_torch_regularizer.py            # 1-3 minutes on 2 CPU cores
    .venv/bin/python examples/plain_torch_regularizer.py --epochs 3 --estimator jet
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.diagnostics import finite_time_lyapunov, margin_report
from nrnn_plugin.regularizer import explicit_regularizer, training_step


class Classifier(nn.Module):
    """GRU over the rows of an image (``[T=8, B, 8]``) and a linear read-out of the last state."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[-1])


def load(test_size: int = 397) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # [N, 8, 8]
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[order].permute(1, 0, 2), labels[order]  # time-major [8, N, 8]
    return {
        "train": (images[:, :-test_size], labels[:-test_size]),
        "test": (images[:, -test_size:], labels[-test_size:]),
    }


def train(config: nrnn.NoiseConfig | None, data, epochs: int, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    model = Classifier()
    if config is not None:
        nrnn.register_noise(model, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    x, y = data["train"]
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=order).split(64):
            xb, yb = x[:, batch], y[batch]

            def closure(xb=xb, yb=yb) -> torch.Tensor:
                return F.cross_entropy(model(xb), yb)

            if config is None:
                optimizer.zero_grad()
                closure().backward()
                optimizer.step()
            else:
                # mode "noise": closure() is a noisy forward and reg = 0; "regularizer": noise-free forward and
                # loss + weight * reg; "both": both.
                training_step(model, closure, optimizer)
    return model.eval()


def report(name: str, model: Classifier, data, probe: nrnn.NoiseConfig) -> str:
    x, y = data["test"]
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    if not nrnn.is_noisy(model):
        nrnn.register_noise(model, probe)  # only to measure the regularizer; eval mode injects nothing
    reg = explicit_regularizer(model, lambda: F.cross_entropy(model(x), y), "jet", probes=8).item()
    lyapunov = finite_time_lyapunov(model.rnn, x[:, :64], k=1)[:, 0].mean().item()
    margins = margin_report(model, x[:, :64], y[:64])
    radius = margins.radius[margins.margin > 0].median().item()
    return f"| {name} | {100 * accuracy:.1f}% | {reg:.4f} | {lyapunov:+.3f} | {radius:.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--additive", type=float, default=0.3)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--estimator", choices=("fd", "jet"), default="fd")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    data = load()
    base = nrnn.NoiseConfig(additive=args.additive, seed=0)
    runs = {
        "plain": None,
        "noise": base.replace(mode="noise"),
        "regularizer": base.replace(mode="regularizer", regularizer_weight=args.weight, estimator=args.estimator),
    }
    print("| run | test accuracy | regularizer (jet, 8 probes) | top Lyapunov exponent | median input margin |")
    print("|---|---:|---:|---:|---:|")
    for name, config in runs.items():
        model = train(config, data, args.epochs)
        print(report(name, model, data, base), flush=True)


if __name__ == "__main__":
    main()
