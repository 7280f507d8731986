"""Darts (``RNNModel`` with LSTM/GRU/RNN, ``BlockRNNModel``): noise by one callback, safe reload, MC samples.

Darts builds its recurrent layers from ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` inside the LightningModule it
creates at the first ``fit`` (``model.model``), so noise is switched on by the callback in the trainer
arguments Darts already takes::

    from nrnn_plugin import NoiseConfig, NoisyRNNCallback
    import nrnn_plugin.adapters.darts  # allow-lists the callback for Darts' safe loading

    model = RNNModel(model="LSTM", input_chunk_length=12, training_length=24,
                     pl_trainer_kwargs={"callbacks": [NoisyRNNCallback(NoiseConfig(additive=0.05, seed=0))]})
    model.fit(series)                                  # noisy training; predict() is the plain model
    model.save("model.pt"); RNNModel.load("model.pt")  # Darts' default (safe) loading

What this module adds:

* **Safe reload.** Darts pickles the callbacks of ``pl_trainer_kwargs`` into ``model.save`` files and checkpoints
  and loads them with a restricted unpickler (no ``trusted=True``). The callback pickles as its class and the
  plain-data config, so the class is the one global to allow-list: importing this module registers it in
  Darts' registry (:func:`register_safe_globals`). Loading still needs nrnn-plugin installed (the class is named
  in the file); a model saved with ``save(..., clean=True)`` stores no callbacks at all.
* **Resume.** ``load_from_checkpoint(name, work_dir=..., best=False)`` then ``fit(series, epochs=N)`` continues
  the noise streams (the callback's state is in the Lightning checkpoint).
* **The running callback.** Darts deep-copies its creation arguments (``model_params``, ``untrained_model()``
  for ``historical_forecasts(retrain=True)``, ``load``): :func:`noisy_callbacks` returns the instances the next
  ``fit`` uses.
* **Monte Carlo hidden-noise samples.** :func:`predict_samples` runs ``predict(n, num_samples=...)`` with the
  hidden-state noise switched on at prediction (every sample row draws its own noise); a model without a
  likelihood gets a parameter-free ``MonteCarloDropout(p=0)`` marker for the call, so Darts allows
  ``num_samples > 1``.
* :func:`forecaster`: the trained model as a point forecaster of context windows for the robustness suite
  (task ``"point_forecast"``, :mod:`nrnn_plugin.adapters.point_forecast`).
* :func:`darts_loss`: the regularizer's loss closure for Darts modules (``training_step`` without its logging
  and metric updates), provided through the ``nrnn_loss_closure`` hook (:mod:`nrnn_plugin.adapters.frameworks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from darts.models.forecasting.torch_forecasting_model import TorchForecastingModel
from darts.utils import serialization
from darts.utils.data.torch_datasets.utils import ModuleStage
from darts.utils.torch import MonteCarloDropout
from torch import Tensor

from nrnn_plugin.adapters.point_forecast import Forecaster
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.inference import sampling_noise
from nrnn_plugin.integrations.lightning import NoisyRNNCallback
from nrnn_plugin.swap import is_noisy, register_noise, remove_noise

__all__ = [
    "SAFE_GLOBALS",
    "register_safe_globals",
    "noisy_callbacks",
    "noise_config",
    "hidden_noise",
    "predict_samples",
    "forecaster",
    "darts_loss",
]

#: What Darts' restricted unpickler must accept for a model saved with the callback.
SAFE_GLOBALS: list[Any] = [NoisyRNNCallback]
_MARKER = "nrnn_sampling_marker"


def register_safe_globals() -> None:
    """Register :data:`SAFE_GLOBALS` with Darts' safe-loading registry (once per process; done at import)."""
    present = serialization.get_safe_globals()
    missing = [entry for entry in SAFE_GLOBALS if entry not in present]
    if missing:
        serialization.add_safe_globals(missing)


register_safe_globals()


def _check_model(model: Any, caller: str) -> None:
    if not isinstance(model, TorchForecastingModel):
        raise TypeError(f"{caller}: expected a Darts TorchForecastingModel (e.g. RNNModel), got {type(model).__name__}")


def noisy_callbacks(model: Any) -> list[NoisyRNNCallback]:
    """The :class:`NoisyRNNCallback` instances the model's next ``fit`` (or the last one) runs with.

    Darts keeps them in ``model.trainer_params["callbacks"]`` (the objects passed at creation for the first
    ``fit``; deep copies after ``load``/``load_from_checkpoint`` or in ``untrained_model()``).
    """
    _check_model(model, "noisy_callbacks")
    callbacks = model.trainer_params.get("callbacks") or []
    return [callback for callback in callbacks if isinstance(callback, NoisyRNNCallback)]


def noise_config(model: Any) -> NoiseConfig | None:
    """The noise config of the model's callback (``None`` when it trains without one)."""
    found = noisy_callbacks(model)
    return found[0].config if found else None


@contextlib.contextmanager
def hidden_noise(
    model: Any, config: NoiseConfig | None = None, *, seed: int | None = None, scale: float = 1.0
) -> Iterator[Any]:
    """Hidden-state noise switched on in ``model.model`` for the block, in eval mode too (then restored).

    Args:
        model: a fitted (or loaded) Darts torch model.
        config: the noise to inject; default the config of the model's callback (:func:`noise_config`).
        seed, scale: as for :func:`nrnn_plugin.inference.sampling_noise`.

    A model without a likelihood gets a ``MonteCarloDropout(p=0)`` marker (no parameters, ``state_dict``
    unchanged) so that Darts accepts ``num_samples > 1``; marker and noise registration are removed afterwards.
    """
    _check_model(model, "hidden_noise")
    module = model.model
    if module is None:
        raise ValueError("hidden_noise: the model has no trained module yet; call fit() (or load a model) first")
    config = config or noise_config(model)
    if config is None:
        raise ValueError(
            "hidden_noise: the model has no NoisyRNNCallback to take the noise config from; "
            "pass config=NoiseConfig(...)"
        )
    registered = not is_noisy(module)
    if registered:
        register_noise(module, config)
    marker = not module.supports_probabilistic_prediction
    if marker:
        module.add_module(_MARKER, MonteCarloDropout(p=0.0))
    try:
        with sampling_noise(module, seed=seed, scale=scale):
            yield model
    finally:
        if marker:
            delattr(module, _MARKER)
        if registered:
            remove_noise(module)


def predict_samples(
    model: Any,
    n: int,
    num_samples: int = 100,
    *,
    config: NoiseConfig | None = None,
    seed: int | None = None,
    scale: float = 1.0,
    **predict_kwargs: Any,
) -> Any:
    """``model.predict(n, num_samples=num_samples, **predict_kwargs)`` with the hidden-state noise on.

    The noise is that of :func:`hidden_noise` (the callback's config unless ``config`` is given).

    Returns what Darts returns: a stochastic ``TimeSeries`` (or a list of them) with ``num_samples`` samples;
    ``.quantile(q)`` / ``.quantiles_df()`` give the bands.
    """
    with hidden_noise(model, config, seed=seed, scale=scale):
        return model.predict(n, num_samples=num_samples, **predict_kwargs)


class _DartsForecaster(Forecaster):
    """Darts' own autoregressive roll-out (``_get_batch_prediction``) on a context window, differentiable."""

    def __init__(self, net: Any, horizon: int, shift: float, scale: float) -> None:
        super().__init__(net, horizon)
        self.shift, self.unit = float(shift), float(scale)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        x = (self.series_units(inputs) - self.shift) / self.unit
        batch = SimpleNamespace(
            past_target=x,
            past_covariates=None,
            future_past_covariates=None,
            historic_future_covariates=None,
            future_covariates=None,
            static_covariates=None,
        )
        out: Tensor = self.net._get_batch_prediction(self.horizon, batch, self.net.output_chunk_length)
        return out[..., 0] * self.unit + self.shift


def forecaster(model: Any, horizon: int, *, shift: float = 0.0, scale: float = 1.0) -> Forecaster:
    """A fitted univariate Darts model without covariates as a point forecaster (``"point_forecast"`` task).

    Args:
        model: e.g. ``RNNModel`` or ``BlockRNNModel``, deterministic (no likelihood).
        horizon: forecast steps ``H``.
        shift, scale: the model was trained on ``(y - shift) / scale`` (a standardised series, or the parameters
            of the ``Scaler`` used); forecasts come back in the units of ``y``.

    The forecaster's input context must have the model's ``input_chunk_length`` steps.
    """
    _check_model(model, "forecaster")
    if model.model is None:
        raise ValueError("forecaster: the model has no trained module yet; call fit() (or load a model) first")
    if model.model.likelihood is not None:
        raise ValueError("forecaster: point forecasts need a deterministic model (likelihood=None)")
    return _DartsForecaster(model.model, horizon, shift, scale)


def darts_loss(module: Any, batch: Any, batch_idx: int) -> Tensor:
    """The training loss of ``batch`` for a Darts ``PLForecastingModule``, without logging or metric updates."""
    output = module(batch.to_module_input(stage=ModuleStage.TRAIN))
    loss: Tensor = module._compute_loss(output, batch.future_target, module.train_criterion, batch.sample_weight)
    return loss
