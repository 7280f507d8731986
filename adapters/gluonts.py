"""GluonTS's PyTorch ``DeepAREstimator``: noise by one callback, MC forecasts with hidden-state noise.

DeepAR's network (``predictor.prediction_net.model.rnn``) is an ``nn.LSTM`` built inside ``estimator.train``;
the estimator hands ``trainer_kwargs["callbacks"]`` to its Lightning ``Trainer``, so noise is one more callback::

    from nrnn_plugin import NoiseConfig, NoisyRNNCallback

    noise = NoisyRNNCallback(NoiseConfig(additive=0.05, seed=0))
    estimator = DeepAREstimator(freq="Y", prediction_length=8, trainer_kwargs={"max_epochs": 5, "callbacks": [noise]})
    predictor = estimator.train(training_data)      # noisy training; predictor.predict() is the plain model
    predictor.serialize(path); Predictor.deserialize(path)   # JSON + state_dict: nothing of ours is stored

Notes:

* ``DeepAREstimator.train`` *pops* ``trainer_kwargs["callbacks"]``: a second ``train`` of the same estimator (a
  backtest that retrains) would run without them. :func:`train` keeps them for the next call.
* Resume: ``estimator.train(data, ckpt_path=...)`` needs a checkpoint with the optimizer state, i.e. a
  ``ModelCheckpoint(save_last=True)`` among the callbacks (GluonTS's own checkpoint keeps weights only); the
  callback's state in it continues the noise streams.
* The regularizer modes need no closure of their own (``training_step`` only logs besides the loss).
* DeepAR already forecasts by sampling (``num_parallel_samples`` paths per series). :func:`forecasts` adds the
  hidden-state noise to every sampled path (each path draws its own), from an explicit config (the predictor
  does not carry the training callbacks).
* :func:`forecaster` and :func:`windows` put a trained predictor into the robustness suite (task
  ``"point_forecast"``, :mod:`nrnn_plugin.adapters.point_forecast`): the forecast is DeepAR's mean path (the
  mean of each step's distribution fed back instead of a sample), deterministic and differentiable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from gluonts.dataset.common import ListDataset
from gluonts.dataset.loader import InferenceDataLoader
from gluonts.torch.batchify import batchify
from gluonts.torch.model.estimator import PyTorchLightningEstimator
from gluonts.torch.model.predictor import PyTorchPredictor
from gluonts.transform import SelectFields
from torch import Tensor

from nrnn_plugin.adapters.point_forecast import Forecaster
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.inference import sampling_noise
from nrnn_plugin.swap import is_noisy, register_noise, remove_noise

__all__ = ["train", "hidden_noise", "forecasts", "forecaster", "windows"]


def train(estimator: Any, training_data: Any, **train_kwargs: Any) -> Any:
    """``estimator.train(training_data, **train_kwargs)``, with ``trainer_kwargs["callbacks"]`` kept for the next call.

    Returns the trained ``PyTorchPredictor``. The same callback objects run again in a later ``train`` (their noise
    streams continue from where the previous training left them).
    """
    if not isinstance(estimator, PyTorchLightningEstimator):
        raise TypeError(
            f"train: expected a GluonTS PyTorch estimator (e.g. DeepAREstimator), got {type(estimator).__name__}"
        )
    callbacks = estimator.trainer_kwargs.get("callbacks")
    try:
        return estimator.train(training_data, **train_kwargs)
    finally:
        if callbacks is not None:
            estimator.trainer_kwargs["callbacks"] = callbacks


@contextlib.contextmanager
def hidden_noise(predictor: Any, config: NoiseConfig, *, seed: int | None = None, scale: float = 1.0) -> Iterator[Any]:
    """Hidden-state noise from ``config`` in ``predictor.prediction_net`` inside the block (eval mode), undone after.

    GluonTS's ``predict`` is lazy: consume the forecasts inside the block (or use :func:`forecasts`).
    """
    if not isinstance(predictor, PyTorchPredictor):
        raise TypeError(f"hidden_noise: expected a GluonTS PyTorchPredictor, got {type(predictor).__name__}")
    if not isinstance(config, NoiseConfig):
        raise TypeError(f"hidden_noise: config must be a NoiseConfig, got {type(config).__name__}")
    net = predictor.prediction_net
    registered = not is_noisy(net)
    if registered:
        register_noise(net, config)
    try:
        with sampling_noise(net, seed=seed, scale=scale):
            yield predictor
    finally:
        if registered:
            remove_noise(net)


def forecasts(
    predictor: Any,
    dataset: Iterable[Any],
    config: NoiseConfig,
    *,
    seed: int | None = None,
    scale: float = 1.0,
    num_samples: int | None = None,
) -> list[Any]:
    """``list(predictor.predict(dataset, num_samples))`` with hidden-state noise on every sampled path."""
    with hidden_noise(predictor, config, seed=seed, scale=scale):
        return list(predictor.predict(dataset, num_samples=num_samples))


def _check_predictor(predictor: Any, caller: str) -> None:
    if not isinstance(predictor, PyTorchPredictor):
        raise TypeError(f"{caller}: expected a GluonTS PyTorchPredictor, got {type(predictor).__name__}")


class _MeanPath:
    """A distribution whose ``sample()`` is its mean (DeepAR's decoder then feeds back the mean path)."""

    def __init__(self, distribution: Any) -> None:
        self.distribution = distribution

    def sample(self, *args: Any, **kwargs: Any) -> Tensor:
        mean: Tensor = self.distribution.mean
        return mean


class _DeepARForecaster(Forecaster):
    def __init__(self, predictor: Any) -> None:
        super().__init__(predictor.prediction_net, predictor.prediction_length)
        self.input_names = list(predictor.input_names)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        model: Any = self.net.model
        fields = {name: inputs[name] for name in self.input_names if name != "past_target"}
        original = model.output_distribution
        model.output_distribution = lambda *args, **kwargs: _MeanPath(original(*args, **kwargs))
        try:
            paths = model(**fields, past_target=self.series_units(inputs)[..., 0], num_parallel_samples=1)
        finally:
            del model.output_distribution  # the instance attribute; the method shows again
        return paths[:, 0, : self.horizon]


def forecaster(predictor: Any) -> Forecaster:
    """A trained DeepAR ``PyTorchPredictor`` as a point forecaster (its mean path) for :func:`windows` batches."""
    _check_predictor(predictor, "forecaster")
    if not hasattr(predictor.prediction_net, "model") or not hasattr(predictor.prediction_net.model, "rnn"):
        raise TypeError("forecaster: expected a DeepAR predictor (prediction_net.model.rnn)")
    return _DeepARForecaster(predictor)


def windows(
    predictor: Any,
    values: Sequence[float],
    start: Any,
    freq: str,
    origins: Sequence[int],
    *,
    loc: float,
    scale: float,
) -> list[tuple[dict[str, Tensor], Tensor]]:
    """One batch of rolling-origin windows of a univariate series for :func:`forecaster`.

    The series truncated at every origin ``t`` goes through the predictor's own input transformation (time
    features, the lags' history); the target is ``values[t : t + prediction_length]``. ``loc`` / ``scale``
    standardise the context ``x`` the perturbations act on (use the training part's mean and standard
    deviation).
    """
    _check_predictor(predictor, "windows")
    horizon = predictor.prediction_length
    if not origins or any(t < 1 or t + horizon > len(values) for t in origins):
        raise ValueError(f"windows: every origin t needs 1 <= t <= {len(values) - horizon}, got {list(origins)}")
    data = ListDataset([{"start": start, "target": list(values[:t])} for t in origins], freq=freq)
    fields = SelectFields(predictor.input_names + predictor.required_fields, allow_missing=True)
    loader = InferenceDataLoader(
        data,
        transform=predictor.input_transform + fields,
        batch_size=len(origins),
        stack_fn=lambda rows: batchify(rows, predictor.device),
    )
    batch = next(iter(loader))
    inputs = {name: batch[name] for name in predictor.input_names}
    past = inputs["past_target"]
    inputs["x"] = ((past - loc) / scale).unsqueeze(-1)
    inputs["loc"] = torch.full((len(origins), 1, 1), float(loc), dtype=past.dtype)
    inputs["scale"] = torch.full((len(origins), 1, 1), float(scale), dtype=past.dtype)
    target = torch.tensor([list(values[t : t + horizon]) for t in origins], dtype=past.dtype)
    return [(inputs, target)]
