"""The drift of the NRNN cell: its structured matrices, its parameters and their initialisation.

``A = beta (B - B^T) + (1 - beta) (B + B^T) - gamma_A I`` and ``W`` likewise from ``C``; ``B, C`` start
``N(0, (init_std / H)^2)``; the input encoder ``U x + b`` starts like ``nn.Linear``; a learned step is
``softplus(step_raw)``. Shared by :class:`~nrnn_plugin.layers.nrnn.NRNN` and ``NRNNCell``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrnn_plugin.validation import check_bool, check_real

__all__ = ["structured_matrix", "DriftParameters"]


def structured_matrix(free: Tensor, beta: float, gamma: float) -> Tensor:
    """``beta (M - M^T) + (1 - beta) (M + M^T) - gamma I`` for a square ``free = M`` (``[H, H]``).

    Computed as ``M + (1 - 2 beta) M^T - gamma I``. Its symmetric part is ``(1 - beta)(M + M^T) - gamma I``:
    exactly ``-gamma I`` when ``beta = 1``.
    """
    eye = torch.eye(free.shape[0], dtype=free.dtype, device=free.device)
    return free + (1.0 - 2.0 * beta) * free.transpose(0, 1) - gamma * eye


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class DriftParameters(nn.Module):
    """Hyper-parameters and parameter helpers shared by :class:`NRNN` and :class:`NRNNCell`."""

    hidden_size: int
    bias: bool

    def _init_hyper(
        self,
        owner: str,
        *,
        alpha: float,
        beta: float,
        gamma_A: float,
        gamma_W: float,
        dt: float,
        learn_dt: bool,
        init_std: float,
    ) -> None:
        self.alpha = check_real(f"{owner}.alpha", alpha)
        self.beta = check_real(f"{owner}.beta", beta)
        self.gamma_A = check_real(f"{owner}.gamma_A", gamma_A)
        self.gamma_W = check_real(f"{owner}.gamma_W", gamma_W)
        self.dt = check_real(f"{owner}.dt", dt, minimum=0.0, strict=True)
        self.learn_dt = check_bool(f"{owner}.learn_dt", learn_dt)
        self.init_std = check_real(f"{owner}.init_std", init_std, minimum=0.0, strict=True)

    def _make_parameters(self, suffix: str, input_size: int, factory: dict[str, Any]) -> None:
        H = self.hidden_size
        self.register_parameter("weight_ih" + suffix, nn.Parameter(torch.empty(H, input_size, **factory)))
        if self.bias:
            self.register_parameter("bias_ih" + suffix, nn.Parameter(torch.empty(H, **factory)))
        self.register_parameter("weight_B" + suffix, nn.Parameter(torch.empty(H, H, **factory)))
        self.register_parameter("weight_C" + suffix, nn.Parameter(torch.empty(H, H, **factory)))
        if self.learn_dt:
            self.register_parameter("step_raw" + suffix, nn.Parameter(torch.empty(H, **factory)))

    def _reset_suffix(self, suffix: str) -> None:
        H = self.hidden_size
        with torch.no_grad():
            weight_ih = getattr(self, "weight_ih" + suffix)
            bound = 1.0 / math.sqrt(weight_ih.shape[1]) if weight_ih.shape[1] > 0 else 0.0
            weight_ih.uniform_(-bound, bound)  # nn.Linear's default range
            if self.bias:
                getattr(self, "bias_ih" + suffix).uniform_(-bound, bound)
            getattr(self, "weight_B" + suffix).normal_(0.0, self.init_std / H)
            getattr(self, "weight_C" + suffix).normal_(0.0, self.init_std / H)
            if self.learn_dt:
                getattr(self, "step_raw" + suffix).fill_(_inverse_softplus(self.dt))

    def _matrices(self, suffix: str) -> tuple[Tensor, Tensor]:
        return (
            structured_matrix(getattr(self, "weight_B" + suffix), self.beta, self.gamma_A),
            structured_matrix(getattr(self, "weight_C" + suffix), self.beta, self.gamma_W),
        )

    def _kernel(self, suffix: str) -> Tensor:
        A, W = self._matrices(suffix)
        if self.alpha == 0.0:
            return W
        return torch.cat([self.alpha * A, W], dim=0)

    def _step(self, suffix: str) -> Tensor | float:
        if self.learn_dt:
            return F.softplus(getattr(self, "step_raw" + suffix))
        return self.dt

    def _drift_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, gamma_A={self.gamma_A}, gamma_W={self.gamma_W}, "
            f"dt={self.dt}, learn_dt={self.learn_dt}, init_std={self.init_std}"
        )
