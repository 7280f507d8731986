"""The regularizer's side of a Lightning ``training_step``: loss closures, logging suppression, the step's RNG.

Nothing here imports Lightning: a LightningModule is any object with ``training_step``, ``log`` and
``log_dict``, so the helpers serve both distributions (``docs/frameworks.md``).

* :func:`default_loss_closure`: the training loss of a batch recomputed without side effects;
* :func:`logging_suppressed`: ``module.log`` / ``log_dict`` made no-ops for the closure's passes;
* :class:`StepRng`: the global RNG as the training step found it, so that the regularizer's passes draw what the
  step drew (dropout masks, and the random windows NeuralForecast samples inside ``training_step``) while the
  training run's own random stream continues as if the regularizer had not run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from nrnn_plugin.regularizer.guards import GlobalRng, model_devices

__all__ = [
    "LossClosure",
    "default_loss_closure",
    "logging_suppressed",
    "loss_of",
    "with_loss",
    "batch_size",
    "StepRng",
]

#: ``closure(module, batch, batch_idx) -> scalar loss``, recomputing the training loss without side effects.
LossClosure = Callable[[Any, Any, int], Tensor]


@contextmanager
def logging_suppressed(module: Any) -> Iterator[None]:
    """Make ``module.log`` and ``module.log_dict`` no-ops inside the block (instance attributes, restored)."""
    saved = {name: module.__dict__[name] for name in ("log", "log_dict") if name in module.__dict__}

    def silent(*args: Any, **kwargs: Any) -> None:
        return None

    module.log = silent
    module.log_dict = silent
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            if name in saved:
                setattr(module, name, saved[name])
            else:
                module.__dict__.pop(name, None)


def default_loss_closure(module: Any, batch: Any, batch_idx: int) -> Tensor:
    """Recompute the training loss of ``batch`` without side effects: the (unwrapped) ``training_step`` with
    logging suppressed; its loss is the returned tensor or ``output["loss"]``.

    A ``training_step`` with other side effects needs an explicit ``loss_closure`` (or, for a model family, a
    plugin implementing the ``nrnn_loss_closure`` hook).
    """
    with logging_suppressed(module):
        step = module.training_step
        step = getattr(step, "__wrapped__", step)
        return loss_of(step(batch, batch_idx))


def loss_of(output: Any) -> Tensor:
    """The loss of a ``training_step`` output: the tensor itself or ``output["loss"]``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("loss"), Tensor):
        return output["loss"]
    raise TypeError(
        "NoisyRNNCallback: training_step must return a loss tensor or a mapping with a 'loss' tensor to add the "
        f"explicit regularizer, got {type(output).__name__}"
    )


def with_loss(output: Any, loss: Tensor) -> Any:
    """``output`` with its loss replaced by ``loss`` (same form: a tensor or a mapping)."""
    if isinstance(output, Tensor):
        return loss
    updated = dict(output)
    updated["loss"] = loss
    return updated


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj if obj.dim() > 0 else None
    items = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def batch_size(batch: Any) -> int:
    """Size of the first dimension of the first tensor found in ``batch`` (1 if there is none)."""
    tensor = _first_tensor(batch)
    return 1 if tensor is None else int(tensor.shape[0])


class StepRng:
    """The global RNG streams (CPU and ``module``'s CUDA devices) as a training step found them.

    Take it before the step's own ``training_step`` runs; :meth:`replayed` then runs a block (the regularizer's
    passes) from that state and puts the streams back where the step left them.
    """

    def __init__(self, module: Any) -> None:
        self.devices = model_devices(module)
        self.before = GlobalRng(self.devices)

    @contextmanager
    def replayed(self) -> Iterator[None]:
        after = GlobalRng(self.devices)
        self.before.restore()
        try:
            yield
        finally:
            after.restore()
