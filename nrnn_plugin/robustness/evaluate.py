"""Evaluate models under test-time input perturbations; results as a tidy ``pandas.DataFrame``.

A :class:`Task` says how to batch, perturb, predict and score one kind of model. The built-in task is
``"classification"``: ``model(x [B, T, F]) -> logits [B, C]``; data is ``(X, y)`` tensors or an iterable of
``(x, y)`` batches; metric ``accuracy``; adversarial loss: cross-entropy. Plugins provide tasks for other data
through the ``nrnn_robustness_task`` hook: the forecasting adapter's ``"forecasting"`` task scores
pytorch-forecasting models on their data loaders (``nrnn_plugin.adapters.forecasting.robustness``).

Every model is evaluated in eval mode with injected noise forced off (:func:`~nrnn_plugin.runtime.noise_control`):
the perturbed input goes through the *noise-free* model, and adversarial gradients are taken through it too.
Random perturbations use a fresh ``torch.Generator`` seeded with ``seed`` for every (model, perturbation,
strength): all models see the same perturbation draws (common random numbers), and a result does not depend
on which other models or strengths were evaluated. Data must come in a fixed order (no shuffling).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrnn_plugin.plugins.manager import PluginError, first_result
from nrnn_plugin.robustness.perturbations import DEFAULT_STRENGTHS, PERTURBATIONS, Perturbation
from nrnn_plugin.runtime import noise_control

__all__ = ["evaluate", "Task", "ClassificationTask", "COLUMNS"]

COLUMNS = ("model", "perturbation", "strength", "metric", "value", "seed")


# ---------------------------------------------------------------------------------------------- tasks


class Task:
    """How to perturb, predict and score one kind of model on a list of ``(inputs, target)`` batches.

    Subclasses (a plugin's ``nrnn_robustness_task`` returns one) set ``metrics`` and implement every method.
    """

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


class ClassificationTask(Task):
    """``model(x [B, T, F]) -> logits [B, C]``, scored by accuracy; adversaries increase the cross-entropy."""

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


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _make_task(task: str | Callable[[list[tuple[Any, Any]]], Task], data: Any, batch_size: int) -> Task:
    if not isinstance(task, str) and not callable(task):
        raise TypeError(f"evaluate: task must be a task name (str) or a Task factory, got {type(task).__name__}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, Tensor) for d in data):
        X, y = data
        if X.dim() != 3 or y.dim() != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(
                f"evaluate: tensor data must be (X [N, T, F], y [N]), got shapes {tuple(X.shape)} and {tuple(y.shape)}"
            )
        batches = list(zip(X.split(batch_size), y.split(batch_size)))
    elif isinstance(data, Iterable):
        batches = [(inputs, target) for inputs, target in data]
        if not batches:
            raise ValueError("evaluate: data has no batches")
    else:
        raise TypeError(f"evaluate: data must be (X, y) tensors or an iterable of batches, got {type(data).__name__}")
    if not isinstance(task, str):
        made = task(batches)
        if not isinstance(made, Task):
            raise TypeError(f"evaluate: the task factory returned {type(made).__name__}, expected a Task")
        return made
    if task != "classification":
        answer, plugin = first_result("nrnn_robustness_task", batches=batches, task=task)
        if answer is not None:
            if not isinstance(answer, Task):
                raise PluginError(
                    f"plugin {plugin!r} answered nrnn_robustness_task with {type(answer).__name__}, expected a "
                    "nrnn_plugin.robustness.evaluate.Task"
                )
            return answer
    if task in ("auto", "classification"):
        return ClassificationTask(batches)
    raise ValueError(
        f"evaluate: no plugin provides task {task!r} for these batches (built in: 'auto', 'classification'; "
        "'forecasting' needs pytorch-forecasting batches and the forecasting adapter)"
    )


# ---------------------------------------------------------------------------------------------- evaluation


@contextlib.contextmanager
def _noise_free_eval(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with noise_control(model, inject=False):
            yield
    finally:
        model.train(was_training)


def _feature_range(task: Task) -> tuple[Tensor, Tensor]:
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
    task: Task,
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
        raise TypeError(
            f"evaluate: perturbations must be a list of names or a mapping name -> strengths, got {perturbations!r}"
        )
    items = (
        perturbations.items()
        if isinstance(perturbations, Mapping)
        else ((p, DEFAULT_STRENGTHS.get(p, ())) for p in perturbations)
    )
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
    task: str | Callable[[list[tuple[Any, Any]]], Task] = "auto",
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
        task: ``"auto"`` (a plugin's task where one knows the batches, else classification),
            ``"classification"``, a task a plugin provides (``"forecasting"``), or a factory
            ``batches -> Task`` (a :class:`Task` subclass, e.g. with extra metrics).
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
                        values = (
                            clean
                            if strength == 0.0
                            else _run(model, runner, perturbation, strength, 0, device, (low, high), pgd_steps)
                        )
                        per_seed = dict.fromkeys(seed_list, values)
                    else:
                        per_seed = {
                            seed: _run(model, runner, perturbation, strength, seed, device, (low, high), pgd_steps)
                            for seed in seed_list
                        }
                    for seed, values in per_seed.items():
                        for metric, value in values.items():
                            rows.append((name, pert_name, strength, metric, value, seed))
    return pd.DataFrame(rows, columns=list(COLUMNS))
