"""The regularizer's loss closure for pytorch-forecasting models (the ``nrnn_loss_closure`` hook).

A pytorch-forecasting ``training_step`` also appends to ``training_step_outputs`` and logs; the loss of a batch
without side effects is ``module.step(x, y, batch_idx)`` with logging suppressed.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from nrnn_plugin.integrations.steps import logging_suppressed

__all__ = ["forecasting_loss"]


def forecasting_loss(module: Any, batch: Any, batch_idx: int) -> Tensor:
    """The training loss of ``batch`` for a pytorch-forecasting ``BaseModel``, recomputed without side effects."""
    x, y = batch
    with logging_suppressed(module):
        log, _ = module.step(x, y, batch_idx)
    loss = log["loss"]
    assert isinstance(loss, Tensor)
    return loss
