"""Reading and checking the user's table for ``nrnn train`` / ``nrnn robustness``: pandas only, no Lightning.

Everything a user can get wrong in a data file is caught here, before the slow import of pytorch-forecasting:
a missing file, column names that do not exist (the error lists the ones that do), a non-numeric target or
covariate, duplicate or missing time steps, missing values (interpolated, dropped or refused by
``data.missing``) and series too short for the time split (the error gives the minimum length).

Times become integer steps: an integer column as it is, dates as steps of ``data.freq`` (any pandas
calendar, :mod:`nrnn_plugin.app.timeaxis`) since the first date; the mapping is stored with the run so
evaluation and prediction data map the same way and forecasts get their dates back.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from nrnn_plugin.app.checks import fill_missing, finite, future_mask, missing_columns, numeric
from nrnn_plugin.app.errors import ConfigError, DataError, InputError
from nrnn_plugin.app.run_config import DATA_SUFFIXES, DataSpec, RunConfig
from nrnn_plugin.app.timeaxis import TimeAxis, date_steps

__all__ = [
    "SERIES_COLUMN",
    "FUTURE_COLUMN",
    "TimeAxis",
    "PreparedData",
    "Split",
    "read_table",
    "prepare_frame",
    "compute_split",
    "minimum_series_length",
    "split_and_check",
    "load_training_data",
]

SERIES_COLUMN = "_series"  # the group column added when data.group_ids is empty
FUTURE_COLUMN = "_future"  # marks the forecast horizon's rows (prepare_frame(future_rows=True))


def read_table(path: str | Path) -> pd.DataFrame:  # noqa: C901 (one branch per format)
    """A CSV (``.csv``, ``.csv.gz``, ``.tsv``) or parquet (``.parquet``, ``.pq``) file as a DataFrame.

    Neither reader executes anything from the file (no pickle); other suffixes are refused.
    """
    file = Path(path)
    if not file.name.lower().endswith(DATA_SUFFIXES) and not file.is_dir():
        raise InputError(f"data file {str(file)!r}: expected one of the suffixes {list(DATA_SUFFIXES)}")
    if not file.exists():
        raise InputError(f"data file not found: {str(file)!r}")
    if file.is_dir():
        raise InputError(f"data path is a folder, expected a CSV or parquet file: {str(file)!r}")
    name = file.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            try:
                return pd.read_parquet(file)
            except ImportError as exc:
                raise InputError(f"reading parquet needs pyarrow (pip install pyarrow): {exc}") from None
        if name.endswith(".tsv"):
            return pd.read_csv(file, sep="\t")
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(file)
    except InputError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"could not read {str(file)!r} ({_first_line(exc)}); is it a CSV or parquet file?") from None
    raise InputError(f"data file {str(file)!r}: expected one of the suffixes {list(DATA_SUFFIXES)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass
class PreparedData:
    """A validated frame ready for ``TimeSeriesDataSet``: integer time steps, string group ids, float reals."""

    frame: pd.DataFrame
    spec: DataSpec
    time_axis: TimeAxis
    group_ids: tuple[str, ...]
    notes: list[str] = field(default_factory=list)


def _time_steps(
    df: pd.DataFrame, spec: DataSpec, source: str, axis: TimeAxis | None, notes: list[str]
) -> tuple[pd.Series, TimeAxis]:
    column = df[spec.time]
    if axis is None or axis.kind == "int":
        if pd.api.types.is_integer_dtype(column):
            if axis is None and spec.freq is not None:
                raise ConfigError(f"data.freq: only for date columns, but time column {spec.time!r} holds integers")
            return column.astype("int64"), TimeAxis("int")
        if pd.api.types.is_float_dtype(column) and column.notna().all() and (column == np.round(column)).all():
            return column.astype("int64"), TimeAxis("int")
        if axis is not None:
            raise DataError(f"{source}: time column {spec.time!r} must hold integer steps like the training data")
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise DataError(
            f"{source}: time column {spec.time!r} has {int(column.isna().sum())} missing value(s) (first at row {row})"
        )
    dates = _parse_dates(column, spec.time, source)
    try:
        steps, axis, found = date_steps(dates, spec.freq, axis, where=f"{source}: time column {spec.time!r}")
    except ValueError as exc:
        text = str(exc)
        raise (ConfigError(f"data.freq: {text}") if "frequency" in text else DataError(text)) from None
    notes.extend(found)
    return pd.Series(steps, index=column.index, dtype="int64"), axis


def _parse_dates(column: pd.Series, name: str, source: str) -> pd.Series:
    """The column as datetimes; the first value that is not a date is named with its row."""
    if pd.api.types.is_datetime64_any_dtype(column):
        return column
    with warnings.catch_warnings():  # "could not infer format": the values are checked right here
        warnings.simplefilter("ignore", UserWarning)
        try:
            dates = pd.to_datetime(column, errors="coerce")
        except (ValueError, TypeError, OverflowError):
            dates = pd.Series(pd.NaT, index=column.index)
    bad = dates.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        like = "" if row == 0 else f" like row 0's {column.iloc[0]!r}"
        raise DataError(
            f"{source}: time column {name!r} must hold integer steps or dates{like}, but {int(bad.sum())} value(s) "
            f"are not (first at row {row}: {column.iloc[row]!r})"
        )
    return dates


def prepare_frame(
    df: pd.DataFrame,
    spec: DataSpec,
    *,
    source: str = "data",
    time_axis: TimeAxis | None = None,
    future_rows: bool = False,
) -> PreparedData:
    """Check columns and types, turn times into integer steps, fill or refuse missing values.

    Args:
        df: the raw table.
        spec: the ``data`` section.
        source: how to name the data in error messages (usually the file name).
        time_axis: the training run's time mapping (for evaluation data); ``None`` derives it from ``df``.
        future_rows: rows after a series' last observed target are its forecast horizon (``nrnn predict``):
            marked in the column :data:`FUTURE_COLUMN`, left out of ``data.missing``, their target set to the
            last observed value (a placeholder: models decode from their own forecasts); their known
            covariates must be present.
    Raises:
        DataError: missing columns (names them and lists the existing ones), non-numeric target or real
            covariates, duplicate or missing time steps, no rows.
    """
    if df.empty:
        raise DataError(f"{source}: the table has no rows")
    missing_columns(df, spec, source)
    notes: list[str] = []
    frame = df[list(spec.columns)].copy()
    frame[spec.time], axis = _time_steps(frame, spec, source, time_axis, notes)
    group_ids = spec.group_ids
    if not group_ids:
        frame[SERIES_COLUMN] = "0"
        group_ids = (SERIES_COLUMN,)
    for column in dict.fromkeys(group_ids + spec.known_categoricals + spec.static_categoricals):
        if frame[column].isna().any():
            count = int(frame[column].isna().sum())
            raise DataError(f"{source}: categorical column {column!r} has {count} missing value(s)")
        frame[column] = frame[column].astype(str)
    frame[spec.target] = numeric(frame, spec.target, "target", source)
    reals = spec.known_reals + spec.unknown_reals + spec.static_reals
    for column in reals:
        frame[column] = numeric(frame, column, "real covariate", source)
    for column in (spec.target, *reals):
        finite(frame[column], column, source)
    frame = frame.sort_values(list(group_ids) + [spec.time], kind="stable").reset_index(drop=True)
    duplicated = frame.duplicated(list(group_ids) + [spec.time])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise DataError(
            f"{source}: {int(duplicated.sum())} duplicate time step(s) within a series (first: time {row[spec.time]} "
            f"in series {tuple(row[g] for g in group_ids) if spec.group_ids else 'the only series'}); "
            "set data.group_ids if the file holds several series"
        )
    if future_rows:
        frame = _split_future(frame, spec, group_ids, reals, source, notes)
    else:
        frame = fill_missing(frame, (spec.target,) + reals, group_ids, spec.missing, source, notes)
    if not spec.allow_missing_timesteps:
        steps = frame.groupby(list(group_ids), sort=False, observed=True)[spec.time].diff()
        gap = steps > 1
        if gap.any():
            i = int(np.flatnonzero(gap.to_numpy())[0])
            raise DataError(
                f"{source}: time steps are missing (e.g. {int(frame[spec.time].iloc[i - 1])} -> "
                f"{int(frame[spec.time].iloc[i])}); fill the gaps or set data.allow_missing_timesteps: true"
            )
    return PreparedData(frame=frame, spec=spec, time_axis=axis, group_ids=tuple(group_ids), notes=notes)


def _split_future(
    frame: pd.DataFrame,
    spec: DataSpec,
    group_ids: tuple[str, ...],
    reals: tuple[str, ...],
    source: str,
    notes: list[str],
) -> pd.DataFrame:
    future = future_mask(frame, spec.target, group_ids)
    history = fill_missing(frame[~future], (spec.target,) + reals, group_ids, spec.missing, source, notes)
    ahead = frame[future].copy()
    for column in spec.known_reals:
        missing = ahead[column].isna().to_numpy()
        if missing.any():
            raise DataError(
                f"{source}: known real {column!r} is missing in {int(missing.sum())} future row(s) (first at time "
                f"step {int(ahead[spec.time].iloc[int(np.flatnonzero(missing)[0])])}); known covariates must be "
                "given for the forecast horizon"
            )
    combined = pd.concat([history.assign(**{FUTURE_COLUMN: False}), ahead.assign(**{FUTURE_COLUMN: True})])
    combined = combined.sort_values(list(group_ids) + [spec.time], kind="stable").reset_index(drop=True)
    keys = [combined[g] for g in group_ids]
    for column in (spec.target, *spec.unknown_reals, *spec.static_reals):
        combined[column] = combined.groupby(keys, sort=False, observed=True)[column].ffill()
    return combined


# ---------------------------------------------------------------------------------------------- split


@dataclass(frozen=True)
class Split:
    """The time split, the same cut for every series: train ``< val_start <=`` validation ``< test_start <=`` test."""

    first: int
    last: int
    val_start: int
    test_start: int  # last + 1 when there is no test part

    @property
    def has_test(self) -> bool:
        return self.test_start <= self.last

    def to_dict(self) -> dict[str, int]:
        return {"first": self.first, "last": self.last, "val_start": self.val_start, "test_start": self.test_start}


def _steps(size: float | int, span: int) -> int:
    return size if isinstance(size, int) else int(round(size * span))


def compute_split(spec: DataSpec, first: int, last: int) -> Split:
    span = last - first + 1
    test = _steps(spec.test, span)
    validation = _steps(spec.validation, span)
    test_start = last - test + 1
    return Split(first=first, last=last, val_start=test_start - validation, test_start=test_start)


def _split_problem(spec: DataSpec, length: int) -> str | None:
    """Why a series of ``length`` steps (covering the whole time span) cannot be split and windowed, or None."""
    split = compute_split(spec, 0, length - 1)
    window = spec.max_encoder_length + spec.max_prediction_length
    if split.val_start - split.first < window:
        return f"{split.val_start - split.first} training steps, fewer than one window of {window}"
    if split.test_start - split.val_start < spec.max_prediction_length:
        return f"{split.test_start - split.val_start} validation steps, fewer than max_prediction_length"
    if spec.test and split.last + 1 - split.test_start < spec.max_prediction_length:
        return f"{split.last + 1 - split.test_start} test steps, fewer than max_prediction_length"
    return None


def minimum_series_length(spec: DataSpec, limit: int = 10_000_000) -> int:
    """The shortest series that gives a training window, a validation window and (if any) a test window."""
    n = spec.max_encoder_length + spec.max_prediction_length
    while n < limit and _split_problem(spec, n) is not None:
        n += 1
    return n


def split_and_check(prepared: PreparedData, *, source: str = "data") -> tuple[PreparedData, Split]:
    """The time split of ``prepared``; refuses data too short to split (the error gives the minimum length) and
    leaves out, with a note, series that have no training window."""
    spec = prepared.spec
    frame = prepared.frame
    split = compute_split(spec, int(frame[spec.time].min()), int(frame[spec.time].max()))
    problem = _split_problem(spec, split.last - split.first + 1)
    if problem is not None:
        raise DataError(
            f"{source}: the series are too short: {split.last - split.first + 1} time steps give {problem}; "
            f"with max_encoder_length={spec.max_encoder_length}, max_prediction_length={spec.max_prediction_length}, "
            f"validation={spec.validation} and test={spec.test} the minimum length is {minimum_series_length(spec)} "
            "(or shorten data.max_encoder_length / data.max_prediction_length)"
        )
    frame = prepared.frame
    window = spec.max_encoder_length + spec.max_prediction_length
    train_counts = frame[frame[spec.time] < split.val_start].groupby(list(prepared.group_ids), observed=True).size()
    groups = frame.groupby(list(prepared.group_ids), observed=True).size().index
    short = [g for g in groups if train_counts.get(g, 0) < window]
    if short and len(short) == len(groups):
        raise DataError(f"{source}: no series has a training window of {window} steps before the validation period")
    if short:
        keep = ~frame.set_index(list(prepared.group_ids)).index.isin(short)
        named = ", ".join(str(g) for g in short[:5]) + (" ..." if len(short) > 5 else "")
        prepared.notes.append(f"left out {len(short)} series with fewer than {window} training steps: {named}")
        prepared = replace(prepared, frame=frame[keep].reset_index(drop=True))
    return prepared, split


def load_training_data(config: RunConfig, data_path: str | None = None) -> tuple[RunConfig, PreparedData, Split]:
    """Read and check the run's data (pandas only; see :mod:`nrnn_plugin.app.data`); ``data_path`` overrides
    ``data.path``. Returns the config with the path filled in, the prepared data and its time split."""
    path = str(Path(data_path).absolute()) if data_path else config.data.path
    if not path:
        raise ConfigError("data.path: required (or pass --data FILE), but missing")
    config = config.replace(data=config.data.replace(path=str(path)))
    source = Path(path).name
    prepared = prepare_frame(read_table(path), config.data, source=source)
    prepared, split = split_and_check(prepared, source=source)
    return config, prepared, split
