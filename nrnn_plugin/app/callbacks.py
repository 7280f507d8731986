"""The Lightning callbacks of ``nrnn train`` and ``nrnn demo``: progress for people, the best epoch in memory.

Imports Lightning at module level: import this module lazily.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch

from nrnn_plugin.app.progress import Reporter

__all__ = ["ProgressCallback", "BestState"]

_SHOWN = (("train_loss_epoch", "train_loss"), ("val_loss", "val_loss"), ("train_nrnn_reg_epoch", "reg"))


class ProgressCallback(pl.Callback):
    """One line per epoch through the reporter (losses, noise sigma, time); on a terminal also a progress bar
    over the epoch's batches (tqdm, on stderr)."""

    def __init__(self, label: str, reporter: Reporter, max_epochs: int) -> None:
        self.label = label
        self.reporter = reporter
        self.max_epochs = max_epochs
        self._start = 0.0
        self._bar: Any = None

    @property
    def interactive(self) -> bool:
        return bool(getattr(self.reporter, "interactive", False))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        if self.interactive:
            from tqdm.auto import tqdm

            total = trainer.num_training_batches
            self._bar = tqdm(
                total=None if total == float("inf") else int(total),
                desc=f"{self.label}: epoch {trainer.current_epoch + 1}/{self.max_epochs}",
                leave=False,
                file=getattr(self.reporter, "stream", None),
                dynamic_ncols=True,
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._bar is not None:
            loss = trainer.callback_metrics.get("train_loss_step")
            if loss is not None:
                self._bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
            self._bar.update(1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        metrics = trainer.callback_metrics
        parts = [f"{self.label}: epoch {trainer.current_epoch + 1:>{len(str(self.max_epochs))}}/{self.max_epochs}"]
        for key, label in _SHOWN:
            if key in metrics:
                parts.append(f"{label} {float(metrics[key]):.4f}")
        sigma = [(n, metrics.get(f"train_nrnn_sigma_{n}")) for n in ("additive", "multiplicative")]
        shown = [f"{n} {float(v):.3g}" for n, v in sigma if v is not None and float(v) > 0]
        if shown:
            parts.append("sigma " + ", ".join(shown))
        parts.append(f"({time.perf_counter() - self._start:.1f}s)")
        self.reporter.progress("  ".join(parts))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class BestState(pl.Callback):
    """Keeps a copy of the weights of the epoch with the lowest validation loss (in memory; no file needed)."""

    def __init__(self, model: pl.LightningModule) -> None:
        self.model = model
        self.best = math.inf
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_loss")
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)
