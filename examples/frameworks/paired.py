"""Shared by the framework examples: the experiment protocol and its paired, per-seed statistics.

Protocol (every example): a univariate series split in time into train / validation / test. Both models have the
same architecture, epochs and training seeds (same initial weights and data order; only the hidden-state noise
differs). The noise level is the only tuned setting: chosen on the validation windows (clean MAE, mean over
tuning seeds that are not evaluation seeds). Evaluation: every evaluation seed trains a plain and a noisy model;
the robustness suite scores both on the test windows under input perturbations (common random numbers: both
see the same perturbation draws). A result is the paired difference noisy - plain per training seed (averaged
over the perturbation seeds), with its mean, a 95% t-interval and the number of seeds on which noise helped.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nrnn_plugin.app.stats import paired_difference

PERTURBATIONS = {
    "white_noise": (0.0, 0.2, 0.4, 0.8),
    "salt_and_pepper": (0.05, 0.1),
    "fgsm": (0.05, 0.1),
    "pgd": (0.05, 0.1),
}
PERTURBATION_SEEDS = (0, 1, 2)


def timed(fit: Callable[[], Any]) -> tuple[Any, float]:
    """``(fit(), wall seconds)``."""
    start = time.perf_counter()
    result = fit()
    return result, time.perf_counter() - start


def paired(results: pd.DataFrame, metric: str = "mae") -> pd.DataFrame:
    """Paired differences noisy - plain per (perturbation, strength) over training seeds.

    ``results``: the robustness suite's rows plus ``train_seed`` and ``model`` (``"plain"`` / ``"noisy"``).
    Negative differences mean noise helped (lower error).
    """
    rows = results[results.metric == metric]
    per_seed = rows.groupby(["perturbation", "strength", "train_seed", "model"]).value.mean().unstack("model")
    table = []
    for (perturbation, strength), group in per_seed.groupby(level=["perturbation", "strength"]):
        d = paired_difference(group["plain"].tolist(), group["noisy"].tolist())
        table.append(
            {
                "perturbation": "clean" if strength == 0.0 else perturbation,
                "strength": strength,
                "plain": d.control_mean,
                "noisy": d.treated_mean,
                "diff": d.mean,
                "ci_low": d.low,
                "ci_high": d.high,
                "relative": d.percent_of_control,
                "improved": d.improved,
                "seeds": d.n,
            }
        )
    frame = pd.DataFrame(table).drop_duplicates(subset=["perturbation", "strength"])
    order = {"clean": 0, "white_noise": 1, "salt_and_pepper": 2, "fgsm": 3, "pgd": 4}
    return frame.sort_values(
        ["perturbation", "strength"], key=lambda c: c.map(order) if c.name == "perturbation" else c
    )


def markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A Markdown table of :func:`paired`'s result."""
    header = "| input | strength | plain MAE | noisy MAE | noisy - plain [95% CI] | change | seeds improved |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(
            f"| {row.perturbation} | {row.strength:g} | {row.plain:.{digits}f} | {row.noisy:.{digits}f} | "
            f"{row.diff:+.{digits}f} [{row.ci_low:+.{digits}f}, {row.ci_high:+.{digits}f}] | "
            f"{row.relative:+.1f}% | {row.improved}/{row.seeds} |"
        )
    return "\n".join(lines)


def environment() -> str:
    """One line describing where the numbers were measured."""
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
        f"{os.cpu_count()} CPUs visible, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'default')}"
    )


def timing_line(times: dict[str, Iterable[float]]) -> str:
    parts = []
    for name, values in times.items():
        values = list(values)
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        parts.append(f"{name} {mean:.1f} s ± {sd:.1f} (n={len(values)})")
    return "fit wall time per model: " + ", ".join(parts)


def write_report(out: Path, name: str, header: str, results: pd.DataFrame, times: dict, tuning: pd.DataFrame) -> str:
    """Write ``<name>.csv`` (every row), ``<name>_tuning.csv`` and ``<name>.md`` (the tables) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / f"{name}.csv", index=False)
    tuning.to_csv(out / f"{name}_tuning.csv", index=False)
    text = "\n\n".join(
        [
            header,
            "Noise level chosen on validation (clean MAE, mean over the tuning seeds):\n\n"
            + "\n".join(f"- {row.config}: {row.val_mae:.4f}" for row in tuning.itertuples()),
            "Test MAE, paired over training seeds (negative difference = noise helped):\n\n"
            + markdown(paired(results, "mae")),
            timing_line(times) + f"; {environment()}.",
        ]
    )
    (out / f"{name}.md").write_text(text + "\n")
    return text
