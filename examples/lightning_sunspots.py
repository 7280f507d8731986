"""Lightning: an existing LightningModule (nn.LSTM forecaster) trained as a Noisy RNN by adding a callback.

Yearly sunspot numbers (1700-2008, ships with statsmodels): windows of 24 years predict the next year. The
last 60 years are the test period (never trained on or selected on); the 30 years before it select the best
epoch. Four trainings of the same module with the same seeds: plain, noise injection with a cosine warm-up,
the explicit regularizer alone (deterministic training with ``loss + weight * reg``), and both.

    .venv/bin/python examples/lightning_sunspots.py              # 12 trainings, ~10-15 min on 2 CPU cores
    .venv/bin/python examples/lightning_sunspots.py --epochs 5 --seeds 1
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np
import statsmodels.api as sm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning.pytorch as pl  # isort: skip

WINDOW, TEST_YEARS, VAL_YEARS = 24, 60, 30


class SunspotForecaster(pl.LightningModule):
    """Reads ``[B, WINDOW, 1]`` scaled sunspot numbers and predicts the next year ``[B]``."""

    def __init__(self, hidden_size: int = 32, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lstm = nn.LSTM(1, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1]).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_mse", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class SunspotData(pl.LightningDataModule):
    """Train / validation / test windows split in time; scaled with the training part's mean and std."""

    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self.batch_size = batch_size
        values = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)
        train_end = len(values) - TEST_YEARS - VAL_YEARS
        scaled = (values - values[:train_end].mean()) / values[:train_end].std()
        self.parts = {
            "train": _windows(scaled[:train_end]),
            "val": _windows(scaled[train_end - WINDOW : len(values) - TEST_YEARS]),
            "test": _windows(scaled[len(values) - TEST_YEARS - WINDOW :]),
        }

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.parts["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.parts["val"], batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.parts["test"], batch_size=256)


def _windows(series: np.ndarray) -> TensorDataset:
    x = np.stack([series[i : i + WINDOW] for i in range(len(series) - WINDOW)])
    return TensorDataset(
        torch.tensor(x, dtype=torch.float32).unsqueeze(-1), torch.tensor(series[WINDOW:], dtype=torch.float32)
    )


def run(noise: dict | None, epochs: int, seed: int) -> float:
    import nrnn_plugin as nrnn

    pl.seed_everything(seed, verbose=False)
    best = pl.callbacks.ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=1)
    callbacks: list[pl.Callback] = [best]
    if noise is not None:
        callbacks.append(nrnn.NoisyRNNCallback(nrnn.NoiseConfig(seed=seed, **noise)))  # <- the Noisy-RNN line
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir="lightning_logs",
    )
    data = SunspotData()
    trainer.fit(SunspotForecaster(), datamodule=data)
    model = SunspotForecaster.load_from_checkpoint(best.best_model_path)  # the plain module
    return trainer.test(model, datamodule=data, verbose=False)[0]["test_mse"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    configs = {
        "plain": None,
        "noise 0.1/0.05, cosine warm-up": {
            "additive": 0.1,
            "multiplicative": 0.05,
            "schedule": {"kind": "cosine", "warmup": 100},
        },
        "explicit regularizer only": {"additive": 0.1, "multiplicative": 0.05, "mode": "regularizer"},
        "noise + regularizer": {"additive": 0.1, "multiplicative": 0.05, "mode": "both", "regularizer_weight": 0.5},
    }
    print(f"{args.epochs} epochs, seeds 0..{args.seeds - 1}; test MSE on the last {TEST_YEARS} years (scaled units)\n")
    print("| training | test MSE (mean ± std) |")
    print("|---|---|")
    for name, noise in configs.items():
        scores = [run(noise, args.epochs, seed) for seed in range(args.seeds)]
        print(f"| {name} | {np.mean(scores):.4f} ± {np.std(scores):.4f} |", flush=True)


if __name__ == "__main__":
    main()
