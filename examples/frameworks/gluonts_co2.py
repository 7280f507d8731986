"""GluonTS: an unchanged PyTorch ``DeepAREstimator`` trained with and without Noisy RNN noise on the Mauna Loa CO2
series (weekly 1958-2001 in statsmodels, here as monthly means), compared under input perturbations with the
robustness suite.

The only Noisy-RNN line in the GluonTS pipeline is the callback in ``trainer_kwargs``. Split: the first 400
months train, the next 60 validation (select the noise level), the last 66 test (rolling origins, 12 months
out). DeepAR is scored on its mean path (each step's distribution mean fed back), the point forecast the
adversarial perturbations can differentiate. Protocol and statistics: ``examples/frameworks/paired.py``.
Runs in the GluonTS environment (GluonTS pins pandas<3)::

    .venv-gluonts/bin/python examples/frameworks/gluonts_co2.py            # 8 seeds
    .venv-gluonts/bin/python examples/frameworks/gluonts_co2.py --smoke    # 2 seeds, 1 epoch
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import PERTURBATION_SEEDS, PERTURBATIONS, timed, write_report  # noqa: E402

CONTEXT, HORIZON = 36, 12
TRAIN_END, VAL_END = 400, 460
LEVELS = (0.05, 0.1, 0.2)
ROOT = tempfile.TemporaryDirectory(prefix="gluonts_co2_")


def load() -> tuple[np.ndarray, pd.Period]:
    import statsmodels.api as sm

    weekly = sm.datasets.co2.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().interpolate(limit_direction="both")
    return monthly.to_numpy(np.float64), pd.Period(monthly.index[0], "M")


def fit(values: np.ndarray, start: pd.Period, seed: int, epochs: int, noise: float | None):
    from gluonts.dataset.common import ListDataset
    from gluonts.torch import DeepAREstimator

    from nrnn_plugin import NoiseConfig, NoisyRNNCallback

    torch.manual_seed(seed)
    np.random.seed(seed)
    callbacks = [NoisyRNNCallback(NoiseConfig(additive=noise, seed=seed))] if noise else []
    estimator = DeepAREstimator(
        freq="M",
        prediction_length=HORIZON,
        context_length=CONTEXT,
        hidden_size=24,
        num_layers=2,
        num_batches_per_epoch=20,
        batch_size=32,
        trainer_kwargs=dict(
            max_epochs=epochs,
            accelerator="cpu",
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            default_root_dir=ROOT.name,  # GluonTS writes its own (weights-only) checkpoint
            callbacks=callbacks,
        ),
    )
    return estimator.train(ListDataset([{"start": start, "target": values[:TRAIN_END]}], freq="M"))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="2 seeds, 1 epoch, one noise level, every 6th window")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/frameworks"))
    args = parser.parse_args(argv)
    seeds, epochs, levels = (2, 1, LEVELS[:1]) if args.smoke else (args.seeds, args.epochs, LEVELS)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)

    import nrnn_plugin.adapters.gluonts as ngl
    from nrnn_plugin.robustness import evaluate

    values, start = load()
    loc, scale = float(values[:TRAIN_END].mean()), float(values[:TRAIN_END].std())

    def batches(predictor, origins):
        return ngl.windows(predictor, values, start, "M", list(origins), loc=loc, scale=scale)

    def clean_mae(predictor) -> float:
        val = batches(predictor, range(TRAIN_END, VAL_END - HORIZON + 1))
        scores = evaluate({"m": ngl.forecaster(predictor)}, val, perturbations={"white_noise": [0.0]})
        return float(scores[scores.metric == "mae"].value.mean())

    tuning_seeds = range(100, 100 + min(3, seeds))
    tuning = pd.DataFrame(
        [
            {
                "config": f"additive={level}",
                "level": level,
                "val_mae": np.mean([clean_mae(fit(values, start, s, epochs, level)) for s in tuning_seeds]),
            }
            for level in levels
        ]
    )
    best = float(tuning.loc[tuning.val_mae.idxmin(), "level"])

    noisy_name = f"noisy (additive={best})"
    frames, times = [], {"plain": [], noisy_name: []}
    test_origins = range(VAL_END, len(values) - HORIZON + 1, 6 if args.smoke else 1)
    for seed in range(seeds):
        for name, noise in (("plain", None), ("noisy", best)):
            predictor, seconds = timed(lambda: fit(values, start, seed, epochs, noise))
            times["plain" if noise is None else noisy_name].append(seconds)
            test = batches(predictor, test_origins)
            scores = evaluate(
                {name: ngl.forecaster(predictor)}, test, perturbations=PERTURBATIONS, seeds=PERTURBATION_SEEDS
            )
            frames.append(scores.assign(train_seed=seed))
        print(f"seed {seed} done", flush=True)
    results = pd.concat(frames, ignore_index=True)
    header = (
        "### GluonTS `DeepAREstimator`, Mauna Loa CO2 (monthly)\n\n"
        f"`.venv-gluonts/bin/python examples/frameworks/gluonts_co2.py{' --smoke' if args.smoke else ''}`: "
        f"{seeds} training seeds x {len(PERTURBATION_SEEDS)} perturbation seeds, {epochs} epochs x 20 batches, "
        f"2 x LSTM(24), {len(test_origins)} test windows ({CONTEXT} months of context, {HORIZON} out); "
        "MAE in ppm of the mean path."
    )
    name = "gluonts_co2" + ("_smoke" if args.smoke else "")
    text = write_report(args.out, name, header, results, times, tuning)
    print(text)
    return text


if __name__ == "__main__":
    main()
