"""Calibrated forecast bands for pytorch-forecasting models: Monte Carlo bands from hidden-state noise, fitted
on validation windows (:mod:`nrnn_plugin.calibration`), applied to other windows.

>>> bands = calibrate_bands(model, validation_loader, level=0.8, n_samples=100, seed=0)   # doctest: +SKIP
>>> lo, hi = bands.apply(forecast_samples(model, test_loader, 100, seed=1))             # [N, T] each

Imports pytorch-forecasting (through :mod:`.decoding`): reached only when such a model is in use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nrnn_plugin.adapters.forecasting.decoding import forecast_samples
from nrnn_plugin.calibration import apply_offsets, central_band, choose_scale, conformal_offsets

__all__ = ["loader_targets", "CalibratedBands", "calibrate_bands"]


def loader_targets(data: Any, batch_size: int = 64) -> Tensor:
    """The targets ``[N, T]`` (original scale) of a pytorch-forecasting loader or dataset, in data order."""
    loader = (
        data.to_dataloader(train=False, batch_size=batch_size, num_workers=0)
        if hasattr(data, "to_dataloader")
        else data
    )
    targets = []
    for _, y in loader:
        target = y[0] if isinstance(y, (tuple, list)) else y
        if isinstance(target, (tuple, list)):
            raise ValueError("loader_targets: multi-target models are not supported")
        targets.append(target.float())
    return torch.cat(targets)


@dataclass(frozen=True)
class CalibratedBands:
    """A central ``level`` band calibrated on validation windows.

    ``scale``: the inference-noise scale that reached ``level`` on validation (or the largest tried; ``1.0`` when
    scales were not searched); ``offsets`` ``[T]``: the split-conformal widening per horizon step of the band at
    noise scale 1; ``tried``: ``(scale, validation coverage)`` pairs.
    """

    level: float
    offsets: Tensor
    scale: float
    tried: tuple[tuple[float, float], ...]

    def apply(self, samples: Tensor) -> tuple[Tensor, Tensor]:
        """The conformal band ``[N, T]`` x 2 from samples ``[N, T, S]`` drawn at noise scale 1."""
        return apply_offsets(*central_band(samples, self.level), self.offsets)


def calibrate_bands(
    model: Any,
    validation: Any,
    *,
    level: float = 0.8,
    n_samples: int = 100,
    seed: int = 0,
    scales: Sequence[float] | None = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0),
    batch_size: int = 64,
) -> CalibratedBands:
    """Fit both calibrations on the validation windows of a model with noisy modules (noise scale 1 for the
    conformal offsets; ``scales=None`` skips the scale search)."""
    target = loader_targets(validation, batch_size)

    def sample(scale: float) -> Tensor:
        return forecast_samples(model, validation, n_samples, batch_size=batch_size, seed=seed, scale=scale)

    samples = sample(1.0)
    if samples.shape[:2] != target.shape:
        raise ValueError(f"calibrate_bands: samples {tuple(samples.shape)} do not match targets {tuple(target.shape)}")
    offsets = conformal_offsets(*central_band(samples, level), target, level)
    scale, tried = (1.0, []) if scales is None else choose_scale(sample, target, level, scales)
    return CalibratedBands(level=level, offsets=offsets, scale=scale, tried=tuple(tried))
