"""Pruning noise-level trials in Lightning: Optuna's ``PyTorchLightningPruningCallback`` for a Candidate.

>>> callbacks = [NoisyRNNCallback(candidate.noise)]
>>> callbacks += pruning_callback(candidate, monitor="val_loss")      # [] when the study cannot prune
>>> trainer = pl.Trainer(callbacks=callbacks)                        # doctest: +SKIP

Only studies made with ``objective="constrained"`` prune (Optuna does not prune multi-objective studies), and
the noise-free baseline is never pruned: the callback list is empty then. Needs ``optuna-integration``.
"""

from __future__ import annotations

from typing import Any

from nrnn_plugin.tuning.space import Candidate

__all__ = ["pruning_callback"]


def pruning_callback(candidate: Candidate, monitor: str = "val_loss") -> list[Any]:
    """``[PyTorchLightningPruningCallback(candidate.trial, monitor)]`` for a prunable trial, else ``[]``.

    ``monitor`` must be a logged metric where lower is better (the study's single objective is minimised).
    """
    if not candidate.prunable or candidate.baseline or candidate.trial is None:
        return []
    from optuna_integration import PyTorchLightningPruningCallback

    return [PyTorchLightningPruningCallback(candidate.trial, monitor=monitor)]
