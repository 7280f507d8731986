"""Dates on every pandas calendar become integer steps and come back as the same dates (``app/timeaxis.py``),
and the table checks name the row and the value that is wrong (``app/data.py``, ``app/checks.py``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nrnn_plugin.app.data import prepare_frame, read_table, split_and_check
from nrnn_plugin.app.errors import ConfigError, DataError, InputError
from nrnn_plugin.app.run_config import DataSpec
from nrnn_plugin.app.timeaxis import TimeAxis, canonical_offset

# (pandas frequency of the dates, first date, what a user may write as data.freq besides null)
CALENDARS = [
    ("MS", "2001-01-01", ["MS", "M"]),  # monthly, start anchored ("M" is the period alias: its anchor is taken)
    ("ME", "2001-01-31", ["ME", "M"]),  # monthly, end anchored
    ("QS-OCT", "1959-01-01", ["QS-OCT", "QS", "Q"]),  # quarterly, start (statsmodels macrodata)
    ("QE-DEC", "1959-03-31", ["QE", "Q"]),  # quarterly, end
    ("YS-JAN", "1950-01-01", ["YS", "YS-JAN", "Y"]),  # yearly, start
    ("YE-DEC", "1950-12-31", ["YE", "Y", "A"]),  # yearly, end
    ("W-SUN", "2020-01-05", ["W", "W-SUN"]),  # weekly
    ("W-SAT", "1958-03-29", ["W-SAT", "W"]),  # weekly on Saturdays (Mauna Loa CO2); "W" (Sundays) takes the anchor
    ("D", "2020-01-01", ["D"]),  # daily
    ("h", "2020-01-01 00:00", ["h", "H"]),  # hourly
    ("B", "2020-01-01", ["B"]),  # business days
    ("min", "2020-01-01 00:00", ["min", "T"]),  # minutes
]


def _table(freq: str, start: str, n: int = 40, groups: int = 2) -> pd.DataFrame:
    dates = pd.date_range(start, periods=n, freq=freq)
    rows = []
    for g in range(groups):
        rows.append(pd.DataFrame({"date": dates.strftime("%Y-%m-%d %H:%M:%S"), "y": np.arange(n) + 10.0 * g, "g": g}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("freq, start, given", CALENDARS, ids=[c[0] for c in CALENDARS])
def test_every_calendar_maps_to_steps_and_back(freq, start, given):
    table = _table(freq, start)
    dates = pd.DatetimeIndex(pd.to_datetime(table["date"]))
    for written in [None, *given]:
        spec = DataSpec.from_dict({"time": "date", "target": "y", "group_ids": ["g"], "freq": written})
        prepared = prepare_frame(table, spec, source="t.csv")
        axis = prepared.time_axis
        assert canonical_offset(axis.freq).is_on_offset(dates[0]), (written, axis)
        steps = prepared.frame.sort_values(["g", "date"])["date"].to_numpy()
        assert list(steps[:40]) == list(range(40)), (written, axis)
        back = axis.to_dates(steps[:40])
        assert (back == dates[:40]).all(), (written, axis)
        # future steps (forecasts) and a round trip through the sidecar's plain data
        future = TimeAxis.from_dict(axis.to_dict()).to_dates(np.arange(40, 43))
        assert (future == pd.date_range(start, periods=43, freq=freq)[40:]).all()
        if written is not None and canonical_offset(written).freqstr != axis.freq:
            assert any(f"data.freq {written!r} read as" in note for note in prepared.notes)


@pytest.mark.parametrize("freq, start", [("MS", "2001-01-01"), ("QS-OCT", "1959-01-01"), ("B", "2020-01-01")])
def test_evaluation_data_maps_onto_the_training_calendar(freq, start):
    table = _table(freq, start, n=60, groups=1)
    spec = DataSpec.from_dict({"time": "date", "target": "y"})
    axis = prepare_frame(table.iloc[:40], spec).time_axis
    later = prepare_frame(table.iloc[20:], spec, time_axis=axis).frame
    assert list(later["date"]) == list(range(20, 60))


def test_an_off_calendar_date_names_its_row_and_value():
    table = _table("MS", "2001-01-01", groups=1)
    table.loc[10, "date"] = "2001-11-15 00:00:00"
    with pytest.raises(DataError, match=r"1 date\(s\) are not on the 'MS' calendar .* \(first at row 10: 2001-11-15"):
        prepare_frame(table, DataSpec.from_dict({"time": "date", "target": "y", "freq": "MS"}))


def test_a_bad_date_is_reported_with_its_own_row_and_value():
    table = _table("D", "2020-01-01", groups=1)
    table["date"] = pd.to_datetime(table["date"]).dt.strftime("%Y-%m-%d")
    table.loc[10, "date"] = "2020-01-1x"
    with pytest.raises(DataError) as info:
        prepare_frame(table, DataSpec.from_dict({"time": "date", "target": "y"}), source="d.csv")
    message = str(info.value)
    assert "first at row 10: '2020-01-1x'" in message and "like row 0's '2020-01-01'" in message


def test_an_unknown_frequency_and_an_integer_time_with_freq():
    table = _table("D", "2020-01-01", groups=1)
    with pytest.raises(ConfigError, match=r"data.freq: 'fortnightly' is not a pandas frequency"):
        prepare_frame(table, DataSpec.from_dict({"time": "date", "target": "y", "freq": "fortnightly"}))
    ints = pd.DataFrame({"t": range(10), "y": np.arange(10.0)})
    with pytest.raises(ConfigError, match="data.freq: only for date columns"):
        prepare_frame(ints, DataSpec.from_dict({"time": "t", "target": "y", "freq": "D"}))


def test_a_missing_business_day_is_a_gap():
    table = _table("B", "2020-01-01", groups=1).drop(index=5)
    spec = DataSpec.from_dict({"time": "date", "target": "y", "freq": "B"})
    with pytest.raises(DataError, match="time steps are missing"):
        prepare_frame(table, spec)
    assert len(prepare_frame(table, spec.replace(allow_missing_timesteps=True)).frame) == 39


def test_infinite_targets_are_named_by_row():
    frame = pd.DataFrame({"t": range(20), "y": np.arange(20.0)})
    frame.loc[[3, 12], "y"] = [np.inf, -np.inf]
    with pytest.raises(DataError, match=r"d.csv: column 'y' has 2 infinite value\(s\) \(rows \[3, 12\]\)"):
        prepare_frame(frame, DataSpec.from_dict({"time": "t", "target": "y"}), source="d.csv")


def test_a_txt_data_file_is_refused(tmp_path):
    (tmp_path / "d.txt").write_text("t,y\n0,1\n")
    with pytest.raises(InputError, match=r"expected one of the suffixes \['.csv', '.csv.gz', '.tsv', '.parquet'"):
        read_table(tmp_path / "d.txt")


def test_a_quarterly_panel_trains_windows_with_real_dates():
    """statsmodels macrodata, five series stacked with a group id (the issue's reproduction), freq inferred."""
    sm = pytest.importorskip("statsmodels.api")
    macro = sm.datasets.macrodata.load_pandas().data
    dates = pd.date_range("1959-01-01", periods=len(macro), freq="QS-OCT").strftime("%Y-%m-%d")
    long = pd.concat(
        [pd.DataFrame({"quarter": dates, "series": c, "value": macro[c]}) for c in ("realgdp", "realcons", "cpi")]
    )
    spec = DataSpec.from_dict(
        {
            "time": "quarter",
            "target": "value",
            "group_ids": ["series"],
            "static_categoricals": ["series"],
            "max_encoder_length": 12,
            "max_prediction_length": 4,
            "validation": 16,
            "test": 16,
        }
    )
    prepared, split = split_and_check(prepare_frame(long, spec))
    assert prepared.time_axis.freq == "QS-OCT" and split.test_start == 203 - 16
    assert str(prepared.time_axis.to_dates([split.test_start])[0].date()) == "2005-10-01"
