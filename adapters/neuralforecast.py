"""NeuralForecast (``LSTM``, ``GRU``, ``RNN`` and the ``Auto*`` models): noise by one callback, re-attach, MC paths.

A NeuralForecast model *is* the LightningModule, and its extra keyword arguments go to the Lightning
``Trainer``; the recurrent layer (``hist_encoder``) is an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``. Noise is one
more trainer argument::

    from nrnn_plugin import NoiseConfig, NoisyRNNCallback

    model = LSTM(h=12, input_size=24, callbacks=[NoisyRNNCallback(NoiseConfig(additive=0.05, seed=0))])
    nf = NeuralForecast(models=[model], freq="ME")
    nf.fit(df)                       # noisy training; nf.predict() is the plain model
    nf.save("run/"); nf = NeuralForecast.load("run/")   # safetensors + JSON: nothing of ours is pickled

``LSTM(recurrent=True)`` (an LSTM with ``proj_size``) is supported: noise on the projected ``h`` and on ``c``.
For an ``Auto*`` model the callback goes into the search space's config (``config["callbacks"] = [...]``, with
the optuna or ray backend): every trial and the final refit train with noise.

NeuralForecast deep-copies the models it is given (``NeuralForecast(models=...)``, every Auto trial), so the
callback that runs is a copy: :func:`noisy_callbacks` finds the running instances (their ``level``,
``state_dict()``), and their checkpoint state and logged levels are theirs. ``NeuralForecast.load`` returns models
without callbacks (``save`` drops them): :func:`attach` puts one on every model before a further ``fit`` (which,
with ``use_init_models=False``, fine-tunes the loaded weights). NeuralForecast has no resume API (``fit`` takes
no checkpoint); a Lightning checkpoint written with ``enable_checkpointing=True`` resumes by hand with
``Trainer.fit(model, datamodule, ckpt_path=...)`` inside ``torch.serialization.safe_globals([...])`` naming
NeuralForecast's own loss classes (torch does not allow-list them; its error names each one), never
``weights_only=False``; the callback's state in it continues the noise streams.

:func:`sample_paths` draws Monte Carlo hidden-noise forecast paths: the series are tiled into ``n_samples``
copies (one predict, every copy its own noise) and the result gets a ``sample`` column.
:func:`forecaster` wraps a trained direct model (``recurrent=False``) as a point forecaster of context windows for
the robustness suite (task ``"point_forecast"``, :mod:`nrnn_plugin.adapters.point_forecast`).
:func:`neuralforecast_loss` is the regularizer's loss closure for these models (through the
``nrnn_loss_closure`` hook of :mod:`nrnn_plugin.adapters.frameworks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pandas as pd
import torch
from neuralforecast import NeuralForecast
from neuralforecast.common._base_auto import BaseAuto
from neuralforecast.common._base_model import BaseModel
from torch import Tensor

from nrnn_plugin.adapters.point_forecast import Forecaster
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.inference import sampling_noise
from nrnn_plugin.integrations.lightning import NoisyRNNCallback
from nrnn_plugin.integrations.steps import default_loss_closure
from nrnn_plugin.swap import is_noisy, register_noise, remove_noise
from nrnn_plugin.validation import check_int

__all__ = ["noisy_callbacks", "attach", "hidden_noise", "sample_paths", "forecaster", "neuralforecast_loss", "SAMPLE"]

#: The column :func:`sample_paths` adds (the Monte Carlo path index).
SAMPLE = "sample"
_COPY = "__nrnn_sample_"


def _models(target: Any, caller: str) -> list[Any]:
    """The trained models of ``target``: its models, with an ``Auto*`` model's best (refitted) model."""
    if isinstance(target, NeuralForecast):
        return [model for entry in target.models for model in _models(entry, caller)]
    if isinstance(target, BaseModel):
        return [target]
    if isinstance(target, BaseAuto):
        return [target.model] if isinstance(getattr(target, "model", None), BaseModel) else []
    raise TypeError(
        f"{caller}: expected a NeuralForecast object or a NeuralForecast model (e.g. LSTM), got {type(target).__name__}"
    )


def noisy_callbacks(target: Any) -> list[NoisyRNNCallback]:
    """The :class:`NoisyRNNCallback` instances that ``target``'s models train with (the running copies).

    ``target``: a ``NeuralForecast`` object (every model in ``nf.models``; for an ``Auto*`` model the best model
    it refitted) or one model.
    """
    found: list[NoisyRNNCallback] = []
    for model in _models(target, "noisy_callbacks"):
        found.extend(cb for cb in model.trainer_kwargs.get("callbacks") or [] if isinstance(cb, NoisyRNNCallback))
    return found


def attach(target: Any, config: NoiseConfig | NoisyRNNCallback) -> list[NoisyRNNCallback]:
    """Put a :class:`NoisyRNNCallback` on every model of ``target`` (replacing one already there); returns them.

    ``config``: a :class:`~nrnn_plugin.NoiseConfig`, or a callback whose config (and closure) to copy. Used after
    ``NeuralForecast.load`` (whose models have no callbacks) before a further ``fit``.
    """
    attached = []
    for model in _models(target, "attach"):
        if isinstance(config, NoisyRNNCallback):
            callback = NoisyRNNCallback(config.config, loss_closure=config.loss_closure)
        else:
            callback = NoisyRNNCallback(config)
        others = [cb for cb in model.trainer_kwargs.get("callbacks") or [] if not isinstance(cb, NoisyRNNCallback)]
        model.trainer_kwargs["callbacks"] = [*others, callback]
        attached.append(callback)
    return attached


@contextlib.contextmanager
def hidden_noise(
    target: Any, config: NoiseConfig | None = None, *, seed: int | None = None, scale: float = 1.0
) -> Iterator[Any]:
    """Hidden-state noise switched on in every model of ``target`` inside the block (eval mode too), restored after.

    ``config`` defaults to the config of each model's callback; a model without either is an error.
    """
    models = _models(target, "hidden_noise")
    with contextlib.ExitStack() as stack:
        for model in models:
            if not is_noisy(model):
                found = noisy_callbacks(model)
                chosen = config or (found[0].config if found else None)
                if chosen is None:
                    raise ValueError(
                        f"hidden_noise: {type(model).__name__} has no NoisyRNNCallback to take the noise config "
                        "from; pass config=NoiseConfig(...)"
                    )
                register_noise(model, chosen)
                stack.callback(remove_noise, model)
            stack.enter_context(sampling_noise(model, seed=seed, scale=scale))
        yield target


def sample_paths(
    nf: NeuralForecast,
    df: pd.DataFrame,
    n_samples: int = 100,
    *,
    config: NoiseConfig | None = None,
    seed: int | None = None,
    scale: float = 1.0,
    static_df: pd.DataFrame | None = None,
    futr_df: pd.DataFrame | None = None,
    **predict_kwargs: Any,
) -> pd.DataFrame:
    """Monte Carlo forecast paths with hidden-state noise: ``nf.predict`` on ``n_samples`` copies of every series.

    Args:
        nf: a fitted (or loaded) ``NeuralForecast``.
        df: the history to forecast from (columns ``unique_id``, ``ds``, ``y`` and exogenous ones), as for
            ``nf.predict(df=...)``; ``static_df`` and ``futr_df`` are tiled the same way.
        n_samples: paths per series (one ``predict`` call on ``n_samples`` times the series).
        config, seed, scale: see :func:`hidden_noise`.

    Returns:
        ``nf.predict``'s frame with a ``sample`` column (``0 .. n_samples - 1``) after ``unique_id``: one row per
        series, sample and forecast step, sorted by series, sample and date.
    """
    n_samples = check_int("sample_paths.n_samples", n_samples, minimum=1)
    ids = pd.Index(pd.unique(df["unique_id"]))
    codes = {f"{_COPY}{k}_{i}": (uid, k) for i, uid in enumerate(ids) for k in range(n_samples)}

    def tiled(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if frame is None:
            return None
        position = pd.Series(range(len(ids)), index=ids).loc[frame["unique_id"]].to_numpy()
        copies = [frame.assign(unique_id=[f"{_COPY}{k}_{i}" for i in position]) for k in range(n_samples)]
        return pd.concat(copies, ignore_index=True)

    with hidden_noise(nf, config, seed=seed, scale=scale):
        forecast = nf.predict(df=tiled(df), static_df=tiled(static_df), futr_df=tiled(futr_df), **predict_kwargs)
    forecast = forecast.reset_index() if "unique_id" not in forecast.columns else forecast
    origin = forecast["unique_id"].map(codes)
    forecast = forecast.assign(unique_id=[uid for uid, _ in origin])
    forecast.insert(1, SAMPLE, [k for _, k in origin])
    return forecast.sort_values(["unique_id", SAMPLE, "ds"], kind="stable", ignore_index=True)


class _NeuralForecastForecaster(Forecaster):
    """The model's own window normalisation, network and inverse normalisation on a context window."""

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        net: Any = self.net
        y = self.series_units(inputs)  # [B, L, 1]
        mask = torch.ones_like(y)
        z = net.scaler.transform(x=y, mask=mask)  # per-window statistics, kept in net.scaler for the inverse
        shift, unit = net.scaler.x_shift, net.scaler.x_scale
        batch = {"insample_y": z, "insample_mask": mask, "futr_exog": None, "hist_exog": None, "stat_exog": None}
        out = net.loss.domain_map(net(batch))  # [B, h, 1] in normalised units
        forecast: Tensor = net.scaler.inverse_transform(z=out, x_scale=unit, x_shift=shift)
        return forecast[:, : self.horizon, 0]


def forecaster(target: Any) -> Forecaster:
    """A fitted univariate direct model (``LSTM``, ``GRU``, ``RNN`` with ``recurrent=False``, no exogenous inputs,
    a point loss) as a point forecaster of its ``h`` steps from ``input_size`` context steps.

    ``target``: a ``NeuralForecast`` with exactly one model, or the model.
    """
    (model,) = _one(target)
    if model.RECURRENT:
        raise ValueError("forecaster: recurrent=True models predict step by step; use a direct model (recurrent=False)")
    if model.loss.is_distribution_output or model.loss.outputsize_multiplier != 1:
        raise ValueError("forecaster: point forecasts need a point loss (e.g. MAE, MSE)")
    if len(model.hist_exog_list) or len(model.futr_exog_list) or len(model.stat_exog_list):
        raise ValueError("forecaster: models with exogenous inputs are not supported")
    return _NeuralForecastForecaster(model, model.h)


def _one(target: Any) -> list[Any]:
    models = _models(target, "forecaster")
    if len(models) != 1:
        raise ValueError(f"forecaster: expected one model, {type(target).__name__} has {len(models)}")
    return models


def neuralforecast_loss(module: Any, batch: Any, batch_idx: int) -> Tensor:
    """The training loss of ``batch`` for a NeuralForecast model without side effects.

    ``training_step`` with logging suppressed and its ``train_trajectories`` entry taken back. It samples its
    training windows from the global RNG; the callback replays the step's RNG state, so the regularizer's passes
    see the step's windows.
    """
    trajectories = module.train_trajectories
    kept = len(trajectories)
    try:
        return default_loss_closure(module, batch, batch_idx)
    finally:
        del trajectories[kept:]
