"""``nrnn predict`` and its Python call: forecasts of a trained run, with the real time index and group ids.

>>> from nrnn_plugin.app.predict import predict
>>> forecasts = predict("runs/macro", "macro_latest.csv")                    # doctest: +SKIP
>>> forecasts = predict("runs/macro", frame, samples=200, noise=0.1)         # doctest: +SKIP

The data holds the latest history of every series (the training columns; the same checks as ``nrnn train``).
Rows for future times may follow each series with the target empty and the known covariates filled in
(needed when the model reads known covariates); without them the horizon's times are generated from the run's
calendar. Each series is forecast ``max_prediction_length`` steps after its last observed target.

Columns of the result: the group id columns (none for a single series), the time column (real dates, or
integer steps), ``horizon`` (1 ..), ``forecast`` (the point forecast) and ``q<level>`` quantile columns when
the model has quantiles (``QuantileLoss``; DeepAR's distribution, sampled) or when ``samples`` asks for
hidden-state noise Monte Carlo (:func:`nrnn_plugin.adapters.forecasting.forecast_samples`; the noise level is
the run's training noise unless ``noise`` gives an additive sigma).

Imports Lightning and pytorch-forecasting at module level: import this module lazily.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.metrics import DistributionLoss, QuantileLoss

from nrnn_plugin.adapters.forecasting.decoding import forecast_samples, median_path_decoding, samples_itself
from nrnn_plugin.app.data import FUTURE_COLUMN, SERIES_COLUMN, prepare_frame, read_table
from nrnn_plugin.app.errors import DataError, InputError, first_line
from nrnn_plugin.app.outputs import OutputFolder
from nrnn_plugin.app.progress import NullReporter, Reporter
from nrnn_plugin.app.runs import LoadedRun, load_run
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.inference import quantiles

__all__ = ["predict", "run_predict", "PredictResult", "SAMPLE_QUANTILES", "FORECASTS_NAME"]

#: Quantile levels reported from Monte Carlo samples.
SAMPLE_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
FORECASTS_NAME = "forecasts.csv"


def _with_horizon(run: LoadedRun, frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Exactly ``max_prediction_length`` future rows per series: generated when absent, the first ones kept."""
    spec = run.spec
    horizon = spec.max_prediction_length
    groups = list(run.sidecar["group_ids"])
    pieces = []
    for key, rows in frame.groupby(groups, sort=False, observed=True):
        history = rows[~rows[FUTURE_COLUMN]]
        future = rows[rows[FUTURE_COLUMN]].head(horizon)
        name = "/".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        if len(history) < spec.max_encoder_length:
            raise DataError(
                f"{source}: series {name!r} has {len(history)} observed step(s); the model reads "
                f"{spec.max_encoder_length} (data.max_encoder_length)"
            )
        if len(future) < horizon:
            if spec.known_reals or spec.known_categoricals:
                raise DataError(
                    f"{source}: series {name!r} has {len(future)} future row(s), but the model reads known "
                    f"covariates {list(spec.known_reals + spec.known_categoricals)}: add the {horizon} rows after its "
                    "last observation with their values (target empty)"
                )
            last = history.iloc[-1]
            start = int(future[spec.time].max()) + 1 if len(future) else int(last[spec.time]) + 1
            extra = pd.DataFrame([last] * (horizon - len(future)))
            extra[spec.time] = np.arange(start, start + horizon - len(future))
            extra[FUTURE_COLUMN] = True
            future = pd.concat([future, extra])
        pieces.append(pd.concat([history.tail(spec.max_encoder_length), future]))
    return pd.concat(pieces, ignore_index=True).astype({spec.time: "int64"})


def _dataset(run: LoadedRun, frame: pd.DataFrame, source: str) -> TimeSeriesDataSet:
    try:
        return TimeSeriesDataSet.from_parameters(run.dataset_parameters, frame, predict=True, stop_randomization=True)
    except KeyError as exc:
        raise DataError(
            f"{source}: a series or category that was not in the training data: {first_line(exc)}"
        ) from None
    except (ValueError, AssertionError, TypeError) as exc:
        raise DataError(f"{source}: could not build the forecast windows: {first_line(exc)}") from None


def _levels(model: Any) -> tuple[float, ...]:
    loss = getattr(model, "loss", None)
    return tuple(float(q) for q in getattr(loss, "quantiles", SAMPLE_QUANTILES))


def _forecast(
    run: LoadedRun, dataset: TimeSeriesDataSet, samples: int | None, noise: float | None, seed: int
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...]]:
    """Point forecasts ``[N, H]`` and quantiles ``[N, H, Q]`` (or ``None``) with their levels."""
    model: Any = run.model.eval()
    loader = dataset.to_dataloader(train=False, batch_size=256, num_workers=0)
    sampled = samples_itself(model)
    points, bands = [], []
    with torch.no_grad():
        for x, _ in loader:
            if sampled:
                with median_path_decoding(model):
                    points.append(model(x, n_samples=2)["prediction"][..., 0])
            else:
                output = model(x)
                points.append(model.to_prediction(output))
                if isinstance(model.loss, QuantileLoss):
                    bands.append(model.to_quantiles(output))
    point = torch.cat(points).squeeze(-1).cpu().numpy()
    if bands and not samples:
        return point, torch.cat(bands).cpu().numpy(), _levels(model)
    if sampled or samples:
        paths = _sample_paths(run, loader, samples or 100, noise, seed, sampled)
        levels = SAMPLE_QUANTILES if not isinstance(model.loss, DistributionLoss) or samples else _levels(model)
        return point, quantiles(paths, levels, dim=-1).cpu().numpy(), levels
    return point, None, ()


def _sample_paths(run: LoadedRun, loader: Any, n: int, noise: float | None, seed: int, sampled: bool) -> torch.Tensor:
    """``[N, H, n]`` Monte Carlo paths: hidden-state noise (and, for DeepAR, its own distribution)."""
    from nrnn_plugin import register_noise, remove_noise

    model = run.model
    trained = run.sidecar.get("noise") or {}
    enabled = bool(trained.get("enabled", True))
    additive = noise if noise is not None else float(trained.get("additive", 0.0)) * enabled
    multiplicative = 0.0 if noise is not None else float(trained.get("multiplicative", 0.0)) * enabled
    if additive == 0.0 and multiplicative == 0.0:
        if not sampled:
            raise InputError(
                "--samples: the run was trained without hidden-state noise; give --sample-noise SIGMA (Python: "
                "noise=SIGMA) for the Monte Carlo paths"
            )
        torch.manual_seed(seed)
        with torch.no_grad():
            return torch.cat([model(x, n_samples=n)["prediction"] for x, _ in loader])
    torch.manual_seed(seed)
    register_noise(model, NoiseConfig(additive=additive, multiplicative=multiplicative, seed=seed))
    try:
        return forecast_samples(model, loader, n_samples=n, seed=seed)
    finally:
        remove_noise(model)


def predict(
    run: str | Path | LoadedRun,
    data: str | Path | pd.DataFrame,
    *,
    samples: int | None = None,
    noise: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Forecasts of the run in ``run`` (a run folder or its ``model.ckpt``) for every series of ``data``.

    Args:
        run: what ``nrnn train`` wrote (read without executing anything), or a loaded run.
        data: a CSV/parquet path or a DataFrame with the training columns (see the module docstring).
        samples: hidden-state noise Monte Carlo paths per series; quantiles ``q0.05 .. q0.95`` come from them.
        noise: additive sigma of the sampling noise (default: the run's training noise levels).
        seed: seed of the sampling noise (and of DeepAR's sampling).
    Returns:
        One row per series and horizon step: group ids, time (real dates), ``horizon``, ``forecast``, ``q...``.
    Raises:
        InputError / DataError: one line naming the file, the column or the series.
    """
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    source = "data" if isinstance(data, pd.DataFrame) else Path(data).name
    raw = data if isinstance(data, pd.DataFrame) else read_table(data)
    spec = loaded.spec
    prepared = prepare_frame(raw, spec, source=source, time_axis=loaded.time_axis, future_rows=True)
    frame = _with_horizon(loaded, prepared.frame, source)
    dataset = _dataset(loaded, frame, source)
    point, bands, levels = _forecast(loaded, dataset, samples, noise, seed)
    index = dataset.decoded_index
    groups = [g for g in loaded.sidecar["group_ids"] if g != SERIES_COLUMN]
    horizon = point.shape[1]
    steps = index["time_idx_first_prediction"].to_numpy()[:, None] + np.arange(horizon)[None, :]
    out = pd.DataFrame({g: np.repeat(index[g].to_numpy(), horizon) for g in groups})
    out[spec.time] = loaded.time_axis.to_dates(steps.reshape(-1))
    out["horizon"] = np.tile(np.arange(1, horizon + 1), len(index))
    out["forecast"] = point.reshape(-1)
    if bands is not None:
        for k, level in enumerate(levels):
            out[f"q{level:g}"] = bands[..., k].reshape(-1)
    return out


@dataclass
class PredictResult:
    forecasts: pd.DataFrame
    summary: str
    files: list[Path]


def run_predict(
    *,
    run: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    samples: int | None = None,
    noise: float | None = None,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> PredictResult:
    """``nrnn predict``: :func:`predict`, then ``forecasts.csv`` written into ``out_dir`` (all or nothing)."""
    reporter = reporter or NullReporter()
    folder = OutputFolder(out_dir, overwrite=overwrite)
    loaded = load_run(run)
    reporter.progress(f"{loaded.checkpoint}: {loaded.sidecar['model_class']}; forecasting {Path(data_path).name}")
    forecasts = predict(loaded, data_path, samples=samples, noise=noise, seed=seed)
    with folder as staging:
        forecasts.to_csv(staging / FORECASTS_NAME, index=False)
    path = folder.target / FORECASTS_NAME
    spec = loaded.spec
    groups = [g for g in loaded.sidecar["group_ids"] if g != SERIES_COLUMN]
    series = forecasts.groupby(groups).ngroups if groups else 1
    times = forecasts[spec.time]
    first, last = times.min(), times.max()
    if isinstance(first, pd.Timestamp) and (times == times.dt.normalize()).all():
        first, last = first.date(), last.date()
    quantile_columns = [c for c in forecasts.columns if re.fullmatch(r"q[0-9.]+", c)]
    summary = "\n".join(
        [
            f"forecasts    {series} series x {spec.max_prediction_length} steps, {first} .. {last}",
            f"columns      {', '.join(forecasts.columns)}",
            f"quantiles    {', '.join(quantile_columns) if quantile_columns else 'none (point forecasts)'}",
            f"file         {path}",
        ]
    )
    return PredictResult(forecasts=forecasts, summary=summary, files=[path])
