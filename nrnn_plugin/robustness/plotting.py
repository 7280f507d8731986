"""Plots and summary tables of :func:`~nrnn_plugin.robustness.evaluate` results.

Plotting uses Matplotlib's object-oriented API on an Agg canvas: no ``pyplot`` state and no global backend
change in the caller's process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_robustness", "summarize"]

_KEYS = ["model", "perturbation", "strength", "metric"]


def _check_results(results: Any, required: Sequence[str]) -> None:
    import pandas as pd

    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame from evaluate(), got {type(results).__name__}")
    missing = [c for c in required if c not in results.columns]
    if missing:
        raise ValueError(f"results lack the column(s) {missing}; evaluate() returns {list(results.columns)}")
    extra = [c for c in results.columns if c not in (*_KEYS, "value", "seed") and results[c].nunique(dropna=False) > 1]
    if extra:
        raise ValueError(
            f"results vary in column(s) {extra} besides model/perturbation/strength/metric/seed; select one value "
            f"of each first (e.g. results[results.{extra[0]} == ...])"
        )


def summarize(results: Any) -> Any:
    """Mean, std and number of seeds per (model, perturbation, strength, metric): a ``DataFrame``.

    Columns: ``model, perturbation, strength, metric, mean, std, n`` (``std`` is the sample std over seeds,
    0 for a single seed).
    """
    _check_results(results, [*_KEYS, "value"])
    grouped = results.groupby(_KEYS, sort=False)["value"]
    table = grouped.agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    table["std"] = table["std"].fillna(0.0)
    return table


def plot_robustness(
    results: Any,
    path: str | os.PathLike[str],
    *,
    metric: str | None = None,
    perturbations: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    title: str | None = None,
    ncols: int = 3,
    dpi: int = 90,
) -> Path:
    """Metric against perturbation strength, one panel per perturbation, one line per model; PNG at ``path``.

    Lines are the mean over seeds, shaded bands mean ± std over seeds.

    Args:
        results: a DataFrame from :func:`~nrnn_plugin.robustness.evaluate` (one data set / setting: extra
            columns must be constant).
        metric: which metric to plot; default the only one present (error if several).
        perturbations, models: subsets and order (default: order of appearance).
    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = summarize(results)
    metrics = list(dict.fromkeys(table["metric"]))
    if metric is None:
        if len(metrics) != 1:
            raise ValueError(f"plot_robustness: results hold several metrics {metrics}; choose one with metric=")
        metric = metrics[0]
    elif metric not in metrics:
        raise ValueError(f"plot_robustness: metric must be one of {metrics}, got {metric!r}")
    table = table[table["metric"] == metric]
    perturbations = list(perturbations or dict.fromkeys(table["perturbation"]))
    models = list(models or dict.fromkeys(table["model"]))
    if not perturbations or not models:
        raise ValueError("plot_robustness: nothing to plot")

    ncols = max(1, min(ncols, len(perturbations)))
    nrows = -(-len(perturbations) // ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.6 * nrows + 0.9), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(models))]
    styles = ["-", "--", "-.", ":"]
    for k, perturbation in enumerate(perturbations):
        ax = axes[k // ncols][k % ncols]
        part = table[table["perturbation"] == perturbation]
        for i, model in enumerate(models):
            line = part[part["model"] == model].sort_values("strength")
            if line.empty:
                continue
            x, mean, std = line["strength"].to_numpy(), line["mean"].to_numpy(), line["std"].to_numpy()
            ax.plot(x, mean, styles[(i // 10) % len(styles)], color=colors[i], marker="o", markersize=3, label=model)
            ax.fill_between(x, mean - std, mean + std, color=colors[i], alpha=0.15, linewidth=0)
        ax.set_title(perturbation)
        ax.set_xlabel("strength")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for k in range(len(perturbations), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    per_row = 3 if max((len(label) for label in labels), default=0) > 24 else 5
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), per_row), fontsize="large", frameon=False)
    if title:
        fig.suptitle(title)
    legend_rows = -(-len(labels) // per_row)
    fig.tight_layout(rect=(0, (0.07 * legend_rows + 0.02) / max(1.0, 0.5 * nrows), 1, 0.93 if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
