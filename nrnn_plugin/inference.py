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

For pytorch-forecasting models, :func:`nrnn_plugin.adapters.forecasting.forecast_samples` runs a whole
dataloader and returns ``[N, T, n_samples]`` (pytorch-forecasting's "samples" layout) in the target's scale.

A ``seed`` makes the draws reproducible and leaves the modules' training noise streams untouched (they are
restored afterwards); without a seed the draws continue the modules' streams.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nrnn_plugin.runtime import noise_control, noise_runtimes
from nrnn_plugin.validation import check_int, check_real

__all__ = ["sampling_noise", "sample_paths", "quantiles"]

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
    sources = [runtime.source for _, runtime in noise_runtimes(model)]
    if not sources:
        raise ValueError(
            f"sampling_noise: {type(model).__name__} has no noisy module; call "
            "nrnn_plugin.register_noise(model, NoiseConfig(additive=...)) first"
        )
    scale = check_real("sampling_noise.scale", scale, minimum=0.0)
    saved = [source.state_dict() for source in sources] if seed is not None else []
    try:
        if seed is not None:
            for source in sources:
                source.load_state_dict({"name": source.name, "seed": int(seed), "generators": {}})
        with noise_control(model, inject=True, scale=scale):
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
    n_samples = check_int("sample_paths.n_samples", n_samples, minimum=1)
    samples_per_forward = check_int("sample_paths.samples_per_forward", samples_per_forward, minimum=1)
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
