"""Plain PyTorch: an existing LSTM forecaster trained with and without Noisy RNN noise on yearly sunspots.

The only change to the training code is one line, ``nrnn.register_noise(model, cfg)``. Both runs use the same
seed, data and budget; the test windows (the last 60 years) are never used for training or selection.

    .venv/bin/python examples/plain_torch_sunspots.py
"""

from __future__ import annotations

import argparse

import numpy as np
import statsmodels.api as sm
import torch
from torch import nn

import nrnn_plugin as nrnn

WINDOW = 24


class Forecaster(nn.Module):
    """Reads a window ``[B, W, 1]`` and predicts the next value ``[B]``."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1]).squeeze(-1)


def windows(series: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.stack([series[i : i + WINDOW] for i in range(len(series) - WINDOW)])
    y = series[WINDOW:]
    return torch.tensor(x, dtype=torch.float32).unsqueeze(-1), torch.tensor(y, dtype=torch.float32)


def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    values = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)
    train_end, test_start = len(values) - 90, len(values) - 60 - WINDOW
    mean, std = values[:train_end].mean(), values[:train_end].std()
    scaled = (values - mean) / std
    return {
        "train": windows(scaled[:train_end]),
        "val": windows(scaled[train_end - WINDOW : len(values) - 60]),
        "test": windows(scaled[test_start:]),
    }


def train(cfg: nrnn.NoiseConfig | None, data, epochs: int, seed: int) -> Forecaster:
    torch.manual_seed(seed)
    model = Forecaster()
    if cfg is not None:
        nrnn.register_noise(model, cfg)  # <- the only Noisy-RNN line
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data["train"]
    best, best_state = float("inf"), None
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
            optimizer.step()
        val = evaluate(model, *data["val"])
        if val < best:  # model selection on the validation windows only
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, input_noise: float = 0.0, seed: int = 0) -> float:
    model.eval()
    if input_noise:
        x = x + input_noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return nn.functional.mse_loss(model(x), y).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    data = load()
    configs = {
        "deterministic": None,
        "noisy (add 0.1, mult 0.05)": nrnn.NoiseConfig(additive=0.1, multiplicative=0.05, seed=0),
    }
    print(f"{'model':28s} {'test MSE':>16s} {'MSE, inputs + N(0, 0.3^2)':>28s}")
    for name, cfg in configs.items():
        clean, perturbed = [], []
        for seed in range(args.seeds):
            model = train(cfg, data, args.epochs, seed)
            clean.append(evaluate(model, *data["test"]))
            perturbed.append(np.mean([evaluate(model, *data["test"], input_noise=0.3, seed=s) for s in range(5)]))
        print(
            f"{name:28s} {np.mean(clean):8.4f} ± {np.std(clean):.4f} "
            f"{np.mean(perturbed):19.4f} ± {np.std(perturbed):.4f}"
        )


if __name__ == "__main__":
    main()
