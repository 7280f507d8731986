"""The time axis of a run: integer steps as they are, or dates on any pandas calendar, and back to dates.

pytorch-forecasting counts time in integer steps. A date column becomes steps of a pandas frequency counted
from the first training date (``origin``), so evaluation and prediction data map the same way and forecasts
come back with real dates (:meth:`TimeAxis.to_dates`). Every pandas frequency works, start or end anchored:
``MS``/``ME``, ``QS-OCT``/``QE``/``Q``, ``YS-JAN``/``YE``/``Y``, ``W-SUN``, ``D``, ``B`` (business days),
``h``, ``min``, ... Period-style aliases (``Q``, ``M``, ``Y``, ``A``, ``H``, ``T``) mean their offset
(``QE``, ``ME``, ``YE``, ``YE``, ``h``, ``min``); a given frequency whose anchor does not fit the dates but
whose period does (``Q`` for quarter-start dates) takes the dates' anchor, with a note.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

__all__ = ["TimeAxis", "canonical_offset", "date_steps"]

#: Period-style aliases that pandas (>= 2.2) no longer accepts as offsets, and the offsets they mean.
_PERIOD_ALIASES = {
    "M": "ME",
    "Q": "QE",
    "Y": "YE",
    "A": "YE",
    "BM": "BME",
    "BQ": "BQE",
    "BY": "BYE",
    "BA": "BYE",
    "SM": "SME",
    "H": "h",
    "BH": "bh",
    "T": "min",
    "S": "s",
    "L": "ms",
    "U": "us",
    "N": "ns",
}


def canonical_offset(freq: str) -> pd.DateOffset:
    """The pandas offset of ``freq`` (offset or period-style alias); ``ValueError`` naming it when unknown."""
    match = re.fullmatch(r"(\d*)([A-Za-z]+)(-\w+)?", freq.strip())
    text = freq.strip()
    if match and match.group(2) in _PERIOD_ALIASES:
        text = f"{match.group(1)}{_PERIOD_ALIASES[match.group(2)]}{match.group(3) or ''}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return to_offset(text)
    except (ValueError, TypeError):
        raise ValueError(
            f"{freq!r} is not a pandas frequency (e.g. 'D', 'W-SUN', 'MS', 'ME', 'QS-OCT', 'Q', 'YS', 'B', 'h')"
        ) from None


def _family(offset: pd.DateOffset) -> tuple[str, int]:
    """What a calendar counts, regardless of its anchor: ``("Quarter", 1)`` for ``QS-OCT`` and ``QE-DEC``."""
    name = type(offset).__name__
    for suffix in ("Begin", "End"):
        name = name.removesuffix(suffix)
    return name, int(offset.n)


@dataclass(frozen=True)
class TimeAxis:
    """How the ``time`` column maps to integer steps: integers as they are, or dates as steps since ``origin``.

    ``kind`` is ``"int"`` or ``"date"``; for dates, ``freq`` is the pandas offset alias (``"QS-OCT"``) and
    ``origin`` the ISO timestamp of step 0 (the first training date).
    """

    kind: str
    freq: str | None = None
    origin: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "freq": self.freq, "origin": self.origin}

    @classmethod
    def from_dict(cls, data: Any) -> TimeAxis:
        if not isinstance(data, dict) or data.get("kind") not in ("int", "date"):
            raise ValueError(f"time axis: expected {{kind: int | date, freq, origin}}, got {data!r}")
        if data["kind"] == "date":
            canonical_offset(str(data.get("freq")))
            pd.Timestamp(str(data.get("origin")))
        return cls(kind=data["kind"], freq=data.get("freq"), origin=data.get("origin"))

    @property
    def offset(self) -> pd.DateOffset:
        return canonical_offset(str(self.freq))

    def to_dates(self, steps: Any) -> pd.DatetimeIndex | np.ndarray:
        """Integer steps back to dates (``kind == "date"``) or as they are (``kind == "int"``)."""
        values = np.asarray(steps, dtype="int64")
        if self.kind == "int":
            return values
        origin = pd.Timestamp(self.origin)
        low, high = int(min(values.min(initial=0), 0)), int(max(values.max(initial=0), 0))
        forward = pd.date_range(origin, periods=high + 1, freq=self.offset)
        if low < 0:
            backward = pd.date_range(end=origin, periods=1 - low, freq=self.offset)
            grid = backward[:-1].append(forward)
        else:
            grid = forward
        return grid[values - low]


def date_steps(
    dates: pd.Series, freq: str | None, axis: TimeAxis | None, *, where: str
) -> tuple[np.ndarray, TimeAxis, list[str]]:
    """Steps of ``dates`` on the calendar of ``axis`` (evaluation data) or of ``freq`` (``None``: inferred).

    Returns the steps, the axis and notes for the user. Raises ``ValueError`` (one line, naming the first row
    whose date is not on the calendar, with its value) for dates off the calendar.
    """
    notes: list[str] = []
    unique = pd.DatetimeIndex(dates.unique()).sort_values()
    if axis is not None:
        offset, origin = axis.offset, pd.Timestamp(axis.origin)
    else:
        inferred = pd.infer_freq(unique) if len(unique) >= 3 else None
        if freq is None:
            if inferred is None:
                raise ValueError(
                    f"{where}: could not infer the frequency of the dates (irregular or fewer than 3); set data.freq "
                    "(e.g. 'D', 'W-SUN', 'MS', 'QS-OCT', 'YS', 'B', 'h')"
                )
            offset = canonical_offset(inferred)
        else:
            offset = canonical_offset(freq)
            off_calendar = [d for d in unique[:50] if not offset.is_on_offset(d)]
            if off_calendar and inferred is not None and _family(canonical_offset(inferred)) == _family(offset):
                notes.append(f"data.freq {freq!r} read as {inferred!r} (the anchor of the dates)")
                offset = canonical_offset(inferred)
        origin = unique[0]
    steps = _positions(dates, offset, origin)
    bad = np.flatnonzero(steps == _OFF)
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"{where}: {bad.size} date(s) are not on the {offset.freqstr!r} calendar counted from "
            f"{origin.isoformat()} (first at row {row}: {dates.iloc[row]!s}); check the dates or set data.freq"
        )
    return steps, TimeAxis("date", freq=offset.freqstr, origin=origin.isoformat()), notes


_OFF = np.iinfo("int64").min


def _positions(dates: pd.Series, offset: pd.DateOffset, origin: pd.Timestamp) -> np.ndarray:
    """Step of every date on the ``offset`` grid through ``origin``; :data:`_OFF` for dates off the grid."""
    low, high = dates.min(), dates.max()
    forward = pd.date_range(origin, max(high, origin), freq=offset)
    if forward.empty or forward[0] != origin:  # the origin itself is off the calendar
        return np.full(len(dates), _OFF, dtype="int64")
    grid, shift = forward, 0
    if low < origin:
        backward = pd.date_range(low - offset, origin, freq=offset)
        backward = backward[backward < origin]
        grid, shift = backward.append(forward), len(backward)
    index = grid.get_indexer(pd.DatetimeIndex(dates))
    return np.where(index >= 0, index - shift, _OFF).astype("int64")
