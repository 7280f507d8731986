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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from gluonts.torch.model.estimator import PyTorchLightningEstimator
from gluonts.torch.model.predictor import PyTorchPredictor

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.inference import sampling_noise
from nrnn_plugin.swap import is_noisy, register_noise, remove_noise

__all__ = ["train", "hidden_noise", "forecasts"]


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
