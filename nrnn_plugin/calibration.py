"""Calibrating Monte Carlo bands from hidden-state noise on validation data, and checking their coverage.

Bands from hidden-state noise (:func:`nrnn_plugin.inference.sample_paths`) show how sensitive the recurrent
dynamics are to noise of the training level; nothing makes them a forecast distribution, and on real series they
under-cover (e.g. 34-51% of targets inside a nominal 80% band on CO2, ``docs/reproduction.md``). Two fixes, both
fitted on validation windows only:

* **Noise scale** (:func:`choose_scale`): widen the noise at inference (``sample_paths(..., scale=s)``) until
  the validation coverage of the band reaches the nominal level. It keeps the shape of the band over the
  horizon but moves the median too, and it may not reach the level at all (the dynamics saturate).
* **Split-conformal adjustment** (:func:`conformal_offsets`, conformalised quantile regression): widen (or
  narrow) the band by ``Q_t``, the ``ceil((n + 1) level) / n`` empirical quantile of the validation scores
  ``max(lo - y, y - hi)``, separately for every horizon step ``t``. If validation and test windows are
  exchangeable, the coverage on test windows is at least ``level`` (and below ``level + 1 / (n + 1)``): a
  finite-sample guarantee that does not depend on the model being right.

Shapes: samples ``[N, T, S]`` (windows, horizon, samples; pytorch-forecasting's "samples" layout), targets and
bands ``[N, T]``. :func:`coverage` reports the fraction inside with a Wilson 95% interval; the interval treats
every (window, step) as independent, which overlapping windows are not, so it is narrower than the truth there
(``independent=`` lets the caller count, e.g., non-overlapping windows only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nrnn_plugin.validation import check_real

__all__ = ["central_band", "conformal_offsets", "apply_offsets", "coverage", "Coverage", "choose_scale"]


def _check_level(level: float) -> float:
    return check_real("level", level, minimum=0.0, strict=True, maximum=0.999999)


def central_band(samples: Tensor, level: float = 0.8) -> tuple[Tensor, Tensor]:
    """The central ``level`` band of ``samples`` ``[N, T, S]``: quantiles ``(1 -/+ level) / 2``, each ``[N, T]``."""
    level = _check_level(level)
    if samples.dim() != 3:
        raise ValueError(f"central_band: samples must be [N, T, S], got shape {tuple(samples.shape)}")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype, device=samples.device)
    lo, hi = torch.quantile(samples, q, dim=-1)
    return lo, hi


def conformal_offsets(lo: Tensor, hi: Tensor, target: Tensor, level: float = 0.8) -> Tensor:
    """Per horizon step ``[T]``: the split-conformal widening ``Q_t`` of a band fitted on validation windows.

    ``lo, hi, target``: ``[N, T]`` on validation windows (``N >= 1``). ``Q_t`` is the
    ``ceil((N + 1) level)``-th smallest score ``max(lo - y, y - hi)`` at step ``t`` (``+inf`` when that rank
    exceeds ``N``: too few windows for the level). Negative ``Q_t`` narrows a band that over-covers.
    """
    level = _check_level(level)
    if not (lo.shape == hi.shape == target.shape) or lo.dim() != 2:
        raise ValueError(
            f"conformal_offsets: lo, hi and target must have one shape [N, T], got {tuple(lo.shape)}, "
            f"{tuple(hi.shape)}, {tuple(target.shape)}"
        )
    n = lo.shape[0]
    rank = math.ceil((n + 1) * level)
    scores = torch.maximum(lo - target, target - hi)
    if rank > n:
        return torch.full((lo.shape[1],), math.inf, dtype=lo.dtype, device=lo.device)
    return torch.sort(scores, dim=0).values[rank - 1]


def apply_offsets(lo: Tensor, hi: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """The calibrated band ``(lo - Q_t, hi + Q_t)`` (``offsets`` ``[T]``, broadcast over windows)."""
    return lo - offsets, hi + offsets


@dataclass(frozen=True)
class Coverage:
    """Fraction of targets inside a band, its Wilson 95% interval, and the mean width."""

    fraction: float
    low: float
    high: float
    n: int
    width: float

    def contains(self, level: float) -> bool:
        """True when ``level`` lies inside the 95% interval (the band covers at the nominal level)."""
        return self.low <= level <= self.high

    def describe(self, digits: int = 3) -> str:
        return f"{self.fraction:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] (n={self.n})"


def wilson(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def coverage(lo: Tensor, hi: Tensor, target: Tensor, *, independent: int | None = None) -> Coverage:
    """How many targets lie in ``[lo, hi]`` (all ``[N, T]``), with a Wilson interval on ``independent`` trials
    (default: every element; pass fewer when elements are correlated, e.g. overlapping windows)."""
    inside = ((target >= lo) & (target <= hi)).double()
    n = int(inside.numel())
    fraction = float(inside.mean())
    trials = n if independent is None else int(independent)
    low, high = wilson(fraction * trials, trials)
    return Coverage(fraction, low, high, trials, float((hi - lo).double().mean()))


def choose_scale(
    sample: Callable[[float], Tensor],
    target: Tensor,
    level: float = 0.8,
    scales: Sequence[float] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0),
) -> tuple[float, list[tuple[float, float]]]:
    """The smallest inference noise scale whose central ``level`` band covers ``level`` of the validation targets.

    ``sample(scale) -> [N, T, S]`` draws validation forecasts at that noise scale (e.g. a ``forecast_samples``
    closure). Returns the scale and every ``(scale, coverage)`` tried. When no scale reaches the level, the one
    with the highest validation coverage: coverage need not grow with the scale, because stronger noise also
    moves the median of the paths away from the targets.
    """
    level = _check_level(level)
    tried: list[tuple[float, float]] = []
    for scale in sorted(float(s) for s in scales):
        lo, hi = central_band(sample(scale), level)
        tried.append((scale, coverage(lo, hi, target).fraction))
        if tried[-1][1] >= level:
            return scale, tried
    return max(tried, key=lambda pair: pair[1])[0], tried
