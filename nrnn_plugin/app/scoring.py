"""Forecast errors per series and scale-free: the robustness task of ``nrnn robustness``.

:class:`SeriesForecastingTask` extends the forecasting adapter's task (MAE and sMAPE of the point forecast on
perturbed encoder inputs, pooled over every forecast step) with MASE, the absolute error divided by the
series' in-sample naive error (the mean absolute one-step change of the series over the run's training
period), and with every metric per series (metric names ``"mae|<series>"``). MASE and sMAPE compare series of
different scales; pooled MAE is dominated by the largest series.

Imports pytorch-forecasting (through the adapter): import this module lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting import TimeSeriesDataSet
from torch import Tensor

from nrnn_plugin.adapters.forecasting.robustness import ForecastingTask

__all__ = ["SeriesForecastingTask", "series_scales", "series_labels", "SEP"]

SEP = "|"
METRICS = ("mae", "smape", "mase")


def series_scales(frame: pd.DataFrame, group_ids: list[str], time: str, target: str, before: int) -> dict[str, float]:
    """Per series: the mean absolute one-step change of ``target`` over the steps ``< before`` (the training
    period), the denominator of MASE; a series with fewer than two such steps uses all its rows (data files
    that start after the training period). Series labels as :func:`series_labels` writes them; ``nan`` for a
    constant series."""
    scales: dict[str, float] = {}
    for key, rows in frame.sort_values([*group_ids, time]).groupby(group_ids, sort=False, observed=True):
        label = "/".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        values = rows.loc[rows[time] < before, target].to_numpy(dtype="float64")
        if len(values) < 2:
            values = rows[target].to_numpy(dtype="float64")
        scale = float(np.mean(np.abs(np.diff(values)))) if len(values) > 1 else float("nan")
        scales[label] = scale if scale > 0 else float("nan")
    return scales


def series_labels(dataset: TimeSeriesDataSet) -> dict[tuple[int, ...], str]:
    """Encoded group ids (``x["groups"]`` rows) -> the series' label (``"a"``, or ``"a/b"`` for two columns)."""
    columns = dataset.group_ids
    encoders = [dataset.categorical_encoders[f"__group_id__{c}"] for c in columns]
    decoded = dataset.decoded_index[columns].drop_duplicates()
    labels = {}
    for row in decoded.itertuples(index=False):
        codes = tuple(int(enc.classes_[v]) for enc, v in zip(encoders, row))
        labels[codes] = "/".join(str(v) for v in row)
    return labels


class SeriesForecastingTask(ForecastingTask):
    """MAE, sMAPE and MASE, pooled (``"mae"``) and per series (``"mae|<series>"``)."""

    def __init__(
        self, batches: list[tuple[Any, Any]], labels: Mapping[tuple[int, ...], str], scales: Mapping[str, float]
    ) -> None:
        super().__init__(batches)
        self.labels = dict(labels)
        self.scales = dict(scales)
        names = sorted(set(self.labels.values()))
        self.metrics = METRICS + tuple(f"{m}{SEP}{n}" for n in names for m in METRICS)

    def score(self, model: Any, inputs: dict[str, Tensor], target: Any) -> dict[str, tuple[float, int]]:
        prediction, y, mask = self._errors(model, inputs, target)
        error = (prediction - y).abs()
        smape = 2.0 * error / (prediction.abs() + y.abs() + 1e-8)
        codes = [tuple(int(c) for c in row) for row in inputs["groups"].tolist()]
        names = [self.labels.get(code, "?") for code in codes]
        scale = torch.tensor([self.scales.get(n, float("nan")) for n in names], dtype=error.dtype)
        scaled = error / scale.to(error.device)[:, None]
        out: dict[str, tuple[float, int]] = {}
        finite = mask & torch.isfinite(scaled)
        out["mae"] = (error[mask].sum().item(), int(mask.sum()))
        out["smape"] = (smape[mask].sum().item(), int(mask.sum()))
        out["mase"] = (scaled[finite].sum().item(), int(finite.sum()))
        for name in dict.fromkeys(names):
            rows = torch.tensor([n == name for n in names], device=mask.device)[:, None] & mask
            out[f"mae{SEP}{name}"] = (error[rows].sum().item(), int(rows.sum()))
            out[f"smape{SEP}{name}"] = (smape[rows].sum().item(), int(rows.sum()))
            good = rows & torch.isfinite(scaled)
            out[f"mase{SEP}{name}"] = (scaled[good].sum().item(), int(good.sum()))
        return out
