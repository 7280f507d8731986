"""``nrnn robustness``'s engine: evaluation windows of trained runs, the robustness grid, files and tables.

Each ``--checkpoint`` is a run or a named variant over several runs (:mod:`nrnn_plugin.app.variants`). Every
run is evaluated noise-free on the same windows (its held-out test windows by default) with the same
perturbation draws; the scores are MAE, sMAPE and MASE, pooled over all series and per series
(:mod:`nrnn_plugin.app.scoring`). Files, written all at once into the output folder:

* ``robustness.csv``: pooled scores, one row per variant/run/perturbation/strength/metric/perturbation seed;
* ``robustness_series.csv``: the same per series (column ``series``);
* ``robustness.png``: the chosen metric against strength, one line per variant (bands: std over runs).

Imports Lightning and pytorch-forecasting at module level: import this module lazily.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
from pytorch_forecasting import TimeSeriesDataSet

from nrnn_plugin.app import report_tables
from nrnn_plugin.app.data import prepare_frame, read_table
from nrnn_plugin.app.datasets import make_loader
from nrnn_plugin.app.errors import DataError, InputError, first_line
from nrnn_plugin.app.outputs import OutputFolder
from nrnn_plugin.app.progress import NullReporter, Reporter
from nrnn_plugin.app.runs import LoadedRun, load_run
from nrnn_plugin.app.scoring import SEP, SeriesForecastingTask, series_labels, series_scales
from nrnn_plugin.app.training import noise_label
from nrnn_plugin.app.variants import Variant

__all__ = [
    "REPORT_STRENGTHS",
    "METRICS",
    "robustness_grid",
    "evaluate_robustness",
    "format_robustness_table",
    "RobustnessReport",
    "evaluation_windows",
    "run_robustness_report",
]

format_robustness_table = report_tables.format_robustness_table

#: Strength grids used by the reports (normalised encoder inputs; 0 is the clean input).
REPORT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "white_noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "multiplicative_noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "salt_and_pepper": (0.0, 0.02, 0.05, 0.1),
    "fgsm": (0.0, 0.02, 0.05, 0.1),
    "pgd": (0.0, 0.02, 0.05, 0.1),
}
METRICS = ("mase", "smape", "mae")


def robustness_grid(
    perturbations: Sequence[str] | None = None, strengths: Sequence[float] | None = None
) -> dict[str, tuple[float, ...]]:
    """``{perturbation: strengths}``; unknown names are an :class:`InputError` listing the allowed ones."""
    from nrnn_plugin.robustness import PERTURBATIONS

    names = list(perturbations) if perturbations else list(REPORT_STRENGTHS)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise InputError(f"--perturbations: unknown {unknown}; allowed: {sorted(PERTURBATIONS)}")
    grid = {}
    for name in names:
        values = tuple(sorted({0.0, *strengths})) if strengths else REPORT_STRENGTHS.get(name, (0.0,))
        if name == "salt_and_pepper" and any(v > 1 for v in values):
            raise InputError(f"--strengths: salt_and_pepper strengths are fractions <= 1, got {list(values)}")
        grid[name] = values
    return grid


def evaluate_robustness(
    models: Mapping[str, pl.LightningModule],
    dataset: TimeSeriesDataSet,
    grid: Mapping[str, Sequence[float]],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 256,
    task: Any = "forecasting",
) -> pd.DataFrame:
    """:func:`nrnn_plugin.robustness.evaluate` on the windows of ``dataset`` (perturbed encoder inputs)."""
    from nrnn_plugin.robustness import evaluate

    loader = make_loader(dataset, train=False, batch_size=batch_size)
    return evaluate(dict(models), loader, task=task, perturbations=dict(grid), seeds=list(seeds))


@dataclass
class RobustnessReport:
    results: pd.DataFrame
    series: pd.DataFrame
    table: str
    files: list[Path]


def evaluation_windows(
    run: LoadedRun, data_path: str | Path, *, windows: str = "test"
) -> tuple[TimeSeriesDataSet, pd.DataFrame]:
    """The windows of ``data_path`` to evaluate ``run`` on (its held-out test windows, or ``"all"``) and the
    prepared frame they come from."""
    source = Path(data_path).name
    prepared = prepare_frame(read_table(data_path), run.spec, source=source, time_axis=run.time_axis)
    split = run.sidecar["split"]
    frame = prepared.frame
    update: dict[str, Any] = {}
    if windows == "test":
        if frame[run.spec.time].max() < split["test_start"]:
            raise DataError(
                f"{source}: no data at or after the run's test period (time step {split['test_start']}); pass the "
                "full file, or --windows all to evaluate every window"
            )
        update["min_prediction_idx"] = split["test_start"]
    try:
        dataset = TimeSeriesDataSet.from_parameters(run.dataset_parameters, frame, stop_randomization=True, **update)
    except (ValueError, KeyError, AssertionError, TypeError) as exc:
        raise DataError(f"{source}: could not build evaluation windows: {first_line(exc)}") from None
    if len(dataset) == 0:
        raise DataError(f"{source}: no evaluation windows")
    return dataset, frame


def _run_label(run: LoadedRun) -> str:
    noise = run.sidecar.get("noise")
    text = run.sidecar["model_class"] + noise_label(noise)
    if noise and noise.get("enabled", True):
        levels = [f"{k} {noise[k]:g}" for k in ("additive", "multiplicative") if noise.get(k)]
        text += f" ({', '.join(levels)})" if levels else ""
    return text


def _variant_names(variants: Sequence[Variant], runs: Sequence[Sequence[LoadedRun]]) -> list[str]:
    """Given names; for unnamed single runs, the model and noise (plus the folder when two would clash)."""
    names = [v.name or _run_label(r[0]) for v, r in zip(variants, runs)]
    if len(set(names)) != len(names):
        names = [v.name or f"{n} [{v.checkpoints[0].parent.name}]" for v, n in zip(variants, names)]
    if len(set(names)) != len(names):
        names = [v.name or str(v.checkpoints[0]) for v in variants]
    return names


def _without_undefined_mase(scores: pd.DataFrame, scales: Mapping[str, float]) -> pd.DataFrame:
    """MASE is undefined (``nan``) for a series without a scale (constant); pooled MASE when no series has one."""
    undefined = {f"mase{SEP}{name}" for name, scale in scales.items() if not math.isfinite(scale)}
    if len(undefined) == len(scales):
        undefined.add("mase")
    scores.loc[scores["metric"].isin(undefined), "value"] = math.nan
    return scores


def _split_series(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pooled rows (``metric`` without ``|``) and per-series rows (``metric|series`` -> metric, series)."""
    per_series = results["metric"].str.contains(SEP, regex=False)
    pooled = results[~per_series].reset_index(drop=True)
    series = results[per_series].copy()
    parts = series["metric"].str.split(SEP, n=1, expand=True)
    series["metric"] = parts[0]
    series.insert(series.columns.get_loc("metric"), "series", parts[1])
    return pooled, series.reset_index(drop=True)


def run_robustness_report(
    *,
    variants: Sequence[Variant],
    data_path: str,
    out_dir: str | Path,
    overwrite: bool = False,
    perturbations: Sequence[str] | None = None,
    strengths: Sequence[float] | None = None,
    seeds: int = 3,
    windows: str = "test",
    metric: str = "mase",
    reporter: Reporter | None = None,
) -> RobustnessReport:
    """``nrnn robustness``: load every run (safely), window the data, evaluate, write CSVs and the plot."""
    from nrnn_plugin.robustness import plot_robustness

    reporter = reporter or NullReporter()
    if not variants:
        raise InputError("--checkpoint: at least one checkpoint is needed")
    folder = OutputFolder(out_dir, overwrite=overwrite)
    grid = robustness_grid(perturbations, strengths)  # check the names before the slow part
    runs = [[load_run(path) for path in variant.checkpoints] for variant in variants]
    names = _variant_names(variants, runs)
    source = Path(data_path).name
    frames, counts = [], set()
    total = sum(len(r) for r in runs)
    done = 0
    make_bar = getattr(reporter, "bar", None)
    bar = make_bar(total * len(grid), "robustness") if make_bar is not None else None
    for name, variant_runs in zip(names, runs):
        for run in variant_runs:
            dataset, frame = evaluation_windows(run, data_path, windows=windows)
            counts.add(len(dataset))
            scales = series_scales(
                frame, list(run.sidecar["group_ids"]), run.spec.time, run.spec.target, run.sidecar["split"]["val_start"]
            )
            task = functools.partial(SeriesForecastingTask, labels=series_labels(dataset), scales=scales)
            done += 1
            reporter.progress(
                f"[{done}/{total}] {name}: {run.checkpoint.parent.name} (seed {run.sidecar.get('seed')}) on "
                f"{len(dataset)} {windows} windows of {source}"
            )
            for perturbation, values in grid.items():
                scores = evaluate_robustness(
                    {name: run.model}, dataset, {perturbation: values}, seeds=list(range(seeds)), task=task
                )
                scores = _without_undefined_mase(scores.rename(columns={"model": "variant"}), scales)
                scores.insert(1, "run", str(run.checkpoint.parent))
                scores.insert(2, "train_seed", run.sidecar.get("seed"))
                frames.append(scores)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    if len(counts) > 1:
        reporter.note(f"the runs have different evaluation windows ({sorted(counts)}): compare with care")
    pooled, series = _split_series(pd.concat(frames, ignore_index=True))
    table = _report_text(pooled, series, names, variants, runs, metric, source, windows, counts, seeds)
    with folder as staging:
        pooled.to_csv(staging / "robustness.csv", index=False)
        series.to_csv(staging / "robustness_series.csv", index=False)
        legend = {
            name: (f"{name}: {_run_label(r[0])}" if v.name else name) + f", {len(r)} run(s) [{v.pattern}]"
            for name, v, r in zip(names, variants, runs)
        }
        _plot(plot_robustness, pooled, legend, metric, grid, staging / "robustness.png", source, windows)
    out = folder.target
    files = [out / "robustness.csv", out / "robustness_series.csv", out / "robustness.png"]
    return RobustnessReport(results=pooled, series=series, table=table, files=files)


def _plot(
    plot: Any, pooled: pd.DataFrame, legend: dict[str, str], metric: str, grid: Any, path: Path, *where: Any
) -> None:
    """The chosen metric against strength; one line per variant, labelled with its model, noise and runs."""
    values = report_tables.run_values(pooled, metric).rename(columns={"variant": "model", "train_seed": "seed"})
    values["model"] = values["model"].map(legend)
    clean = values[values["perturbation"] == "clean"]
    rows = [values[values["perturbation"] != "clean"]]
    for perturbation in grid:
        rows.append(clean.assign(perturbation=perturbation))
    frame = pd.concat(rows, ignore_index=True).assign(metric=metric)
    frame["seed"] = frame.groupby(["model", "perturbation", "strength"]).cumcount()
    source, windows = where
    plot(
        frame[["model", "perturbation", "strength", "metric", "value", "seed"]],
        path,
        metric=metric,
        models=list(legend.values()),
        ncols=min(len(grid), 3),
        title=f"{metric.upper()} under perturbed encoder inputs, {windows} windows of {source} (bands: std over runs)",
    )


def _report_text(
    pooled: pd.DataFrame,
    series: pd.DataFrame,
    names: list[str],
    variants: Sequence[Variant],
    runs: Sequence[Sequence[LoadedRun]],
    metric: str,
    source: str,
    windows: str,
    counts: set[int],
    seeds: int,
) -> str:
    described = []
    for name, variant, variant_runs in zip(names, variants, runs):
        train_seeds = ", ".join(str(r.sidecar.get("seed")) for r in variant_runs)
        where = variant.pattern if variant.name else str(variant.checkpoints[0])
        label = _run_label(variant_runs[0])
        described.append(f"  {name}: {label}; {len(variant_runs)} run(s), seeds {train_seeds} ({where})")
    window_text = "/".join(str(c) for c in sorted(counts))
    spread = "mean ± std over training seeds" if any(len(r) > 1 for r in runs) else "one run each"
    lines = [
        f"nrnn robustness: {window_text} {windows} windows of {source}; perturbed (normalised) encoder inputs, "
        f"{seeds} perturbation seed(s)",
        *described,
        "",
        f"{metric.upper()} ({'scale-free' if metric != 'mae' else 'target units'}; lower is better), {spread}"
        + (f"; change vs {names[0]} paired by training seed: mean [95% CI], seeds improved" if len(names) > 1 else ""),
        "",
        report_tables.format_variant_table(pooled, metric, names),
        "",
        report_tables.clean_summary(pooled, names, METRICS),
    ]
    per_series = report_tables.format_series_table(series, metric, names)
    if per_series:
        lines += ["", per_series]
    sensitivity, notes = report_tables.format_sensitivity(pooled, metric, names)
    if sensitivity:
        lines += ["", f"sensitivity: {metric.upper()} at the strongest strength relative to clean", "", sensitivity]
    lines += ["", *notes] if notes else []
    return "\n".join(lines)
