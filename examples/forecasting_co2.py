"""pytorch-forecasting: an unchanged RecurrentNetwork (or DeepAR) trained with and without Noisy RNN noise on
the Mauna Loa CO2 series (weekly, 1958-2001, ships with statsmodels), compared on held-out windows.

The only Noisy-RNN line is the callback in the trainer's list; the model class, the dataset and the training
loop are pytorch-forecasting's own. The series is split in time: the last 15% of the weeks are the test
period (never trained on, never used for selection), the 15% before it select the best epoch. Every
configuration is trained with the same seeds; the best checkpoint is loaded into the *vanilla* model class
with ``load_from_checkpoint`` and evaluated on every test window (52 weeks in, 13 weeks out).
For the noisy models, hidden-state noise is also switched on at inference (``nrnn_plugin.inference``) to get
Monte Carlo forecast bands; their empirical coverage on the test windows is reported.

    .venv/bin/python examples/forecasting_co2.py                      # 12 trainings, ~15-20 min on 2 CPU cores
    .venv/bin/python examples/forecasting_co2.py --epochs 3 --seeds 1 # smoke run
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
import torch

ENCODER, HORIZON = 52, 13


def load_co2() -> pd.DataFrame:
    """Weekly CO2 (ppm) with the 59 missing weeks interpolated: columns time_idx, co2, series."""
    co2 = sm.datasets.co2.load_pandas().data["co2"].interpolate(limit_direction="both")
    return pd.DataFrame({"time_idx": np.arange(len(co2)), "co2": co2.to_numpy(np.float32), "series": "mauna_loa"})


def datasets(data: pd.DataFrame):
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data import EncoderNormalizer

    n = len(data)
    train_end, val_end = int(n * 0.70), int(n * 0.85)
    training = TimeSeriesDataSet(
        data[data.time_idx < train_end],
        time_idx="time_idx",
        target="co2",
        group_ids=["series"],
        max_encoder_length=ENCODER,
        max_prediction_length=HORIZON,
        time_varying_unknown_reals=["co2"],
        target_normalizer=EncoderNormalizer(),  # per window: handles the trend
    )
    validation = TimeSeriesDataSet.from_dataset(
        training, data[data.time_idx < val_end], min_prediction_idx=train_end, stop_randomization=True
    )
    test = TimeSeriesDataSet.from_dataset(training, data, min_prediction_idx=val_end, stop_randomization=True)
    return training, validation, test


def train(model_name: str, noise: dict | None, sets, epochs: int, seed: int, workdir: str):
    import lightning.pytorch as pl
    from pytorch_forecasting import DeepAR, RecurrentNetwork
    from pytorch_forecasting.metrics import MAE

    import nrnn_plugin as nrnn

    training, validation, _ = sets
    pl.seed_everything(seed, verbose=False)
    if model_name == "deepar":
        cls, kwargs = DeepAR, {}
    else:
        cls, kwargs = RecurrentNetwork, {"loss": MAE()}
    model = cls.from_dataset(
        training, cell_type="LSTM", hidden_size=32, rnn_layers=1, dropout=0.0, learning_rate=1e-2, **kwargs
    )
    best = pl.callbacks.ModelCheckpoint(dirpath=workdir, monitor="val_loss", mode="min", save_top_k=1)
    callbacks = [best]
    if noise is not None:
        callbacks.append(nrnn.NoisyRNNCallback(nrnn.NoiseConfig(seed=seed, **noise)))  # <- the Noisy-RNN line
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        gradient_clip_val=1.0,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        model,
        training.to_dataloader(train=True, batch_size=64, num_workers=0),
        validation.to_dataloader(train=False, batch_size=256, num_workers=0),
    )
    return cls.load_from_checkpoint(best.best_model_path)  # the vanilla class: no noise, no extra keys


@torch.no_grad()
def evaluate(model, test, noise: dict | None, seed: int) -> dict[str, float]:
    import nrnn_plugin as nrnn
    from nrnn_plugin.adapters.forecasting import forecast_samples
    from nrnn_plugin.inference import quantiles

    loader = test.to_dataloader(train=False, batch_size=256, num_workers=0)
    model.eval()
    predictions, targets = [], []
    for x, (y, _) in loader:
        if type(model).__name__ == "DeepAR":  # its point forecast: the mean of 100 sampled paths
            torch.manual_seed(seed)
            predictions.append(model(x, n_samples=100)["prediction"].mean(-1))
        else:
            predictions.append(model.to_prediction(model(x)))
        targets.append(y)
    prediction, target = torch.cat(predictions), torch.cat(targets)
    error = prediction - target
    result = {"mae": error.abs().mean().item(), "rmse": error.pow(2).mean().sqrt().item()}
    if noise is not None:  # Monte Carlo bands from hidden-state noise at the trained noise level
        nrnn.register_noise(model, nrnn.NoiseConfig(**noise))
        torch.manual_seed(seed)
        samples = forecast_samples(model, loader, n_samples=100, samples_per_forward=50, seed=seed)
        band = quantiles(samples, (0.1, 0.9), dim=-1)
        inside = (target >= band[..., 0]) & (target <= band[..., 1])
        result["coverage80"] = inside.float().mean().item()
        result["width80"] = (band[..., 1] - band[..., 0]).mean().item()
        nrnn.remove_noise(model)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("rnn", "deepar"), default="rnn")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import lightning.pytorch  # noqa: F401  (configures its logger on import; quieten it afterwards)

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    sets = datasets(load_co2())
    print(f"windows: train {len(sets[0])}, validation {len(sets[1])}, test {len(sets[2])}")
    configs = {
        "deterministic": None,
        "noise: additive 0.1": {"additive": 0.1},
        "noise: additive 0.3": {"additive": 0.3},
        "noise: additive 0.1 + multiplicative 0.1": {"additive": 0.1, "multiplicative": 0.1},
    }
    rows = []
    for name, noise in configs.items():
        scores, started = [], time.perf_counter()
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as workdir:
                model = train(args.model, noise, sets, args.epochs, seed, workdir)
            scores.append(evaluate(model, sets[2], noise, seed))
        seconds = (time.perf_counter() - started) / args.seeds
        rows.append((name, scores, seconds))

    print(
        f"\n{args.model}, {args.epochs} epochs, seeds 0..{args.seeds - 1}: test windows (mean ± std over seeds, ppm)\n"
    )
    print("| training | test MAE | test RMSE | 80% band coverage | 80% band width | s / run |")
    print("|---|---|---|---|---|---|")
    for name, scores, seconds in rows:
        cell = lambda key: (  # noqa: E731
            f"{np.mean([s[key] for s in scores]):.3f} ± {np.std([s[key] for s in scores]):.3f}"
            if key in scores[0]
            else "-"
        )
        print(f"| {name} | {cell('mae')} | {cell('rmse')} | {cell('coverage80')} | {cell('width80')} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
