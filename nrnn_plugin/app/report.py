"""``nrnn robustness``'s engine: evaluation windows of a trained run, the robustness grid, tables and plots.

Imports Lightning and pytorch-forecasting at module level: import this module lazily.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
from pytorch_forecasting import TimeSeriesDataSet

from nrnn_plugin.app.data import prepare_frame, read_table
from nrnn_plugin.app.datasets import make_loader
from nrnn_plugin.app.errors import DataError, InputError, first_line
from nrnn_plugin.app.progress import NullReporter, Reporter
from nrnn_plugin.app.runs import LoadedRun, load_run
from nrnn_plugin.app.training import noise_label

__all__ = [
    "REPORT_STRENGTHS",
    "robustness_grid",
    "evaluate_robustness",
    "format_robustness_table",
    "RobustnessReport",
    "evaluation_windows",
    "run_robustness_report",
]


#: Strength grids used by the reports (normalised encoder inputs; 0 is the clean input).
REPORT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "white_noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "multiplicative_noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "salt_and_pepper": (0.0, 0.02, 0.05, 0.1),
    "fgsm": (0.0, 0.02, 0.05, 0.1),
    "pgd": (0.0, 0.02, 0.05, 0.1),
}


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
) -> pd.DataFrame:
    """:func:`nrnn_plugin.robustness.evaluate` on the windows of ``dataset`` (perturbed encoder inputs)."""
    from nrnn_plugin.robustness import evaluate

    loader = make_loader(dataset, train=False, batch_size=batch_size)
    return evaluate(dict(models), loader, task="forecasting", perturbations=dict(grid), seeds=list(seeds))


def format_robustness_table(results: pd.DataFrame, metric: str = "mae", change_label: str = "change") -> str:
    """Mean ± std over seeds of ``metric``: one row per (perturbation, strength), one column per model.

    With two models a last column gives the second model's mean relative to the first (``change_label``).
    """
    from nrnn_plugin.robustness import summarize

    table = summarize(results[results["metric"] == metric])
    models = list(dict.fromkeys(table["model"]))
    perturbations = list(dict.fromkeys(table["perturbation"]))
    header = ["perturbation", "strength", *[f"{m} {metric.upper()}" for m in models]]
    if len(models) == 2:
        header.append(change_label)
    rows = []
    clean_done = False
    for perturbation in perturbations:
        part = table[table["perturbation"] == perturbation]
        for strength in sorted(dict.fromkeys(part["strength"])):
            if strength == 0.0:
                if clean_done:
                    continue
                clean_done = True
            cells = part[part["strength"] == strength].set_index("model")
            means = [float(cells.loc[m, "mean"]) for m in models]
            row = ["clean" if strength == 0.0 else perturbation, "-" if strength == 0.0 else f"{strength:g}"]
            for m in models:
                mean, std, n = float(cells.loc[m, "mean"]), float(cells.loc[m, "std"]), int(cells.loc[m, "n"])
                row.append(f"{mean:.4g} ± {std:.2g}" if n > 1 and std > 0 else f"{mean:.4g}")
            if len(models) == 2:
                row.append(f"{100.0 * (means[1] - means[0]) / means[0]:+.1f}%" if means[0] else "")
            rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header] + rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


@dataclass
class RobustnessReport:
    results: pd.DataFrame
    table: str
    files: list[Path]


def evaluation_windows(run: LoadedRun, data_path: str | Path, *, windows: str = "test") -> TimeSeriesDataSet:
    """The windows of ``data_path`` to evaluate ``run`` on: its held-out test windows (``"test"``) or all."""
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
        dataset = TimeSeriesDataSet.from_parameters(
            run.sidecar["dataset_parameters"], frame, stop_randomization=True, **update
        )
    except (ValueError, KeyError, AssertionError, TypeError) as exc:
        raise DataError(f"{source}: could not build evaluation windows: {first_line(exc)}") from None
    if len(dataset) == 0:
        raise DataError(f"{source}: no evaluation windows")
    return dataset


def _labels(checkpoints: Sequence[str | Path], runs: Sequence[LoadedRun]) -> list[str]:
    """``RecurrentNetwork + noise``; the checkpoint's folder is added when two runs would share a label."""
    base = [run.sidecar["model_class"] + noise_label(run.sidecar.get("noise")) for run in runs]
    if len(set(base)) == len(base):
        return base
    labels = [f"{label} ({Path(ckpt).resolve().parent.name})" for label, ckpt in zip(base, checkpoints)]
    if len(set(labels)) != len(labels):
        labels = [f"{label} ({ckpt})" for label, ckpt in zip(base, checkpoints)]
    return labels


def run_robustness_report(
    *,
    checkpoints: Sequence[str | Path],
    data_path: str,
    out_dir: str | None = None,
    perturbations: Sequence[str] | None = None,
    strengths: Sequence[float] | None = None,
    seeds: int = 3,
    windows: str = "test",
    reporter: Reporter | None = None,
) -> RobustnessReport:
    """``nrnn robustness``: load each vanilla model and its sidecar, window the data, evaluate, write CSV and PNG.

    Several checkpoints (e.g. the same run file trained with and without ``noise:``) are compared in one table;
    every model sees the same perturbation draws when their windows are the same (same data and split).
    """
    from nrnn_plugin.robustness import plot_robustness

    reporter = reporter or NullReporter()
    if not checkpoints:
        raise InputError("--checkpoint: at least one checkpoint is needed")
    grid = robustness_grid(perturbations, strengths)  # check the names before the slow part
    runs = []
    for checkpoint in checkpoints:
        runs.append(load_run(checkpoint))
    labels = _labels(checkpoints, runs)
    source = Path(data_path).name
    frames, counts = [], set()
    for label, run in zip(labels, runs):
        dataset = evaluation_windows(run, data_path, windows=windows)
        counts.add(len(dataset))
        reporter.progress(
            f"evaluating {label} on {len(dataset)} {windows} windows of {source}: "
            + ", ".join(f"{k} {list(v)}" for k, v in grid.items())
            + f", {seeds} seed(s)"
        )
        frames.append(evaluate_robustness({label: run.model}, dataset, grid, seeds=list(range(seeds))))
    if len(counts) > 1:
        reporter.note(f"the runs have different evaluation windows ({sorted(counts)}): compare with care")
    results = pd.concat(frames, ignore_index=True)
    out = Path(out_dir) if out_dir is not None else Path(checkpoints[0]).parent
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "robustness.csv"
    png_path = out / "robustness.png"
    results.to_csv(csv_path, index=False)
    names = " vs ".join(labels)
    plot_robustness(
        results[results["metric"] == "mae"],
        png_path,
        metric="mae",
        ncols=min(len(grid), 5),
        title=f"{names}: MAE under perturbed encoder inputs ({source})",
    )
    window_text = "/".join(str(c) for c in sorted(counts))
    title = (
        f"{names} on {window_text} {windows} windows of {source}: MAE in the target's units, perturbed "
        f"(normalised) encoder inputs, mean ± std over {seeds} perturbation seed(s)"
    )
    change = "2nd vs 1st" if len(labels) == 2 else "change"
    table = title + "\n\n" + format_robustness_table(results, change_label=change)
    return RobustnessReport(results=results, table=table, files=[csv_path, png_path])
