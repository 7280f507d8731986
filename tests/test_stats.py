"""The paired statistics of the robustness reports (``nrnn_plugin/app/stats.py``), checked against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
