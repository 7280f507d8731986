"""pytorch-forecasting data sets from a prepared table: the training/validation/test windows and fast loaders.

Imports pytorch-forecasting at module level: import this module lazily.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from pytorch_forecasting import TimeSeriesDataSet

from nrnn_plugin.app.data import PreparedData, Split
from nrnn_plugin.app.errors import DataError, first_line

__all__ = ["Datasets", "build_datasets", "make_loader", "CACHE_WINDOWS"]


def _target_normalizer(kind: str) -> Any:
    from pytorch_forecasting.data.encoders import EncoderNormalizer, TorchNormalizer

    if kind == "encoder":
        return EncoderNormalizer()
    if kind == "group":
        return "auto"  # pytorch-forecasting picks a GroupNormalizer over the group ids
    return TorchNormalizer(method="identity")


@dataclass
class Datasets:
    training: TimeSeriesDataSet
    validation: TimeSeriesDataSet
    test: TimeSeriesDataSet | None
    split: Split


def build_datasets(prepared: PreparedData, split: Split, *, source: str = "data") -> Datasets:
    """Training, validation and (if ``data.test`` > 0) test ``TimeSeriesDataSet`` by the time split
    (:func:`nrnn_plugin.app.data.split_and_check`)."""
    spec = prepared.spec
    frame = prepared.frame
    try:
        training = TimeSeriesDataSet(
            frame[frame[spec.time] < split.val_start],
            time_idx=spec.time,
            target=spec.target,
            group_ids=list(prepared.group_ids),
            max_encoder_length=spec.max_encoder_length,
            max_prediction_length=spec.max_prediction_length,
            static_categoricals=list(spec.static_categoricals),
            static_reals=list(spec.static_reals),
            time_varying_known_categoricals=list(spec.known_categoricals),
            time_varying_known_reals=list(spec.known_reals),
            time_varying_unknown_reals=[spec.target, *spec.unknown_reals],
            target_normalizer=_target_normalizer(spec.normalizer),
            allow_missing_timesteps=spec.allow_missing_timesteps,
        )
        validation = TimeSeriesDataSet.from_dataset(
            training,
            frame[frame[spec.time] < split.test_start],
            min_prediction_idx=split.val_start,
            stop_randomization=True,
        )
        test = None
        if split.has_test:
            test = TimeSeriesDataSet.from_dataset(
                training, frame, min_prediction_idx=split.test_start, stop_randomization=True
            )
    except (ValueError, KeyError, AssertionError, TypeError) as exc:
        raise DataError(f"{source}: pytorch-forecasting could not build the data set: {first_line(exc)}") from None
    return Datasets(training=training, validation=validation, test=test, split=split)


#: Data sets up to this many windows are materialised once (see :func:`make_loader`).
CACHE_WINDOWS = 50_000


class _CachedWindows(torch.utils.data.Dataset):
    """The windows of a ``TimeSeriesDataSet`` built once and kept in memory (other attributes forward to it).

    pytorch-forecasting assembles each window in ``__getitem__`` (about 2 ms on a CPU core), which dominates
    the cost of training a small recurrent model; windows without length randomisation are the same every
    epoch, so they are built once.
    """

    def __init__(self, dataset: TimeSeriesDataSet) -> None:
        self.dataset = dataset
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "items"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


_CACHE: weakref.WeakKeyDictionary[TimeSeriesDataSet, _CachedWindows] = weakref.WeakKeyDictionary()


def make_loader(dataset: TimeSeriesDataSet, *, train: bool, batch_size: int) -> torch.utils.data.DataLoader:
    """``dataset.to_dataloader(train=train, batch_size=batch_size, num_workers=0)``, with the windows built once
    (per data set object, reused by later loaders) when there are at most :data:`CACHE_WINDOWS` of them and
    their lengths are not randomised. Same batches, same order (shuffling draws from the global torch RNG,
    seeded by the trainer seed)."""
    if len(dataset) > CACHE_WINDOWS or getattr(dataset, "randomize_length", None):
        return dataset.to_dataloader(train=train, batch_size=batch_size, num_workers=0)
    if dataset not in _CACHE:
        _CACHE[dataset] = _CachedWindows(dataset)
    return torch.utils.data.DataLoader(
        _CACHE[dataset],
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        collate_fn=TimeSeriesDataSet._collate_fn,
        num_workers=0,
    )
