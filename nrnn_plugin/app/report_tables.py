"""The tables of the robustness reports: one run per column, or named variants over training seeds.

Input is the tidy frame of :mod:`nrnn_plugin.app.report` (``variant, run, train_seed, perturbation,
strength, metric, value, seed``; ``seed`` is the perturbation seed). A run's value in a cell is its mean
over perturbation seeds; a variant's is the mean ± std over its runs (training seeds); the change of a
variant against the first one is paired by training seed (:func:`nrnn_plugin.app.stats.paired_change`).
Text tables through ``tabulate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from tabulate import tabulate

from nrnn_plugin.app.stats import paired_change

__all__ = [
    "format_robustness_table",
    "run_values",
    "cells",
    "format_variant_table",
    "format_series_table",
    "sensitivity",
    "format_sensitivity",
    "clean_summary",
    "INSENSITIVE",
]

#: A model whose error moves by less than this fraction under every perturbation barely reads its history.
INSENSITIVE = 0.01


def _mean_std(values: Sequence[float], digits: int = 4) -> str:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.{digits}g}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}g} ± {std:.2g}"


def cells(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """The (perturbation, strength) cells in report order: clean first (once), then each perturbation."""
    order: list[tuple[str, float]] = [("clean", 0.0)]
    for perturbation in dict.fromkeys(frame["perturbation"]):
        strengths = sorted(set(frame.loc[frame["perturbation"] == perturbation, "strength"]))
        order.extend((perturbation, s) for s in strengths if s > 0)
    return order


def run_values(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (variant, run, train_seed, cell): the mean over perturbation seeds; clean rows as ``("clean", 0)``."""
    part = frame[frame["metric"] == metric].copy()
    part.loc[part["strength"] == 0.0, "perturbation"] = "clean"
    keys = ["variant", "run", "train_seed", "perturbation", "strength"]
    return part.groupby(keys, sort=False, dropna=False)["value"].mean().reset_index()


def _paired(base: pd.DataFrame, other: pd.DataFrame) -> str:
    """Paired change of ``other`` vs ``base`` over the training seeds both have (by seed)."""
    a = base.groupby("train_seed")["value"].mean()
    b = other.groupby("train_seed")["value"].mean()
    common = [s for s in a.index if s in b.index]
    if not common:
        return "no common seeds"
    return paired_change([float(a[s]) for s in common], [float(b[s]) for s in common]).text()


def format_variant_table(frame: pd.DataFrame, metric: str, variants: Sequence[str]) -> str:
    """One row per cell; per variant ``mean ± std`` over its runs; per later variant the paired change."""
    values = run_values(frame, metric)
    base = variants[0]
    header = ["perturbation", "strength", *[f"{v} {metric.upper()}" for v in variants]]
    header += [f"{v} vs {base}" for v in variants[1:]]
    rows = []
    for perturbation, strength in cells(frame):
        cell = values[(values["perturbation"] == perturbation) & (values["strength"] == strength)]
        row = [perturbation, "-" if perturbation == "clean" else f"{strength:g}"]
        for variant in variants:
            part = cell[cell["variant"] == variant]["value"].tolist()
            row.append(_mean_std(part) if part else "")
        for variant in variants[1:]:
            row.append(_paired(cell[cell["variant"] == base], cell[cell["variant"] == variant]))
        rows.append(row)
    return tabulate(rows, headers=header, tablefmt="simple", disable_numparse=True)


def sensitivity(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per variant and perturbation: the error at the strongest strength relative to clean (mean over runs)."""
    values = run_values(frame, metric)
    rows = []
    for (variant, run), part in values.groupby(["variant", "run"], sort=False):
        clean = part.loc[part["perturbation"] == "clean", "value"]
        if clean.empty or not clean.iloc[0]:
            continue
        for perturbation, sub in part[part["perturbation"] != "clean"].groupby("perturbation", sort=False):
            top = sub.loc[sub["strength"].idxmax()]
            rows.append((variant, run, perturbation, float(top["strength"]), float(top["value"] / clean.iloc[0] - 1)))
    table = pd.DataFrame(rows, columns=["variant", "run", "perturbation", "strength", "change"])
    return table.groupby(["variant", "perturbation", "strength"], sort=False)["change"].mean().reset_index()


def format_sensitivity(frame: pd.DataFrame, metric: str, variants: Sequence[str]) -> tuple[str, list[str]]:
    """The sensitivity table (one row per variant) and notes for variants that barely react to any input."""
    table = sensitivity(frame, metric)
    if table.empty:
        return "", []
    columns = list(dict.fromkeys(zip(table["perturbation"], table["strength"])))
    rows, notes = [], []
    for variant in variants:
        part = table[table["variant"] == variant].set_index(["perturbation", "strength"])["change"]
        rows.append([variant, *[f"{100 * part[c]:+.1f}%" if c in part.index else "" for c in columns]])
        if len(part) and float(part.abs().max()) < INSENSITIVE:
            notes.append(
                f"note: {variant}'s {metric.upper()} moves by less than {100 * INSENSITIVE:g}% under every "
                "perturbation: the model barely reads its input history (e.g. it forecasts from the series' "
                "level or its embeddings), so this comparison cannot show a robustness difference"
            )
    header = ["variant", *[f"{p} {s:g}" for p, s in columns]]
    return tabulate(rows, headers=header, tablefmt="simple", disable_numparse=True), notes


def clean_summary(frame: pd.DataFrame, variants: Sequence[str], metrics: Sequence[str]) -> str:
    """Clean scores of every variant in every metric (mean ± std over runs)."""
    rows = []
    for variant in variants:
        row = [variant]
        for metric in metrics:
            values = run_values(frame, metric)
            part = values[(values["variant"] == variant) & (values["perturbation"] == "clean")]["value"].tolist()
            row.append(_mean_std(part) if part else "")
        rows.append(row)
    return tabulate(rows, headers=["clean", *[m.upper() for m in metrics]], tablefmt="simple", disable_numparse=True)


def format_series_table(series: pd.DataFrame, metric: str, variants: Sequence[str], limit: int = 12) -> str:
    """Clean ``metric`` per series and variant (mean over runs); the ``limit`` worst series of the first variant
    when there are more. Empty for a single series (the pooled table says it all)."""
    part = series[(series["metric"] == metric) & (series["strength"] == 0.0)]
    if part.empty or part["series"].nunique() < 2:
        return ""
    per_run = part.groupby(["series", "variant", "run"], sort=False)["value"].mean()
    table = per_run.groupby(["series", "variant"], sort=False).mean().unstack("variant")
    table = table[[v for v in variants if v in table.columns]]
    count = len(table)
    title = f"clean {metric.upper()} per series (mean over runs)"
    if count > limit:
        table = table.sort_values(variants[0], ascending=False).head(limit)
        title += f"; the {limit} of {count} series where {variants[0]} does worst (all in robustness_series.csv)"
    rows = [[name, *[f"{value:.4g}" for value in values]] for name, values in zip(table.index, table.to_numpy())]
    return title + "\n\n" + tabulate(rows, headers=["series", *table.columns], tablefmt="simple", disable_numparse=True)


def format_robustness_table(results: pd.DataFrame, metric: str = "mae", change_label: str = "change") -> str:
    """Mean ± std over seeds of ``metric``: one row per (perturbation, strength), one column per model.

    ``results`` holds :func:`nrnn_plugin.robustness.evaluate` rows (``model`` column). With two models a last
    column gives the second model's mean relative to the first (``change_label``).
    """
    from nrnn_plugin.robustness import summarize

    table = summarize(results[results["metric"] == metric])
    models = list(dict.fromkeys(table["model"]))
    header = ["perturbation", "strength", *[f"{m} {metric.upper()}" for m in models]]
    if len(models) == 2:
        header.append(change_label)
    renamed = table.rename(columns={"model": "variant"})
    rows = []
    for perturbation, strength in cells(renamed):
        name = None if perturbation == "clean" else perturbation
        part = table[table["strength"] == strength] if name is None else table[table["perturbation"] == name]
        part = part[part["strength"] == strength].drop_duplicates("model").set_index("model")
        row = [perturbation, "-" if name is None else f"{strength:g}"]
        for m in models:
            mean, std, n = float(part.loc[m, "mean"]), float(part.loc[m, "std"]), int(part.loc[m, "n"])
            row.append(f"{mean:.4g} ± {std:.2g}" if n > 1 and std > 0 else f"{mean:.4g}")
        if len(models) == 2:
            first, second = (float(part.loc[m, "mean"]) for m in models)
            row.append(f"{100.0 * (second - first) / first:+.1f}%" if first else "")
        rows.append(row)
    return tabulate(rows, headers=header, tablefmt="simple", disable_numparse=True, colalign=("left", "left"))
