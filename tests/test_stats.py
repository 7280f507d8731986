"""The paired statistics of the robustness reports (``nrnn_plugin/app/stats.py``), checked against scipy."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from nrnn_plugin.app import stats
from nrnn_plugin.app.stats import paired_change, t_cdf, t_interval, t_quantile

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 12, 30, 250])
def test_student_t_matches_scipy(df):
    for p in (0.001, 0.025, 0.1, 0.5, 0.8, 0.95, 0.975, 0.995):
        expected = scipy_stats.t.ppf(p, df)
        assert t_quantile(p, df) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    for t in (-12.0, -2.0, -0.3, 0.0, 0.7, 2.5, 40.0):
        assert t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-9, abs=1e-12)


def test_interval_and_paired_change_match_scipy():
    generator = np.random.default_rng(0)
    for n in (2, 3, 8, 20):
        a = generator.normal(10.0, 1.0, n)
        b = a * (1 + generator.normal(-0.03, 0.02, n))
        change = paired_change(list(a), list(b))
        relative = (b - a) / a
        low, high = scipy_stats.t.interval(0.95, n - 1, loc=relative.mean(), scale=scipy_stats.sem(relative))
        assert change.mean == pytest.approx(relative.mean(), rel=1e-12)
        assert (change.low, change.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
        assert change.improved == int((b < a).sum()) and change.n == n
        absolute = paired_change(list(a), list(b), relative=False, confidence=0.9)
        low, high = scipy_stats.t.interval(0.9, n - 1, loc=(b - a).mean(), scale=scipy_stats.sem(b - a))
        assert (absolute.low, absolute.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))


def test_one_seed_has_no_interval_and_the_text_says_what_improved():
    mean, low, high = t_interval([0.5])
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)
    assert paired_change([2.0], [1.0]).text() == "-50.0%, 1/1 improved"
    assert paired_change([1.0, 2.0], [0.9, 2.2]).text().endswith(", 1/2 improved")
    assert paired_change([1.0, 2.0], [1.1, 2.2], lower_is_better=False).improved == 2
    with pytest.raises(ValueError, match="equal length"):
        paired_change([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


# ---------------------------------------------------------------------------------------------- absolute


def test_paired_difference_by_hand():
    control = [1.0, 2.0, 3.0, 4.0]
    treated = [0.5, 1.7, 2.6, 3.9]  # differences -0.5 -0.3 -0.4 -0.1
    d = stats.paired_difference(control, treated)
    assert d.n == 4 and d.mean == pytest.approx(-0.325)
    sd = math.sqrt(sum((x + 0.325) ** 2 for x in (-0.5, -0.3, -0.4, -0.1)) / 3)
    assert d.sd == pytest.approx(sd)
    assert d.high - d.mean == pytest.approx(3.182 * sd / 2, rel=1e-3)  # t_{0.975, 3} = 3.182
    assert d.improved == 4 and d.clear and d.better and stats.verdict(d) == "better"
    assert not d.relative and d.percent_of_control == pytest.approx(-0.325 / 2.5 * 100)
    up = stats.paired_difference(control, treated, lower_is_better=False)
    assert up.improved == 0 and stats.verdict(up) == "worse"
    assert "4/4 improved" in d.describe()


def test_an_interval_that_contains_zero_is_no_clear_difference():
    d = stats.paired_difference([1.0, 1.0, 1.0], [1.1, 0.9, 1.05])
    assert not d.clear and stats.verdict(d) == "no clear difference"
    with pytest.raises(ValueError, match="equal length"):
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


def test_p_value_matches_scipy_and_grades_the_verdict():
    rng = np.random.default_rng(3)
    for n, shift in ((5, 0.0), (12, 0.6), (64, 0.25), (64, -0.1)):
        a = rng.normal(10.0, 1.0, n)
        b = a + rng.normal(shift, 1.0, n)
        d = stats.paired_difference(a.tolist(), b.tolist())
        expected = scipy_stats.ttest_rel(b, a).pvalue
        assert stats.p_value(d) == pytest.approx(expected, rel=1e-7, abs=1e-12)

    def change(mean: float, sd: float, n: int = 16, lower_is_better: bool = True) -> stats.PairedChange:
        return stats.PairedChange(mean, 0.0, 0.0, n, 0, 0.95, False, sd, lower_is_better=lower_is_better)

    se = 1.0 / math.sqrt(16)  # sd 1 over 16 seeds
    t_clear, t_threshold = (stats.t_quantile(1 - p / 2, 15) for p in (stats.CLEAR_P, stats.THRESHOLD_P))
    assert stats.graded_verdict(change(-(t_clear + 0.01) * se, 1.0)) == "better"
    assert stats.graded_verdict(change(+(t_clear + 0.01) * se, 1.0)) == "worse"
    assert stats.graded_verdict(change(-(t_clear - 0.01) * se, 1.0)) == "threshold better"
    assert stats.graded_verdict(change(+(t_threshold + 0.01) * se, 1.0)) == "threshold worse"
    assert stats.graded_verdict(change(+(t_threshold - 0.01) * se, 1.0)) == "no clear difference"
    # higher is better (accuracy): a positive change is the good direction
    assert stats.graded_verdict(change(+(t_clear + 0.01) * se, 1.0, lower_is_better=False)) == "better"
    # no spread: any change is certain, none is none; one seed has no p-value
    assert stats.p_value(change(0.1, 0.0)) == 0.0 and stats.p_value(change(0.0, 0.0)) == 1.0
    assert math.isnan(stats.p_value(change(0.1, 1.0, n=1)))
    assert stats.graded_verdict(change(0.1, 1.0, n=1)) == "no clear difference"
