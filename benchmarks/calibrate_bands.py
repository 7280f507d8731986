"""Coverage of Monte Carlo bands from hidden-state noise on CO2, before and after calibration on validation windows.

The ``nrnn demo`` setup (Mauna Loa CO2 weekly, pytorch-forecasting ``RecurrentNetwork``, one LSTM layer,
hidden 32, 52 weeks in, 13 out, 15 epochs, best epoch on validation): for each training noise level and seed,
the model is trained with that noise, then 100 forecast paths per window are drawn with hidden-state noise of
the same level (``forecast_samples``). The nominal 80% band (10% and 90% quantiles of the paths) is scored on
the 331 held-out test windows:

* ``raw``: the Monte Carlo band as it is;
* ``scale``: the band at the inference-noise scale chosen on the validation windows (:func:`choose_scale`);
* ``conformal``: the raw band widened per horizon step by the split-conformal offset fitted on the
  validation windows (:func:`conformal_offsets`).

Coverage intervals are Wilson 95% intervals over the distinct target weeks of the test part (windows overlap,
so the 331 x 13 (window, step) pairs are not independent). Writes ``benchmarks/results/calibration_co2.csv`` and
prints a Markdown table::

    nice -n 10 .venv/bin/python benchmarks/calibrate_bands.py            # about 10 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import lightning.pytorch as pl

    import nrnn_plugin as nrnn
    from nrnn_plugin.adapters.forecasting import forecast_samples
    from nrnn_plugin.adapters.forecasting.calibration import calibrate_bands, loader_targets
    from nrnn_plugin.app import training
    from nrnn_plugin.app.data import prepare_frame, split_and_check
    from nrnn_plugin.app.datasets import build_datasets, make_loader
    from nrnn_plugin.app.demo import load_dataset
    from nrnn_plugin.app.quiet import quiet_frameworks
    from nrnn_plugin.app.run_config import ModelSpec, TrainerSpec
    from nrnn_plugin.calibration import apply_offsets, central_band, coverage

    quiet_frameworks()
    warnings.filterwarnings("ignore")
    raw, spec, name = load_dataset("co2")
    prepared, split = split_and_check(prepare_frame(raw, spec, source=name), source=name)
    datasets = build_datasets(prepared, split, source=name)
    assert datasets.test is not None
    val_loader = make_loader(datasets.validation, train=False, batch_size=64)
    test_loader = make_loader(datasets.test, train=False, batch_size=64)
    y_test = loader_targets(test_loader)
    distinct_weeks = len(datasets.test) + spec.max_prediction_length - 1
    model_spec = ModelSpec.from_dict(
        {
            "class": "RecurrentNetwork",
            "cell_type": "LSTM",
            "hidden_size": 32,
            "rnn_layers": 1,
            "dropout": 0.0,
            "learning_rate": 0.01,
            "loss": "MAE",
        }  # fmt: skip
    )
    rows = []
    started = time.perf_counter()
    for level in args.levels:
        for seed in args.seeds:
            pl.seed_everything(seed, verbose=False)
            model = training.build_model(model_spec, datasets.training)
            trainer = TrainerSpec(max_epochs=args.epochs, batch_size=64, seed=seed, gradient_clip_val=1.0)
            trained = training.fit_model(
                model, datasets, trainer, nrnn.NoiseConfig(additive=level, seed=seed), out_dir=None
            )
            model = trained.model
            nrnn.register_noise(model, nrnn.NoiseConfig(additive=level, seed=seed))  # inference noise, same level
            bands = calibrate_bands(model, val_loader, level=0.8, n_samples=args.samples, seed=0)
            test_samples = forecast_samples(model, test_loader, args.samples, seed=1)
            lo, hi = central_band(test_samples, 0.8)
            scaled = forecast_samples(model, test_loader, args.samples, seed=1, scale=bands.scale)
            versions = {
                "raw": (lo, hi),
                "scale": central_band(scaled, 0.8),
                "conformal": apply_offsets(lo, hi, bands.offsets),
            }
            point = test_samples.median(dim=-1).values
            for version, (a, b) in versions.items():
                c = coverage(a, b, y_test, independent=distinct_weeks)
                rows.append(
                    {
                        "train_noise": level,
                        "seed": seed,
                        "band": version,
                        "coverage": c.fraction,
                        "low": c.low,
                        "high": c.high,
                        "n_independent": c.n,
                        "width": c.width,
                        "scale": bands.scale if version == "scale" else 1.0,
                        "median_mae": float((point - y_test).abs().mean())
                        if version != "scale"
                        else float((scaled.median(dim=-1).values - y_test).abs().mean()),
                    }  # fmt: skip
                )
            print(
                f"[{time.perf_counter() - started:5.0f}s] noise {level} seed {seed}: scale {bands.scale} tried {bands.tried}",
                flush=True,
            )
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.round(5).to_csv(args.out / "calibration_co2.csv", index=False)
    summary = frame.groupby(["train_noise", "band"], sort=False).agg(
        coverage=("coverage", "mean"), coverage_sd=("coverage", "std"), low=("low", "mean"), high=("high", "mean"),
        width=("width", "mean"), width_sd=("width", "std"), scale=("scale", "mean"), mae=("median_mae", "mean"),
    )  # fmt: skip
    print(
        "| training noise | band | test coverage (nominal 0.80) | Wilson 95% (per seed, mean) | width (ppm) | noise scale | median MAE |"
    )
    print("|---|---|---|---|---|---|---|")
    for (level, band), r in summary.iterrows():
        print(
            f"| {level:g} | {band} | {r.coverage:.3f} ± {r.coverage_sd:.3f} | [{r.low:.3f}, {r.high:.3f}] | "
            f"{r.width:.3f} ± {r.width_sd:.3f} | {r.scale:.2g} | {r.mae:.3f} |"
        )
    print(f"\n{len(args.seeds)} seeds (± std over seeds); n independent = {distinct_weeks} distinct test weeks; "
          f"{time.perf_counter() - started:.0f}s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
