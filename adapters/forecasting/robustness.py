"""The robustness suite's ``"forecasting"`` task for pytorch-forecasting models.

Imports pytorch-forecasting: reached only through the forecasting adapter's ``nrnn_robustness_task`` hook,
when the batches are pytorch-forecasting batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nrnn_plugin.adapters.forecasting.decoding import median_path_decoding, samples_itself
from nrnn_plugin.robustness import Task

__all__ = ["ForecastingTask"]


class ForecastingTask(Task):
    """pytorch-forecasting models on their data loaders' ``(x: dict, (y, weight))`` batches.

    The perturbation acts on the normalised encoder inputs ``x["encoder_cont"]`` only; metrics ``mae`` and
    ``smape`` of the point prediction (``model.to_prediction``) on the prediction window, in the target's
    original scale. Adversarial loss: the MAE of that prediction. Autoregressive sampling models (``DeepAR``)
    are scored on their median path (:func:`~nrnn_plugin.adapters.forecasting.decoding.median_path_decoding`):
    the decoder runs autoregressively, never with the observed future targets.
    """

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
    def _errors(model: Any, inputs: dict[str, Tensor], target: Any) -> tuple[Tensor, Tensor, Tensor]:
        y = target[0] if isinstance(target, (tuple, list)) else target
        if isinstance(y, (tuple, list)):
            raise ValueError("evaluate(task='forecasting'): multiple targets are not supported")
        if samples_itself(model):
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

    def attack_loss(self, model: Any, inputs: dict[str, Tensor], target: Any) -> Any:
        def loss(x: Tensor) -> Tensor:
            prediction, y, mask = self._errors(model, self.with_features(inputs, x), target)
            return (prediction - y).abs()[mask].mean()

        return loss

    def score(self, model: Any, inputs: dict[str, Tensor], target: Any) -> dict[str, tuple[float, int]]:
        prediction, y, mask = self._errors(model, inputs, target)
        error = (prediction - y).abs()[mask]
        smape = 2.0 * error / (prediction.abs()[mask] + y.abs()[mask] + 1e-8)
        count = int(mask.sum())
        return {"mae": (error.sum().item(), count), "smape": (smape.sum().item(), count)}
