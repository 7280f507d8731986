"""NeuralForecast: an unchanged ``LSTM`` trained with and without Noisy RNN noise on AirPassengers (monthly
1949-1960, defined in ``neuralforecast.utils``), compared under input perturbations with the robustness suite.

The only Noisy-RNN line in the NeuralForecast pipeline is the callback among the model's trainer arguments.
Split: 1949-1957 train, 1958 validation (selects the noise level), 1959-1960 test (rolling origins, 24 months
in, 6 months out). The model keeps NeuralForecast's own per-window scaling; the robustness suite perturbs the
context after standardising it with the training part's mean and standard deviation. Protocol and statistics:
``examples/frameworks/paired.py``.

    .venv/bin/python examples/frameworks/neuralforecast_airpassengers.py          # 8 seeds
    .venv/bin/python examples/frameworks/neuralforecast_airpassengers.py --smoke  # 2 seeds, 5 steps
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import PERTURBATION_SEEDS, PERTURBATIONS, timed, write_report  # noqa: E402

CONTEXT, HORIZON = 24, 6
TRAIN_END, VAL_END = 108, 120  # 1958-01, 1959-01
LEVELS = (0.05, 0.1, 0.2)


def fit(train: pd.DataFrame, seed: int, steps: int, noise: float | None):
    from neuralforecast import NeuralForecast
    from neuralforecast.models import LSTM

    from nrnn_plugin import NoiseConfig, NoisyRNNCallback

    callbacks = [NoisyRNNCallback(NoiseConfig(additive=noise, seed=seed))] if noise else []
    model = LSTM(
        h=HORIZON,
        input_size=CONTEXT,
        encoder_hidden_size=32,
        decoder_hidden_size=32,
        max_steps=steps,
        random_seed=seed,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    )
    nf = NeuralForecast(models=[model], freq="ME")
    nf.fit(df=train)
    return nf


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="2 seeds, 5 steps, one noise level")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/frameworks"))
    args = parser.parse_args(argv)
    seeds, steps, levels = (2, 5, LEVELS[:1]) if args.smoke else (args.seeds, args.steps, LEVELS)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_fabric", "neuralforecast"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)

    from neuralforecast.utils import AirPassengersDF

    import nrnn_plugin.adapters.neuralforecast as nnf
    from nrnn_plugin.adapters.point_forecast import windows
    from nrnn_plugin.robustness import evaluate

    values = AirPassengersDF["y"].to_numpy(np.float64)
    train = AirPassengersDF.iloc[:TRAIN_END]
    loc, scale = float(values[:TRAIN_END].mean()), float(values[:TRAIN_END].std())
    val = windows(values, CONTEXT, HORIZON, range(TRAIN_END, VAL_END - HORIZON + 1), loc=loc, scale=scale)
    test = windows(values, CONTEXT, HORIZON, range(VAL_END, len(values) - HORIZON + 1), loc=loc, scale=scale)

    def clean_mae(nf) -> float:
        scores = evaluate({"m": nnf.forecaster(nf)}, val, perturbations={"white_noise": [0.0]})
        return float(scores[scores.metric == "mae"].value.mean())

    tuning_seeds = range(100, 100 + min(3, seeds))
    tuning = pd.DataFrame(
        [
            {
                "config": f"additive={level}",
                "level": level,
                "val_mae": np.mean([clean_mae(fit(train, s, steps, level)) for s in tuning_seeds]),
            }
            for level in levels
        ]
    )
    best = float(tuning.loc[tuning.val_mae.idxmin(), "level"])

    noisy_name = f"noisy (additive={best})"
    frames, times = [], {"plain": [], noisy_name: []}
    for seed in range(seeds):
        for name, noise in (("plain", None), ("noisy", best)):
            nf, seconds = timed(lambda: fit(train, seed, steps, noise))
            times["plain" if noise is None else noisy_name].append(seconds)
            scores = evaluate({name: nnf.forecaster(nf)}, test, perturbations=PERTURBATIONS, seeds=PERTURBATION_SEEDS)
            frames.append(scores.assign(train_seed=seed))
        print(f"seed {seed} done", flush=True)
    results = pd.concat(frames, ignore_index=True)
    header = (
        "### NeuralForecast `LSTM`, AirPassengers (monthly)\n\n"
        f"`python examples/frameworks/neuralforecast_airpassengers.py{' --smoke' if args.smoke else ''}`: "
        f"{seeds} training seeds x {len(PERTURBATION_SEEDS)} perturbation seeds, {steps} steps, hidden 32, "
        f"{len(test[0][1])} test windows ({CONTEXT} months in, {HORIZON} out); MAE in thousands of passengers."
    )
    name = "neuralforecast_airpassengers" + ("_smoke" if args.smoke else "")
    text = write_report(args.out, name, header, results, times, tuning)
    print(text)
    return text


if __name__ == "__main__":
    main()
