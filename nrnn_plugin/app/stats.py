"""Paired comparisons over training seeds: the mean change, its Student-t confidence interval, seeds improved.

A claim that one variant beats another needs its uncertainty: train both with the same seeds (same initial
weights, data order and perturbation draws), pair the runs by seed, and report the mean per-seed change with a
confidence interval and the count of seeds that improved. A difference is called only where the interval
excludes 0 (:attr:`PairedChange.clear`). The smallest true paired difference an ``n``-seed study detects with 80%
power at the 5% level is about ``(t_{0.975, n-1} + t_{0.8, n-1}) * sd / sqrt(n)`` (:func:`detectable_difference`).

* :func:`paired_change`: the per-seed change of ``treated`` against ``control``, relative (``(b - a) / a``) or
  absolute (``b - a``); :func:`paired_difference` is the absolute one (units of the metric).
* :func:`t_quantile`, :func:`t_interval`: exact Student-t quantiles and intervals in pure Python (the
  regularized incomplete beta function; ``tests/test_stats.py`` checks them against ``scipy.stats``).

Used by ``nrnn robustness`` (variants over seeds), ``nrnn demo``, ``benchmarks/reproduce_robustness.py`` and the
framework examples.

>>> change = paired_change([10.0, 12.0, 11.0], [9.0, 11.5, 11.2])   # error of A, then B, per seed
>>> round(change.mean, 4), change.improved, change.n                 # relative change of B vs A
(-0.0412, 2, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "PairedChange",
    "paired_change",
    "paired_difference",
    "detectable_difference",
    "verdict",
    "p_value",
    "graded_verdict",
    "CLEAR_P",
    "THRESHOLD_P",
    "t_interval",
    "t_quantile",
    "t_cdf",
]


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _regularized_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)``, the regularized incomplete beta function, for ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df > 0`` degrees of freedom."""
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``0 < p < 1``), by bisection."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile: expected 0 < p < 1 and df > 0, got p={p!r}, df={df!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval of ``values``; ``(mean, nan, nan)`` for one value."""
    n = len(values)
    if n == 0:
        raise ValueError("t_interval: no values")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class PairedChange:
    """The change of ``treated`` against ``control`` over ``n`` paired seeds.

    ``relative``: the per-seed change is ``(treated - control) / control`` (a fraction; ``-0.05`` is 5 % lower),
    else ``treated - control`` in the metric's units. ``mean``, ``low``, ``high``: the mean change and its
    two-sided Student-t interval at ``confidence`` (``nan`` bounds for one seed); ``sd``: the per-seed changes'
    standard deviation. ``improved`` counts seeds where ``treated`` is better (lower when ``lower_is_better``).
    """

    mean: float
    low: float
    high: float
    n: int
    improved: int
    confidence: float
    relative: bool
    sd: float = math.nan
    control_mean: float = math.nan
    treated_mean: float = math.nan
    lower_is_better: bool = True

    @property
    def clear(self) -> bool:
        """True when the interval excludes 0 (a difference is stated only then)."""
        return self.n > 1 and (self.low > 0.0 or self.high < 0.0)

    @property
    def better(self) -> bool:
        """True when the difference is clear and in the good direction."""
        return self.clear and ((self.mean < 0) == self.lower_is_better)

    @property
    def percent_of_control(self) -> float:
        """The mean change in % of the control's mean (for an absolute change; the relative one is ``100 mean``)."""
        if self.relative:
            return 100.0 * self.mean
        return 100.0 * self.mean / abs(self.control_mean) if self.control_mean else math.nan

    def text(self, digits: int = 1) -> str:
        """``-4.1% [-9.0, +0.8], 2/3 improved`` (relative) or ``-0.5 [-1.1, +0.1], 2/3 improved``."""
        scale, unit = (100.0, "%") if self.relative else (1.0, "")
        spec = f"+.{digits}f"
        interval = "" if math.isnan(self.low) else f" [{scale * self.low:{spec}}, {scale * self.high:{spec}}]"
        return f"{scale * self.mean:{spec}}{unit}{interval}, {self.improved}/{self.n} improved"

    def describe(self, unit: str = "", digits: int = 3) -> str:
        """``-0.012 [-0.020, -0.004] (-3.1%), 8/8 improved`` (the absolute change and its share of the control)."""
        f = f"{{:+.{digits}f}}"
        interval = "" if math.isnan(self.low) else f" [{f.format(self.low)}, {f.format(self.high)}]"
        return (
            f"{f.format(self.mean)}{unit}{interval} ({self.percent_of_control:+.1f}%), "
            f"{self.improved}/{self.n} improved"
        )


def paired_change(
    control: Sequence[float],
    treated: Sequence[float],
    *,
    relative: bool = True,
    confidence: float = 0.95,
    lower_is_better: bool = True,
) -> PairedChange:
    """Per-seed change of ``treated`` against ``control`` (same order: ``control[i]`` and ``treated[i]`` share
    seed ``i``), its mean with a two-sided Student-t interval and the count of seeds where ``treated`` is better."""
    if len(control) != len(treated) or not control:
        raise ValueError(
            f"paired_change: expected two non-empty sequences of equal length, got {len(control)} and {len(treated)}"
        )
    a, b = [float(v) for v in control], [float(v) for v in treated]
    changes = [(y - x) / x if relative else y - x for x, y in zip(a, b)]
    mean, low, high = t_interval(changes, confidence)
    n = len(changes)
    sd = math.sqrt(math.fsum((c - mean) ** 2 for c in changes) / (n - 1)) if n > 1 else math.nan
    improved = sum((y < x) if lower_is_better else (y > x) for x, y in zip(a, b))
    return PairedChange(
        mean, low, high, n, improved, confidence, relative, sd, math.fsum(a) / n, math.fsum(b) / n, lower_is_better
    )


def paired_difference(
    control: Sequence[float], treated: Sequence[float], *, lower_is_better: bool = True, confidence: float = 0.95
) -> PairedChange:
    """:func:`paired_change` in the metric's units: ``treated - control`` per seed."""
    return paired_change(control, treated, relative=False, confidence=confidence, lower_is_better=lower_is_better)


def detectable_difference(sd: float, n: int, *, power: float = 0.8, confidence: float = 0.95) -> float:
    """The smallest true paired difference an ``n``-seed study detects (two-sided, at ``confidence``) with the
    given ``power``, for per-seed changes of standard deviation ``sd``; ``inf`` below two seeds."""
    if n < 2:
        return math.inf
    return (t_quantile(0.5 + confidence / 2.0, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def verdict(change: PairedChange) -> str:
    """``"better"``, ``"worse"`` or ``"no clear difference"`` (the interval contains 0)."""
    if not change.clear:
        return "no clear difference"
    return "better" if change.better else "worse"


#: :func:`graded_verdict`: a difference is *clear* below this two-sided p-value (the 99% interval excludes 0) ...
CLEAR_P = 0.01
#: ... and *at the detection threshold* from :data:`CLEAR_P` up to this one (the 90% interval excludes 0).
THRESHOLD_P = 0.10


def p_value(change: PairedChange) -> float:
    """Two-sided p-value of the paired t-test of "mean change = 0" (``nan`` for one seed; 0 or 1 when every seed
    changed by the same amount)."""
    if change.n < 2:
        return math.nan
    if not change.sd > 0:
        return 0.0 if change.mean != 0 else 1.0
    t = abs(change.mean) / (change.sd / math.sqrt(change.n))
    return min(1.0, 2.0 * (1.0 - t_cdf(t, change.n - 1)))


def graded_verdict(change: PairedChange, *, clear: float = CLEAR_P, threshold: float = THRESHOLD_P) -> str:
    """``"better"`` / ``"worse"`` where ``p < clear``; ``"threshold better"`` / ``"threshold worse"`` where
    ``clear <= p < threshold``; else ``"no clear difference"``.

    A single cut (the 95% interval against 0) turns an effect near it into opposite printed verdicts on two
    machines whose runs differ only in rounding. The middle grade names those effects instead: the direction is
    likely, and the number of seeds too small to state it.
    """
    p = p_value(change)
    if not p < threshold:  # nan (one seed) included
        return "no clear difference"
    direction = "better" if (change.mean < 0) == change.lower_is_better else "worse"
    return direction if p < clear else f"threshold {direction}"
