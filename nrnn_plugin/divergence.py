"""An opt-in watch for noisy forwards that turn non-finite (a noise level too large for the sequence length).

Multiplicative noise compounds over the steps of a sequence: ``multiplicative=5.0`` over ``T=2000`` steps turns the
hidden states into ``inf``/``nan`` from the first batch, and the loss is ``nan`` with no word from the library.
:class:`FiniteWatch` puts a forward hook on every noisy module of a model; the first training forward whose
output is not finite raises one ``RuntimeWarning`` naming the module, the noise levels in effect and the
sequence length, then the watch removes its hooks. Cost while it watches: one ``isfinite`` reduction per noisy
forward (a device synchronisation on GPU), which is why it is opt-in (``NoisyRNNCallback(check_finite=True)``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from nrnn_plugin.runtime import noisy_modules, runtime_of

__all__ = ["FiniteWatch"]


def _tensors(output: Any) -> list[Tensor]:
    """The floating tensors of a module output (tensor, PackedSequence, tuples of them)."""
    if isinstance(output, PackedSequence):
        return [output.data]
    if isinstance(output, Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


def _steps(inputs: tuple[Any, ...], batch_first: bool) -> str:
    first = inputs[0] if inputs else None
    if isinstance(first, PackedSequence):
        return str(len(first.batch_sizes))
    if isinstance(first, Tensor) and first.dim() >= 2:
        return str(first.shape[1] if batch_first and first.dim() == 3 else first.shape[0])
    return "?"


class FiniteWatch:
    """Warn once when a noisy module's training forward returns non-finite values.

    Args:
        model: the model whose noisy modules are watched (register noise first).
        where: a callable giving the position for the message (e.g. ``lambda: f"step {trainer.global_step}"``).
    """

    def __init__(self, model: nn.Module, where: Callable[[], str] = lambda: "a training step") -> None:
        self.where = where
        self.fired = False
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in noisy_modules(model)]

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def check(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            runtime = runtime_of(module)
            if self.fired or runtime is None or not runtime.injecting(module.training):
                return
            if all(bool(torch.isfinite(t).all()) for t in _tensors(output)):
                return
            self.fired = True
            self.close()
            config, level = runtime.config, runtime.level
            steps = _steps(inputs, bool(getattr(module, "batch_first", False)))
            warnings.warn(
                f"nrnn-plugin: the noisy forward of {name or '<root>'} ({type(module).__name__}) returned non-finite "
                f"values at {self.where()}: additive={config.additive * level:g}, "
                f"multiplicative={config.multiplicative * level:g} (schedule level {level:g}), dt={config.dt:g}, "
                f"{steps} time steps. The noise is too strong for this sequence length: lower the levels (the "
                "multiplicative part compounds over the steps), shorten the sequences or add a warm-up schedule",
                RuntimeWarning,
                stacklevel=2,
            )

        return check

    def close(self) -> None:
        """Remove the hooks (the model is left as it was)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
