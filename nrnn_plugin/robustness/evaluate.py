"""Evaluate models under test-time input perturbations; results as a tidy ``pandas.DataFrame``.

Two tasks:

* ``"classification"``: ``model(x [B, T, F]) -> logits [B, C]``; data is ``(X, y)`` tensors or an iterable of
  ``(x, y)`` batches; metric ``accuracy``. Adversarial loss: cross-entropy.
* ``"forecasting"``: a pytorch-forecasting model and its data loader (batches ``(x: dict, (y, weight))``);
  the perturbation is applied to the normalised encoder inputs ``x["encoder_cont"]`` only; metrics ``mae`` and
  ``smape`` of the point prediction (``model.to_prediction``) on the prediction window, in the target's
  original scale. Adversarial loss: the MAE of that prediction. Autoregressive sampling models (``DeepAR``:
  a ``forward(x, n_samples)`` and a distribution loss) are scored on their *median path*: the decoder is run
  autoregressively (never with the observed future targets) and fed the median of each step's predicted
  distribution instead of a random sample, which makes the forecast deterministic and differentiable (FGSM/PGD
  need its input gradient). See :func:`median_path_decoding`.

Every model is evaluated in eval mode with injected noise forced off (:func:`~nrnn_plugin.runtime.noise_override`):
the perturbed input goes through the *noise-free* model, and adversarial gradients are taken through it too.
Random perturbations use a fresh ``torch.Generator`` seeded with ``seed`` for every (model, perturbation,
strength): all models see the same perturbation draws (common random numbers), and a result does not depend
on which other models or strengths were evaluated. Data must come in a fixed order (no shuffling).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrnn_plugin.robustness.perturbations import DEFAULT_STRENGTHS, PERTURBATIONS, Perturbation
from nrnn_plugin.runtime import noise_override

__all__ = ["evaluate", "median_path_decoding", "COLUMNS", "TASKS"]

COLUMNS = ("model", "perturbation", "strength", "metric", "value", "seed")
TASKS = ("auto", "classification", "forecasting")


# ---------------------------------------------------------------------------------------------- tasks


class _Task:
    """How to batch, perturb, predict and score for one kind of model."""

    metrics: tuple[str, ...] = ()

    def __init__(self, batches: list[tuple[Any, Any]]) -> None:
        self.batches = batches

    def features(self, inputs: Any) -> Tensor:
        """The tensor that perturbations act on, ``[B, T, F]``."""
        raise NotImplementedError

    def with_features(self, inputs: Any, x: Tensor) -> Any:
        raise NotImplementedError

    def valid_mask(self, inputs: Any) -> Tensor | None:
        """``[B, T]`` mask of the real (non-padded) steps of ``features``, or ``None`` if all are real."""
        return None

    def attack_loss(self, model: nn.Module, inputs: Any, target: Any) -> Any:
        raise NotImplementedError

    def score(self, model: nn.Module, inputs: Any, target: Any) -> dict[str, tuple[float, int]]:
        """Per metric: (sum over the batch, count)."""
        raise NotImplementedError


class _Classification(_Task):
    metrics = ("accuracy",)

    def features(self, inputs: Tensor) -> Tensor:
        return inputs

    def with_features(self, inputs: Tensor, x: Tensor) -> Tensor:
        return x

    def attack_loss(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Any:
        return lambda x: F.cross_entropy(model(x), target)

    def score(self, model: nn.Module, inputs: Tensor, target: Tensor) -> dict[str, tuple[float, int]]:
        logits = model(inputs)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise TypeError(
                "evaluate(task='classification'): model(x) must return logits of shape [B, C], got "
                + (f"shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__)
            )
        correct = (logits.argmax(dim=1) == target).sum().item()
        return {"accuracy": (float(correct), int(target.numel()))}


class _Forecasting(_Task):
    metrics = ("mae", "smape")

    def features(self, inputs: dict[str, Tensor]) -> Tensor:
        return inputs["encoder_cont"]

    def with_features(self, inputs: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
        out = dict(inputs)
        out["encoder_cont"] = x
        return out

    def valid_mask(self, inputs: dict[str, Tensor]) -> Tensor:
        cont = inputs["encoder_cont"]
        steps = torch.arange(cont.shape[1], device=cont.device)
        return steps[None, :] < inputs["encoder_lengths"][:, None]

    @staticmethod
    def _errors(model: nn.Module, inputs: dict[str, Tensor], target: Any) -> tuple[Tensor, Tensor, Tensor]:
        y = target[0] if isinstance(target, (tuple, list)) else target
        if isinstance(y, (tuple, list)):
            raise ValueError("evaluate(task='forecasting'): multiple targets are not supported")
        if _samples_autoregressively(model):
            # n_samples=2: pytorch-forecasting samples from the *normalised* parameters when n_samples=1
            with median_path_decoding(model):
                prediction = model(inputs, n_samples=2)["prediction"][..., 0]
        else:
            prediction = model.to_prediction(model(inputs))
        if prediction.dim() == 3 and prediction.shape[-1] == 1:
            prediction = prediction[..., 0]
        steps = torch.arange(y.shape[1], device=y.device)
        mask = steps[None, :] < inputs["decoder_lengths"][:, None]
        return prediction, y.to(prediction.dtype), mask

    def attack_loss(self, model: nn.Module, inputs: dict[str, Tensor], target: Any) -> Any:
        def loss(x: Tensor) -> Tensor:
            prediction, y, mask = self._errors(model, self.with_features(inputs, x), target)
            return (prediction - y).abs()[mask].mean()

        return loss

    def score(self, model: nn.Module, inputs: dict[str, Tensor], target: Any) -> dict[str, tuple[float, int]]:
        prediction, y, mask = self._errors(model, inputs, target)
        error = (prediction - y).abs()[mask]
        smape = 2.0 * error / (prediction.abs()[mask] + y.abs()[mask] + 1e-8)
        count = int(mask.sum())
        return {"mae": (error.sum().item(), count), "smape": (smape.sum().item(), count)}


def _samples_autoregressively(model: nn.Module) -> bool:
    """True for pytorch-forecasting models that decode by sampling their distribution loss (DeepAR)."""
    import inspect

    try:
        from pytorch_forecasting.metrics import DistributionLoss
    except ImportError:  # pragma: no cover - forecasting models imply pytorch-forecasting
        return False
    return isinstance(getattr(model, "loss", None), DistributionLoss) and (
        "n_samples" in inspect.signature(model.forward).parameters
    )


@contextlib.contextmanager
def median_path_decoding(model: nn.Module) -> Iterator[None]:
    """Make ``model.loss.sample`` return the median of the predicted distribution instead of random draws.

    Inside the block, an autoregressive sampling model such as ``DeepAR`` called with ``n_samples=k`` decodes
    ``k`` identical, deterministic paths: each step's input is the previous step's median. The median is the
    base distribution's central value pushed through the (monotone) scaling and target transformations, exact
    for the symmetric base distributions pytorch-forecasting uses for real-valued targets (normal, Student-t).
    Gradients flow through the whole decode.
    """
    loss = model.loss  # type: ignore[attr-defined]

    def sample_median(y_pred: Tensor, n_samples: int) -> Tensor:
        distribution = loss.map_x_to_distribution(y_pred)
        transforms = []
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


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _make_task(task: str, data: Any, batch_size: int) -> _Task:
    if task not in TASKS:
        raise ValueError(f"evaluate: task must be one of {TASKS}, got {task!r}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, Tensor) for d in data):
        X, y = data
        if X.dim() != 3 or y.dim() != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(
                f"evaluate: tensor data must be (X [N, T, F], y [N]), got shapes {tuple(X.shape)} and {tuple(y.shape)}"
            )
        if task == "forecasting":
            raise ValueError("evaluate: forecasting needs a pytorch-forecasting data loader, got (X, y) tensors")
        batches = list(zip(X.split(batch_size), y.split(batch_size)))
        return _Classification(batches)
    if not isinstance(data, Iterable):
        raise TypeError(f"evaluate: data must be (X, y) tensors or an iterable of batches, got {type(data).__name__}")
    batches = [(inputs, target) for inputs, target in data]
    if not batches:
        raise ValueError("evaluate: data has no batches")
    is_dict = isinstance(batches[0][0], dict)
    if task == "auto":
        task = "forecasting" if is_dict else "classification"
    if task == "forecasting":
        if not is_dict or "encoder_cont" not in batches[0][0]:
            raise ValueError("evaluate(task='forecasting'): batches must be pytorch-forecasting (x: dict, y) pairs")
        return _Forecasting(batches)
    return _Classification(batches)


# ---------------------------------------------------------------------------------------------- evaluation


@contextlib.contextmanager
def _noise_free_eval(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with noise_override(model, False):
            yield
    finally:
        model.train(was_training)


def _feature_range(task: _Task) -> tuple[Tensor, Tensor]:
    """Per-feature min and max ``[F]`` over every real step of the data (salt-and-pepper values)."""
    lows, highs = [], []
    for inputs, _ in task.batches:
        x = task.features(inputs).detach()
        mask = task.valid_mask(inputs)
        flat = x[mask] if mask is not None else x.reshape(-1, x.shape[-1])
        lows.append(flat.amin(dim=0))
        highs.append(flat.amax(dim=0))
    return torch.stack(lows).amin(dim=0), torch.stack(highs).amax(dim=0)


def _run(
    model: nn.Module,
    task: _Task,
    perturbation: Perturbation | None,
    strength: float,
    seed: int,
    device: torch.device,
    bounds: tuple[Tensor, Tensor],
    pgd_steps: int,
) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    totals = {m: [0.0, 0] for m in task.metrics}
    for inputs, target in task.batches:
        inputs, target = _to_device(inputs, device), _to_device(target, device)
        if perturbation is not None and strength > 0:
            x = task.features(inputs)
            loss_fn = task.attack_loss(model, inputs, target) if perturbation.adversarial else None
            x = perturbation.apply(
                x,
                strength,
                generator=generator,
                loss_fn=loss_fn,
                low=bounds[0].to(device=device, dtype=x.dtype),
                high=bounds[1].to(device=device, dtype=x.dtype),
                steps=pgd_steps,
            )
            inputs = task.with_features(inputs, x.detach())
        with torch.no_grad():
            for metric, (total, count) in task.score(model, inputs, target).items():
                totals[metric][0] += total
                totals[metric][1] += count
    return {m: total / max(count, 1) for m, (total, count) in totals.items()}


def _grid(perturbations: Mapping[str, Sequence[float]] | Sequence[str] | None) -> dict[str, tuple[float, ...]]:
    if perturbations is None:
        return dict(DEFAULT_STRENGTHS)
    if isinstance(perturbations, str):
        raise TypeError(f"evaluate: perturbations must be a list of names or a mapping name -> strengths, got {perturbations!r}")
    items = perturbations.items() if isinstance(perturbations, Mapping) else ((p, DEFAULT_STRENGTHS.get(p, ())) for p in perturbations)
    grid = {}
    for name, strengths in items:
        if name not in PERTURBATIONS:
            raise ValueError(f"evaluate: unknown perturbation {name!r}; allowed: {sorted(PERTURBATIONS)}")
        grid[name] = tuple(float(s) for s in strengths)
        if any(s < 0 for s in grid[name]):
            raise ValueError(f"evaluate: strengths of {name!r} must be >= 0, got {list(strengths)}")
    return grid


def evaluate(
    models: Mapping[str, nn.Module] | nn.Module,
    data: Any,
    *,
    task: str = "auto",
    perturbations: Mapping[str, Sequence[float]] | Sequence[str] | None = None,
    seeds: int | Sequence[int] = 0,
    batch_size: int = 256,
    pgd_steps: int = 10,
    bounds: tuple[float | Tensor, float | Tensor] | None = None,
) -> Any:
    """Score every model on clean and perturbed inputs; returns a tidy ``pandas.DataFrame``.

    Args:
        models: ``{name: model}`` (or one model, named ``"model"``).
        data: classification: ``(X [N, T, F], y [N])`` tensors or an iterable of ``(x, y)`` batches;
            forecasting: a pytorch-forecasting data loader (``dataset.to_dataloader(train=False)``).
        task: ``"auto"`` (dict batches -> forecasting), ``"classification"`` or ``"forecasting"``.
        perturbations: ``{name: strengths}`` or a list of names (default grids
            :data:`~nrnn_plugin.robustness.perturbations.DEFAULT_STRENGTHS`); names from
            :data:`~nrnn_plugin.robustness.perturbations.PERTURBATIONS`. Strength 0 is the clean input.
        seeds: seed(s) of the perturbation generators; random perturbations are repeated per seed,
            deterministic ones (clean, FGSM) computed once and reported for every seed.
        batch_size: batch size for tensor data.
        pgd_steps: PGD iterations (step size ``2.5 eps / steps``, random start).
        bounds: salt-and-pepper ``(low, high)`` values (floats or per-feature ``[F]`` tensors); default the
            per-feature min and max of the clean data.

    Returns:
        ``DataFrame`` with columns ``model, perturbation, strength, metric, value, seed`` (one row per
        combination; ``accuracy`` for classification, ``mae`` and ``smape`` for forecasting).
    """
    import pandas as pd

    if isinstance(models, nn.Module):
        models = {"model": models}
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"evaluate: models must be a non-empty mapping name -> nn.Module, got {models!r}")
    seed_list = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seed_list or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seed_list):
        raise ValueError(f"evaluate: seeds must be an integer >= 0 or a non-empty list of them, got {seeds!r}")
    grid = _grid(perturbations)
    runner = _make_task(task, data, batch_size)
    if bounds is None:
        low, high = _feature_range(runner)
    else:
        low, high = (torch.as_tensor(b, dtype=torch.float64) for b in bounds)

    rows: list[tuple[str, str, float, str, float, int]] = []
    for name, model in models.items():
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with _noise_free_eval(model):
            clean = _run(model, runner, None, 0.0, 0, device, (low, high), pgd_steps)
            for pert_name, strengths in grid.items():
                perturbation = PERTURBATIONS[pert_name]
                for strength in strengths:
                    if strength == 0.0 or not perturbation.random:
                        values = clean if strength == 0.0 else _run(
                            model, runner, perturbation, strength, 0, device, (low, high), pgd_steps
                        )
                        per_seed = {seed: values for seed in seed_list}
                    else:
                        per_seed = {
                            seed: _run(model, runner, perturbation, strength, seed, device, (low, high), pgd_steps)
                            for seed in seed_list
                        }
                    for seed, values in per_seed.items():
                        for metric, value in values.items():
                            rows.append((name, pert_name, strength, metric, value, seed))
    return pd.DataFrame(rows, columns=list(COLUMNS))
