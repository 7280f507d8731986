"""Opt-in hidden-state noise at inference: Monte Carlo sample paths and quantiles.

Noisy RNNs are trained with noise and evaluated without it (eval mode runs the original fused forward). The
same noise can also be switched on for a trained model in eval mode, to turn one deterministic forecast into
a distribution of forecasts (uncertainty from the hidden-state dynamics). The switch is explicit and never
``model.train()``, which would also enable dropout, batch-norm updates and, in pytorch-forecasting, a
different decoding path (e.g. teacher forcing instead of autoregressive sampling)::

    import nrnn_plugin as nrnn
    from nrnn_plugin.inference import sample_paths, quantiles

    nrnn.register_noise(model, nrnn.NoiseConfig(additive=0.05))   # e.g. the vanilla model from a checkpoint
    model.eval()
    paths = sample_paths(model, x, n_samples=200, seed=0)        # [200, *prediction shape]
    bands = quantiles(paths, (0.05, 0.5, 0.95))                  # [*prediction shape, 3]

For pytorch-forecasting models, :func:`forecast_samples` runs a whole dataloader and returns
``[N, T, n_samples]`` (pytorch-forecasting's "samples" layout) in the target's original scale.

A ``seed`` makes the draws reproducible and leaves the modules' training noise streams untouched (they are
restored afterwards); without a seed the draws continue the modules' streams.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nrnn_plugin.runtime import noise_override, noise_scale
from nrnn_plugin.swap import noisy_modules

__all__ = ["sampling_noise", "sample_paths", "quantiles", "forecast_samples"]

Forward = Callable[[nn.Module, Any], Tensor]


@contextlib.contextmanager
def sampling_noise(model: nn.Module, *, seed: int | None = None, scale: float = 1.0) -> Iterator[nn.Module]:
    """Inject hidden-state noise in every noisy module of ``model`` inside the block, in train and eval mode.

    Args:
        model: a model with noisy modules (:func:`~nrnn_plugin.register_noise` first).
        seed: reseed every module's noise stream from ``(seed, module name, rank)`` for the block and restore
            the previous streams afterwards; ``None`` draws from (and advances) the current streams.
        scale: multiplier on the injected noise (``1.0`` = the configured levels; ``scale > 1`` widens the
            bands, ``0`` switches noise off).

    The model's mode (``model.training``) is not changed.

    Raises:
        ValueError: ``model`` has no noisy module, or ``scale`` is negative.
    """
    modules = list(noisy_modules(model))
    if not modules:
        raise ValueError(
            f"sampling_noise: {type(model).__name__} has no noisy module; call "
            "nrnn_plugin.register_noise(model, NoiseConfig(additive=...)) first"
        )
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0.0:
        raise ValueError(f"sampling_noise: scale must be a number >= 0, got {scale!r}")
    sources = [module._nrnn_runtime.source for _, module in modules]
    saved = [source.state_dict() for source in sources] if seed is not None else []
    try:
        if seed is not None:
            for source in sources:
                source.load_state_dict({"name": source.name, "seed": int(seed), "generators": {}})
        with noise_override(model, True), noise_scale(model, scale):
            yield model
    finally:
        for source, state in zip(sources, saved):
            source.load_state_dict(state)


def _prediction_of(output: Any) -> Tensor:
    """The prediction tensor of a model output: a tensor, ``output[0]`` of a tuple, or ``output["prediction"]``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "prediction" in output:
        return _prediction_of(output["prediction"])
    if hasattr(output, "prediction"):  # pytorch-forecasting's named-tuple outputs
        return _prediction_of(output.prediction)
    if isinstance(output, (tuple, list)) and output:
        return _prediction_of(output[0])
    raise TypeError(
        f"sample_paths: cannot find a prediction tensor in a model output of type {type(output).__name__}; "
        "pass forward=lambda model, inputs: <tensor>"
    )


def _default_forward(model: nn.Module, inputs: Any) -> Tensor:
    return _prediction_of(model(inputs))


def _tile(obj: Any, copies: int, dim: int) -> Any:
    """Concatenate ``copies`` copies of every tensor in ``obj`` along ``dim`` (nested dicts/lists/tuples)."""
    if copies == 1:
        return obj
    if isinstance(obj, Tensor):
        return torch.cat([obj] * copies, dim=dim) if obj.dim() > dim else obj
    if isinstance(obj, Mapping):
        return type(obj)({key: _tile(value, copies, dim) for key, value in obj.items()})  # type: ignore[call-arg]
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_tile(value, copies, dim) for value in obj)
    return obj


def sample_paths(
    model: nn.Module,
    inputs: Any,
    n_samples: int = 100,
    *,
    forward: Forward | None = None,
    samples_per_forward: int = 1,
    batch_dim: int = 0,
    seed: int | None = None,
    scale: float = 1.0,
) -> Tensor:
    """Monte Carlo predictions of ``model`` on ``inputs`` with hidden-state noise switched on.

    Args:
        model: a model with noisy modules, usually in eval mode (its mode is not changed).
        inputs: what ``forward`` receives (a tensor, a dict of tensors, ...).
        n_samples: number of noisy predictions.
        forward: ``forward(model, inputs) -> Tensor``; the default calls ``model(inputs)`` and takes the
            tensor, ``output[0]`` of a tuple (e.g. ``nn.LSTM``) or ``output["prediction"]``.
        samples_per_forward: draw this many samples per forward by tiling every tensor of ``inputs`` along
            ``batch_dim`` (noise is independent per row, so this is the same distribution, faster; the
            prediction must have its batch on ``batch_dim`` as well).
        seed, scale: see :func:`sampling_noise`.

    Returns:
        ``[n_samples, *prediction shape]``, computed without autograd.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"sample_paths: n_samples must be an integer >= 1, got {n_samples!r}")
    if isinstance(samples_per_forward, bool) or not isinstance(samples_per_forward, int) or samples_per_forward < 1:
        raise ValueError(f"sample_paths: samples_per_forward must be an integer >= 1, got {samples_per_forward!r}")
    forward = forward or _default_forward
    paths: list[Tensor] = []
    with torch.no_grad(), sampling_noise(model, seed=seed, scale=scale):
        remaining = n_samples
        while remaining > 0:
            copies = min(samples_per_forward, remaining)
            prediction = forward(model, _tile(inputs, copies, batch_dim))
            paths.extend(prediction.chunk(copies, dim=batch_dim) if copies > 1 else [prediction])
            remaining -= copies
    return torch.stack(paths)


def quantiles(samples: Tensor, q: Sequence[float] = (0.1, 0.5, 0.9), dim: int = 0) -> Tensor:
    """Quantiles ``q`` of ``samples`` over the sample dimension ``dim``, stacked in a new last dimension.

    ``[S, B, T]`` with ``dim=0`` gives ``[B, T, len(q)]``; ``[B, T, S]`` with ``dim=-1`` gives the same.
    """
    levels = torch.as_tensor(list(q), dtype=samples.dtype, device=samples.device)
    if levels.dim() != 1 or levels.numel() == 0 or bool(((levels < 0) | (levels > 1)).any()):
        raise ValueError(f"quantiles: q must be a non-empty sequence of numbers in [0, 1], got {list(q)!r}")
    return torch.quantile(samples, levels, dim=dim).movedim(0, -1)


def forecast_samples(
    model: nn.Module,
    data: Any,
    n_samples: int = 100,
    *,
    batch_size: int = 64,
    samples_per_forward: int = 16,
    seed: int | None = None,
    scale: float = 1.0,
) -> Tensor:
    """Monte Carlo forecasts of a pytorch-forecasting model with hidden-state noise: ``[N, T, n_samples]``.

    Args:
        model: a pytorch-forecasting model with noisy modules (put in eval mode here; decoding is the model's
            own inference path, e.g. autoregressive for ``RecurrentNetwork`` and ``DeepAR``).
        data: a ``DataLoader`` yielding ``(x, y)`` batches or a ``TimeSeriesDataSet``
            (``to_dataloader(train=False, batch_size=batch_size)``).
        n_samples: paths per window. For models whose ``forward`` samples a distribution loss by itself
            (``DeepAR``: ``forward(x, n_samples)``) every path is one autoregressive sample of the model's distribution *and* of the
            hidden noise; otherwise a path is the point forecast (``model.to_prediction``) under one draw of
            hidden noise.
        samples_per_forward: paths computed per forward (the batch is repeated that many times).
        seed, scale: see :func:`sampling_noise`.

    Returns:
        ``[N, T, n_samples]`` in the target's original scale (single-target models), windows in data order.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"forecast_samples: n_samples must be an integer >= 1, got {n_samples!r}")
    loader = data.to_dataloader(train=False, batch_size=batch_size, num_workers=0) if hasattr(data, "to_dataloader") else data
    model.eval()
    samples_itself = _samples_itself(model)
    device = next(model.parameters()).device
    per_forward = max(1, min(samples_per_forward, n_samples))

    def point_forecast(m: nn.Module, x: Any) -> Tensor:
        return _single_target(m.to_prediction(m(x)))  # [B, T]

    def sampled_forecasts(x: Any) -> Tensor:
        # the model repeats the batch and samples itself: [B, T, k]. pytorch-forecasting's DeepAR mis-scales
        # its sampling for n_samples=1, so at least 2 are requested per forward.
        chunks, remaining = [], n_samples
        while remaining > 0:
            k = max(2, min(per_forward, remaining))
            chunks.append(_single_target(model(x, n_samples=k)["prediction"])[..., : min(k, remaining)])
            remaining -= k
        return torch.cat(chunks, dim=-1)

    batches: list[Tensor] = []
    with torch.no_grad(), sampling_noise(model, seed=seed, scale=scale):
        for x, _ in loader:
            x = _to_device(x, device)
            if samples_itself:
                batches.append(sampled_forecasts(x))
            else:
                paths = sample_paths(
                    model, x, n_samples, forward=point_forecast, samples_per_forward=per_forward, scale=scale
                )
                batches.append(paths.movedim(0, -1))  # [S, B, T] -> [B, T, S]
    return torch.cat(batches)


def _samples_itself(model: nn.Module) -> bool:
    """True for models that sample their distribution in ``forward(x, n_samples=k)`` (DeepAR).

    ``RecurrentNetwork`` also accepts ``n_samples`` but ignores it; the distribution loss tells them apart.
    """
    if "n_samples" not in inspect.signature(model.forward).parameters:
        return False
    from pytorch_forecasting.metrics import DistributionLoss, MultiLoss

    losses = list(model.loss) if isinstance(getattr(model, "loss", None), MultiLoss) else [getattr(model, "loss", None)]
    return all(isinstance(loss, DistributionLoss) for loss in losses)


def _single_target(prediction: Any) -> Tensor:
    if not isinstance(prediction, Tensor):
        raise ValueError(
            "forecast_samples: multi-target models are not supported; use sample_paths with a forward that "
            "selects one target"
        )
    return prediction


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {key: _to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(value, device) for value in obj)
    return obj
