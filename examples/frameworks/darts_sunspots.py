"""Darts: an unchanged ``RNNModel(model="LSTM")`` trained with and without Noisy RNN noise on the yearly sunspot
numbers (1700-2008, ship with statsmodels), compared under input perturbations with the robustness suite.

The only Noisy-RNN line in the Darts pipeline is the callback in ``pl_trainer_kwargs``. The series is standardised
with the training part's mean and standard deviation; split 1700-1928 train, 1929-1968 validation (selects the
noise level), 1969-2008 test (rolling origins, 24 years in, 6 years out). Protocol and statistics:
``examples/frameworks/paired.py``.

    .venv/bin/python examples/frameworks/darts_sunspots.py             # 8 seeds (~10 min on 2 shared CPU cores)
    .venv/bin/python examples/frameworks/darts_sunspots.py --smoke     # 2 seeds, 2 epochs
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import PERTURBATION_SEEDS, PERTURBATIONS, timed, write_report  # noqa: E402

CONTEXT, HORIZON = 24, 6
TRAIN_END, VAL_END = 229, 269  # 1929 and 1969
LEVELS = (0.05, 0.1, 0.2)  # additive noise levels tried on validation


def load() -> np.ndarray:
    return sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)


def fit(series, values: np.ndarray, seed: int, epochs: int, noise: float | None):
    from darts.models import RNNModel

    from nrnn_plugin import NoiseConfig, NoisyRNNCallback

    callbacks = [NoisyRNNCallback(NoiseConfig(additive=noise, seed=seed))] if noise else []
    model = RNNModel(
        model="LSTM",
        input_chunk_length=CONTEXT,
        training_length=CONTEXT + HORIZON,
        hidden_dim=24,
        n_rnn_layers=1,
        n_epochs=epochs,
        batch_size=16,
        random_state=seed,
        pl_trainer_kwargs=dict(
            accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False, callbacks=callbacks
        ),
    )
    model.fit(series)
    return model


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--smoke", action="store_true", help="2 seeds, 2 epochs, one noise level")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/frameworks"))
    args = parser.parse_args(argv)
    seeds, epochs, levels = (2, 2, LEVELS[:1]) if args.smoke else (args.seeds, args.epochs, LEVELS)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    torch.set_num_threads(1)

    from darts import TimeSeries

    import nrnn_plugin.adapters.darts as ndarts
    from nrnn_plugin.adapters.point_forecast import windows
    from nrnn_plugin.robustness import evaluate

    values = load()
    loc, scale = float(values[:TRAIN_END].mean()), float(values[:TRAIN_END].std())
    series = TimeSeries.from_values(((values[:TRAIN_END] - loc) / scale).astype(np.float32))
    val = windows(values, CONTEXT, HORIZON, range(TRAIN_END, VAL_END - HORIZON + 1), loc=loc, scale=scale)
    test = windows(values, CONTEXT, HORIZON, range(VAL_END, len(values) - HORIZON + 1), loc=loc, scale=scale)

    def forecaster(model):
        return ndarts.forecaster(model, HORIZON, shift=loc, scale=scale)

    def clean_mae(model) -> float:
        scores = evaluate({"m": forecaster(model)}, val, perturbations={"white_noise": [0.0]})
        return float(scores[scores.metric == "mae"].value.mean())

    tuning_seeds = range(100, 100 + min(3, seeds))
    tuning = pd.DataFrame(
        [
            {
                "config": f"additive={level}",
                "level": level,
                "val_mae": np.mean([clean_mae(fit(series, values, s, epochs, level)) for s in tuning_seeds]),
            }
            for level in levels
        ]
    )
    best = float(tuning.loc[tuning.val_mae.idxmin(), "level"])

    frames, times = [], {"plain": [], f"noisy (additive={best})": []}
    for seed in range(seeds):
        for name, noise in (("plain", None), ("noisy", best)):
            model, seconds = timed(lambda: fit(series, values, seed, epochs, noise))
            times["plain" if noise is None else f"noisy (additive={best})"].append(seconds)
            scores = evaluate({name: forecaster(model)}, test, perturbations=PERTURBATIONS, seeds=PERTURBATION_SEEDS)
            frames.append(scores.assign(train_seed=seed))
        print(f"seed {seed} done", flush=True)
    results = pd.concat(frames, ignore_index=True)
    header = (
        f"### Darts `RNNModel(LSTM)`, sunspots (yearly)\n\n`python examples/frameworks/darts_sunspots.py"
        f"{' --smoke' if args.smoke else ''}`: {seeds} training seeds x {len(PERTURBATION_SEEDS)} perturbation "
        f"seeds, {epochs} epochs, hidden 24, {len(test[0][1])} test windows ({CONTEXT} years in, {HORIZON} out); "
        f"MAE in sunspot numbers."
    )
    text = write_report(args.out, "darts_sunspots" + ("_smoke" if args.smoke else ""), header, results, times, tuning)
    print(text)
    return text


if __name__ == "__main__":
    main()
