"""nrnn_plugin.app.stats: paired differences with t intervals that cover at their nominal rate."""

from __future__ import annotations

import math
import random

import pytest

from nrnn_plugin.app import stats


def test_paired_difference_by_hand():
    control = [1.0, 2.0, 3.0, 4.0]
    treated = [0.5, 1.7, 2.6, 3.9]  # differences -0.5 -0.3 -0.4 -0.1
    d = stats.paired_difference(control, treated)
    assert d.n == 4 and d.mean == pytest.approx(-0.325)
    sd = math.sqrt(sum((x + 0.325) ** 2 for x in (-0.5, -0.3, -0.4, -0.1)) / 3)
    assert d.sd == pytest.approx(sd)
    assert d.high - d.mean == pytest.approx(3.182 * sd / 2, rel=1e-3)  # t_{0.975, 3} = 3.182
    assert d.improved == 4 and d.clear and d.better and stats.verdict(d) == "better"
    assert d.relative == pytest.approx(-0.325 / 2.5 * 100)
    up = stats.paired_difference(control, treated, lower_is_better=False)
    assert up.improved == 0 and stats.verdict(up) == "worse"
    assert "4/4 improved" in d.describe()


def test_an_interval_that_contains_zero_is_no_clear_difference():
    d = stats.paired_difference([1.0, 1.0, 1.0], [1.1, 0.9, 1.05])
    assert not d.clear and stats.verdict(d) == "no clear difference"
    with pytest.raises(ValueError, match="equally long"):
        stats.paired_difference([1.0], [1.0, 2.0])


def test_the_interval_covers_at_its_nominal_rate():
    """8 seeds, 2000 simulated studies: the 95% interval holds the true mean 95% +/- 1.5% of the time."""
    rng = random.Random(0)
    hits = 0
    for _ in range(2000):
        control = [rng.gauss(0, 1) for _ in range(8)]
        treated = [c + 0.3 + rng.gauss(0, 0.5) for c in control]
        d = stats.paired_difference(control, treated)
        hits += d.low <= 0.3 <= d.high
    assert abs(hits / 2000 - 0.95) < 0.015


def test_t_quantiles_and_detectable_difference():
    assert stats.t_quantile(0.975, 7) == pytest.approx(2.365, abs=1e-3)
    assert stats.t_quantile(0.8, 7) == pytest.approx(0.896, abs=1e-3)
    assert stats.detectable_difference(1.0, 8) == pytest.approx((2.365 + 0.896) / math.sqrt(8), abs=1e-3)
    assert stats.detectable_difference(1.0, 1) == math.inf
