"""The demo's comparison table: per grid point both models' MAE and the paired per-seed change with noise.

:func:`paired_rows` turns the tidy results of :mod:`nrnn_plugin.app.demo` (one row per model, training seed,
perturbation seed, perturbation, strength and metric) into one :class:`PairedRow` per grid point;
:func:`comparison_report` prints them with the 95% intervals and the conclusion in three grades
(:func:`nrnn_plugin.app.stats.graded_verdict`): clear (paired t-test p < 0.01), at the detection threshold
(0.01 <= p < 0.10), no clear difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from nrnn_plugin.app.stats import CLEAR_P, THRESHOLD_P

if TYPE_CHECKING:
    from nrnn_plugin.app.demo import DemoSettings

__all__ = ["PairedRow", "paired_rows", "comparison_report"]


_VERDICTS = {
    "better": "lower MAE with noise",
    "worse": "higher MAE with noise",
    "threshold better": "at the threshold: lower",
    "threshold worse": "at the threshold: higher",
}


def _p_text(p: float) -> str:
    """``0.044``, ``<0.001`` or ``-`` (one seed)."""
    if p != p:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _mean_sd(mean: float, sd: float) -> str:
    """``0.5028 ± 0.035`` (the spread over training seeds; only the mean for one seed)."""
    return f"{mean:.4g} ± {sd:.2g}" if sd == sd else f"{mean:.4g}"


@dataclass(frozen=True)
class PairedRow:
    """One grid point: both models' mean MAE (and spread over seeds) and the paired change in % of plain's."""

    perturbation: str
    strength: float
    plain: float
    plain_sd: float
    noisy: float
    noisy_sd: float
    change: float
    low: float
    high: float
    improved: int
    n: int
    p: float
    verdict: str

    @property
    def label(self) -> str:
        return "clean" if self.strength == 0.0 else f"{self.perturbation} {self.strength:g}"


def _per_seed(mae: pd.DataFrame) -> pd.DataFrame:
    """MAE per (model, perturbation, strength, training seed), averaged over the perturbation seeds."""
    return mae.groupby(["model", "perturbation", "strength", "train_seed"], as_index=False, sort=False)["value"].mean()


def paired_rows(results: pd.DataFrame, plain: str, noisy: str) -> list[PairedRow]:
    """Per grid point: both models' mean MAE and the paired per-seed change of ``noisy`` against ``plain``."""
    from nrnn_plugin.app.stats import graded_verdict, p_value, paired_difference

    per_seed = _per_seed(results[results["metric"] == "mae"])
    rows: list[PairedRow] = []
    clean_done = False
    for (perturbation, strength), part in per_seed.groupby(["perturbation", "strength"], sort=False):
        if strength == 0.0:
            if clean_done:
                continue
            clean_done = True
        pivot = part.pivot_table(index="train_seed", columns="model", values="value")
        d = paired_difference(pivot[plain].tolist(), pivot[noisy].tolist(), lower_is_better=True)
        scale = 100.0 / d.control_mean
        rows.append(
            PairedRow(
                perturbation="clean" if strength == 0.0 else str(perturbation),
                strength=float(strength),
                plain=d.control_mean,
                plain_sd=float(pivot[plain].std(ddof=1)) if d.n > 1 else float("nan"),
                noisy=d.treated_mean,
                noisy_sd=float(pivot[noisy].std(ddof=1)) if d.n > 1 else float("nan"),
                change=d.mean * scale,
                low=d.low * scale,
                high=d.high * scale,
                improved=d.improved,
                n=d.n,
                p=p_value(d),
                verdict=graded_verdict(d) if d.n > 1 else "one seed: no interval",
            )
        )
    return rows


def comparison_report(
    settings: DemoSettings,
    seeds: tuple[int, ...],
    fit_seconds: dict[str, float],
    plain: str,
    noisy: str,
    dataset: str,
    results: pd.DataFrame,
    windows: int,
) -> str:
    """The printed comparison: table, training time and conclusion (``settings`` gives the budget and grid)."""
    rows = paired_rows(results, plain, noisy)
    table = [
        [
            "perturbation",
            "strength",
            f"{plain} MAE",
            f"{noisy} MAE",
            "change",
            "95% CI",
            "p",
            "improved",
            "verdict (noise vs plain)",
        ]
    ]
    for r in rows:
        table.append(
            [
                r.perturbation,
                "-" if r.strength == 0.0 else f"{r.strength:g}",
                _mean_sd(r.plain, r.plain_sd),
                _mean_sd(r.noisy, r.noisy_sd),
                f"{r.change:+.1f}%",
                f"[{r.low:+.1f}%, {r.high:+.1f}%]" if r.n > 1 else "-",
                _p_text(r.p),
                f"{r.improved}/{r.n}",
                _VERDICTS.get(r.verdict, r.verdict),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    text = [
        "  ".join(c.ljust(w) if i in (0, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
        for line in table
    ]
    text.insert(1, "  ".join("-" * w for w in widths))

    def listed(*kinds: str) -> str:
        chosen = [r for r in rows if r.verdict in kinds]
        return (
            ", ".join(
                f"{r.label} ({r.change:+.1f}% [{r.low:+.1f}%, {r.high:+.1f}%], p {_p_text(r.p)}, "
                f"{r.improved}/{r.n} seeds)"
                for r in chosen
            )
            or "none"
        )

    lines = [
        f"nrnn demo: {dataset}, {windows} test windows; MAE in the target's units (lower is better), mean ± std over "
        f"{len(seeds)} training seed(s) (each averaged over {len(settings.perturbation_seeds)} perturbation seed(s)); "
        f"change = {noisy} minus {plain}, paired by training seed, in % of the {plain} MAE, with its t-based 95% "
        f"interval and the paired t-test's p-value; improved = seeds where noise lowered the MAE",
        "",
        *text,
        "",
        f"training time ({settings.epochs} epochs x {len(seeds)} seed(s)): "
        + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in fit_seconds.items()),
    ]
    if len(seeds) > 1:
        lines += [
            f"conclusion (a difference is stated only where it is clear: p < {CLEAR_P:g}, the 99% interval excludes 0; "
            f"at the threshold: {CLEAR_P:g} <= p < {THRESHOLD_P:g}, the direction is likely but these seeds do not "
            "settle it):",
            f"  lower MAE with noise:  {listed('better')}",
            f"  higher MAE with noise: {listed('worse')}",
            f"  at the threshold:      {listed('threshold better', 'threshold worse')}",
            f"  no clear difference:   {listed('no clear difference')}",
        ]
    else:
        lines.append("conclusion: none (one training seed gives no uncertainty; run without --quick)")
    return "\n".join(lines)
