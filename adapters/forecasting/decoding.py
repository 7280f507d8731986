"""Decoding of pytorch-forecasting models: the deterministic median path and Monte Carlo forecast samples.

* :func:`median_path_decoding`: autoregressive sampling models (``DeepAR``) decode their median path instead of
  random draws, which makes the forecast deterministic and differentiable (FGSM/PGD need its input gradient);
* :func:`forecast_samples`: hidden-state-noise Monte Carlo forecasts of a whole data loader,
  ``[N, T, n_samples]`` in the target's original scale.

Imports pytorch-forecasting: reached only when such a model is in use.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.utilities import move_data_to_device
from pytorch_forecasting.metrics import DistributionLoss, MultiLoss
from torch import Tensor, nn

from nrnn_plugin.inference import sample_paths, sampling_noise
from nrnn_plugin.validation import check_int

__all__ = ["median_path_decoding", "forecast_samples", "samples_itself"]


def samples_itself(model: nn.Module) -> bool:
    """True for models that sample their distribution in ``forward(x, n_samples=k)`` (``DeepAR``).

    ``RecurrentNetwork`` also accepts ``n_samples`` but ignores it; the distribution loss tells them apart.
    """
    if "n_samples" not in inspect.signature(model.forward).parameters:
        return False
    loss = getattr(model, "loss", None)
    losses = list(loss) if isinstance(loss, MultiLoss) else [loss]
    return all(isinstance(item, DistributionLoss) for item in losses)


@contextlib.contextmanager
def median_path_decoding(model: Any) -> Iterator[None]:
    """Make ``model.loss.sample`` return the median of the predicted distribution instead of random draws.

    Inside the block, an autoregressive sampling model such as ``DeepAR`` called with ``n_samples=k`` decodes
    ``k`` identical, deterministic paths: each step's input is the previous step's median. The median is the
    base distribution's central value pushed through the (monotone) scaling and target transformations, exact
    for the symmetric base distributions pytorch-forecasting uses for real-valued targets (normal, Student-t).
    Gradients flow through the whole decode.
    """
    loss: Any = getattr(model, "loss")  # noqa: B009 (a pytorch-forecasting metric)

    def sample_median(y_pred: Tensor, n_samples: int) -> Tensor:
        distribution = loss.map_x_to_distribution(y_pred)
        transforms: list[Any] = []
        while isinstance(distribution, torch.distributions.TransformedDistribution):
            transforms = list(distribution.transforms) + transforms
            distribution = distribution.base_dist
        value = distribution.mean
        for transform in transforms:
            value = transform(value)
        return value.unsqueeze(-1).expand(*value.shape, n_samples)  # [B, T, n_samples] as loss.sample returns

    loss.sample = sample_median  # instance attribute shadows the method
    try:
        yield
    finally:
        del loss.sample


def forecast_samples(
    model: Any,
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
            (``DeepAR``: ``forward(x, n_samples)``) every path is one autoregressive sample of the model's
            distribution *and* of the hidden noise; otherwise a path is the point forecast
            (``model.to_prediction``) under one draw of hidden noise.
        samples_per_forward: paths computed per forward (the batch is repeated that many times).
        seed, scale: see :func:`nrnn_plugin.inference.sampling_noise`.

    Returns:
        ``[N, T, n_samples]`` in the target's original scale (single-target models), windows in data order.
    """
    n_samples = check_int("forecast_samples.n_samples", n_samples, minimum=1)
    loader = (
        data.to_dataloader(train=False, batch_size=batch_size, num_workers=0)
        if hasattr(data, "to_dataloader")
        else data
    )
    model.eval()
    sampled = samples_itself(model)
    device = next(model.parameters()).device
    per_forward = max(1, min(samples_per_forward, n_samples))

    def point_forecast(m: Any, x: Any) -> Tensor:
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
            x = move_data_to_device(x, device)
            if sampled:
                batches.append(sampled_forecasts(x))
            else:
                paths = sample_paths(
                    model, x, n_samples, forward=point_forecast, samples_per_forward=per_forward, scale=scale
                )
                batches.append(paths.movedim(0, -1))  # [S, B, T] -> [B, T, S]
    return torch.cat(batches)


def _single_target(prediction: Any) -> Tensor:
    if not isinstance(prediction, Tensor):
        raise ValueError(
            "forecast_samples: multi-target models are not supported; use sample_paths with a forward that "
            "selects one target"
        )
    return prediction
