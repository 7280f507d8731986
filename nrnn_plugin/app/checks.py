"""Column checks shared by every command that reads a table: presence, numbers, finiteness, missing values.

pandas and numpy only; messages name the file, the column, the rows and the values received.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from nrnn_plugin.app.errors import DataError
from nrnn_plugin.app.run_config import DataSpec

__all__ = ["missing_columns", "numeric", "finite", "fill_missing", "future_mask"]


def missing_columns(df: pd.DataFrame, spec: DataSpec, source: str) -> None:
    wanted = list(dict.fromkeys(spec.columns))
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: column(s) {missing} not found; the file has columns {[str(c) for c in df.columns]} "
            "(check data.time, data.target, data.group_ids and the covariate lists)"
        )


def numeric(df: pd.DataFrame, column: str, role: str, source: str) -> pd.Series:
    values = df[column]
    types = pd.api.types
    if types.is_bool_dtype(values) or not (
        types.is_numeric_dtype(values) or types.is_object_dtype(values) or types.is_string_dtype(values)
    ):
        raise DataError(f"{source}: {role} column {column!r} must be numeric, got dtype {values.dtype}")
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{source}: {role} column {column!r} must be numeric, but {int(bad.sum())} value(s) are not "
            f"(first at row {row}: {values.iloc[row]!r})"
        )
    return converted.astype("float64")


def finite(values: pd.Series, column: str, source: str) -> None:
    """Refuse infinite values (missing ones are ``data.missing``'s business), naming the rows."""
    infinite = np.isinf(values.to_numpy(dtype="float64", na_value=np.nan))
    if infinite.any():
        rows = [int(r) for r in np.flatnonzero(infinite)[:5]]
        more = " ..." if infinite.sum() > 5 else ""
        raise DataError(
            f"{source}: column {column!r} has {int(infinite.sum())} infinite value(s) (rows {rows}{more}); "
            "replace them with finite numbers or leave them empty (missing)"
        )


def fill_missing(
    frame: pd.DataFrame,
    columns: Sequence[str],
    group_ids: Sequence[str],
    policy: str,
    source: str,
    notes: list[str],
) -> pd.DataFrame:
    """Apply ``data.missing`` to the numeric columns: interpolate within each series, drop rows, or refuse."""
    counts = {c: int(frame[c].isna().sum()) for c in columns}
    counts = {c: n for c, n in counts.items() if n}
    if not counts:
        return frame
    described = ", ".join(f"{c!r}: {n}" for c, n in counts.items())
    if policy == "error":
        raise DataError(f"{source}: missing values ({described}); fill them or set data.missing: interpolate or drop")
    if policy == "drop":
        notes.append(f"dropped rows with missing values ({described})")
        return frame.dropna(subset=list(counts)).reset_index(drop=True)
    filled = frame.copy()
    for column in counts:
        filled[column] = frame.groupby(list(group_ids), sort=False, observed=True)[column].transform(
            lambda s: s.interpolate(limit_direction="both")
        )
    still = {c: int(filled[c].isna().sum()) for c in counts if filled[c].isna().any()}
    if still:
        raise DataError(f"{source}: columns {sorted(still)} have no values at all in some series; cannot interpolate")
    notes.append(f"interpolated missing values ({described})")
    return filled


def future_mask(frame: pd.DataFrame, target: str, group_ids: Sequence[str]) -> pd.Series:
    """Rows after the last observed (non-missing) target of their series: the forecast horizon of
    ``nrnn predict``. ``frame`` is sorted by series and time."""
    observed = frame[target].notna()
    reverse = observed.iloc[::-1]
    keys = [frame[g].iloc[::-1] for g in group_ids]
    seen_later = reverse.groupby(keys, sort=False, observed=True).cummax().iloc[::-1]
    return ~seen_later.astype(bool)
