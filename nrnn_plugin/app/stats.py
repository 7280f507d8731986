"""Paired comparisons over seeds: per-seed differences, a t-based 95% confidence interval, the count improved.

Two models trained with the same seeds (same initial weights, data order and perturbation draws) are compared
seed by seed: ``d_s = treated_s - control_s``. The mean of ``d`` with a Student-t interval
(``mean +/- t_{0.975, n-1} * sd / sqrt(n)``) is the estimate; a difference is called only where the interval
excludes 0. ``improved`` counts the seeds where the treated model is better (``lower_is_better`` says which
way). The smallest paired difference an ``n``-seed study detects with 80% power at the 5% level is about
``(t_{0.975, n-1} + t_{0.8, n-1}) * sd / sqrt(n)`` (:func:`detectable_difference`).

Used by ``nrnn demo`` and ``benchmarks/reproduce_robustness.py``. Needs only the standard library (scipy is used
for the t quantiles when it is installed; otherwise a table to 30 degrees of freedom and the normal beyond).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PairedDifference", "paired_difference", "t_quantile", "detectable_difference", "verdict"]

# t quantiles 0.975 and 0.8 for 1..30 degrees of freedom (the fallback without scipy).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip
_T80 = (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870, 0.868,
        0.866, 0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855,
        0.854, 0.854)  # fmt: skip


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (``q`` in {0.975, 0.8} without scipy)."""
    try:
        from scipy.stats import t

        return float(t.ppf(q, df))
    except ImportError:
        table = {0.975: (_T975, 1.960), 0.8: (_T80, 0.8416)}
        if q not in table:
            raise ValueError(f"t_quantile: without scipy, q must be 0.975 or 0.8, got {q}") from None
        values, normal = table[q]
        return values[df - 1] if df <= len(values) else normal


@dataclass(frozen=True)
class PairedDifference:
    """``treated - control`` over paired seeds (units of the metric; ``relative`` in % of the control mean)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    improved: int
    control_mean: float
    treated_mean: float
    lower_is_better: bool

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    @property
    def clear(self) -> bool:
        """True when the 95% interval excludes 0."""
        return self.n > 1 and (self.low > 0.0 or self.high < 0.0)

    @property
    def relative(self) -> float:
        """The mean difference in % of the control's mean."""
        return 100.0 * self.mean / abs(self.control_mean) if self.control_mean else math.nan

    @property
    def better(self) -> bool:
        return self.clear and ((self.mean < 0) == self.lower_is_better)

    def describe(self, unit: str = "", digits: int = 3) -> str:
        """``-0.012 [-0.020, -0.004] (-3.1%), 8/8 improved``."""
        f = f"{{:+.{digits}f}}"
        ci = f"[{f.format(self.low)}, {f.format(self.high)}]"
        return f"{f.format(self.mean)}{unit} {ci} ({self.relative:+.1f}%), {self.improved}/{self.n} improved"


def paired_difference(
    control: Sequence[float], treated: Sequence[float], *, lower_is_better: bool = True, level: float = 0.95
) -> PairedDifference:
    """The paired difference ``treated - control`` (same seeds, same order) with its t interval."""
    if len(control) != len(treated) or not control:
        raise ValueError(
            f"paired_difference: expected two equally long, non-empty sequences, got {len(control)} and {len(treated)}"
        )
    if level != 0.95:
        raise ValueError(f"paired_difference: level must be 0.95, got {level}")
    diffs = [float(b) - float(a) for a, b in zip(control, treated)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else math.nan
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    improved = sum(1 for d in diffs if (d < 0 if lower_is_better else d > 0))
    return PairedDifference(
        n=n,
        mean=mean,
        sd=sd,
        low=mean - half,
        high=mean + half,
        improved=improved,
        control_mean=statistics.fmean(float(a) for a in control),
        treated_mean=statistics.fmean(float(b) for b in treated),
        lower_is_better=lower_is_better,
    )


def detectable_difference(sd: float, n: int) -> float:
    """The smallest true paired difference detected with 80% power at the 5% level (two-sided) by ``n`` seeds."""
    if n < 2:
        return math.inf
    return (t_quantile(0.975, n - 1) + t_quantile(0.8, n - 1)) * sd / math.sqrt(n)


def verdict(diff: PairedDifference) -> str:
    """``"better"``, ``"worse"`` or ``"no clear difference"`` (the interval contains 0)."""
    if not diff.clear:
        return "no clear difference"
    return "better" if diff.better else "worse"
