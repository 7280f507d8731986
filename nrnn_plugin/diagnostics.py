"""Stability and robustness diagnostics of a (trained) recurrent model (``docs/method.md``: stability and margins).

* :func:`contraction_bound`: the deterministic contraction bound ``lambda_max(A_sym) + L_a ||W||_2`` of a
  Lipschitz-type drift ``f(h) = A h + a(W h + U x + b)`` (the paper's NRNN cell: pass ``alpha * A`` and ``W``
  from ``NRNN.matrices()``), with its stochastic-stabilisation shift for multiplicative noise.
* :func:`recurrent_step`, :func:`state_jacobians`, :func:`trajectory_contraction`: the same questions for any
  cell, from the state Jacobians ``J_k = dPsi/dh`` along the noise-free trajectory.
* :func:`lyapunov_exponents`: finite-time Lyapunov exponents ``log ||Phi_{M,0}|| / M`` by QR
  re-orthonormalisation (stable for long sequences).
* :func:`input_output_jacobian_norms`, :func:`output_margins`, :func:`margin_report`: the input-output Jacobian
  that controls the classification margin (section 5).
* :func:`noise_gap`: a Monte Carlo estimate of ``E[loss with noise] - loss without noise`` (antithetic draws):
  how much regularization a noise level actually imposes; the explicit regularizer approximates it.

Shapes: sequences are time-major ``[T, B, I]``; states ``[B, n]`` (``n = 2H`` for an LSTM: ``[h, c]``); the
per-step Jacobians ``[T, B, n, n]``. Sample ``b`` of a batch must not influence sample ``b'`` (no batch norm across
samples) wherever Jacobians are computed with batched backward passes.

Stochastic stabilisation (Mao-type criterion, ``docs/method.md``). For ``dh = f dt + sigma_mult * h dB`` with
ONE scalar Brownian motion per sample (``NoiseConfig.shared_multiplicative``), the almost-sure Lyapunov bound
of the difference of two trajectories is ``K + sigma^2 / 2 - sigma^2 = K - sigma^2 / 2`` (``K`` the deterministic
bound). With independent noise per unit the generic bound is ``K + sigma^2 / 2 - sigma^2 / n`` (no stabilisation
for ``n >= 2``); additive noise shifts nothing. ``sigma_mult`` is the SDE's coefficient per unit time
(``NoiseConfig.multiplicative`` times the schedule level for Euler-Maruyama and Milstein); the bound is not
defined for the reference scheme.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrnn_plugin.counter_noise import key_tensor
from nrnn_plugin.layers.nrnn import NRNN
from nrnn_plugin.layers.nrnn_reference import nrnn_step
from nrnn_plugin.layers.reference import elman_cell, gru_cell, lstm_cell
from nrnn_plugin.noise import NoiseKey, NoiseTape
from nrnn_plugin.regularizer.guards import GlobalRng, model_devices
from nrnn_plugin.runtime import noise_control, recording, replaying

__all__ = [
    "ContractionBound",
    "TrajectoryContraction",
    "MarginReport",
    "spectral_norm",
    "stochastic_shift",
    "contraction_bound",
    "recurrent_step",
    "state_trajectory",
    "state_jacobians",
    "trajectory_contraction",
    "lyapunov_exponents",
    "finite_time_lyapunov",
    "input_output_jacobian_norms",
    "output_margins",
    "margin_report",
    "noise_gap",
]

Step = Callable[[Tensor, Tensor], Tensor]


# ============================================================================================ bounds


def spectral_norm(matrix: Tensor, *, iterations: int = 500, tol: float = 1e-10, seed: int = 0) -> float:
    """``||matrix||_2`` (largest singular value) by power iteration on ``M^T M``.

    Deterministic (start vector from a generator seeded with ``seed``); stops when the estimate changes by less
    than ``tol`` relative. ``matrix``: ``[m, n]``.
    """
    if matrix.dim() != 2:
        raise ValueError(f"spectral_norm: matrix must be 2-D, got shape {tuple(matrix.shape)}")
    m = matrix.detach().to(torch.float64)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(m.shape[1], generator=generator, dtype=torch.float64).to(m.device)
    v = v / v.norm()
    estimate = 0.0
    for _ in range(iterations):
        w = m.T @ (m @ v)
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0
        v = w / norm
        previous, estimate = estimate, math.sqrt(norm)
        if abs(estimate - previous) <= tol * estimate:
            break
    return float((m @ v).norm())


def stochastic_shift(multiplicative: float, hidden_size: int, *, shared: bool = True) -> float:
    """Shift of the almost-sure Lyapunov bound by multiplicative noise ``sigma * h dB`` (module docstring).

    ``-sigma^2 / 2`` for one shared Brownian factor per sample, ``sigma^2 (1/2 - 1/n)`` for independent noise
    per unit (``n = hidden_size``).
    """
    if multiplicative < 0:
        raise ValueError(f"stochastic_shift: multiplicative must be >= 0, got {multiplicative!r}")
    if hidden_size < 1:
        raise ValueError(f"stochastic_shift: hidden_size must be >= 1, got {hidden_size!r}")
    sigma2 = multiplicative**2
    if shared:
        return -0.5 * sigma2
    return sigma2 * (0.5 - 1.0 / hidden_size)


@dataclass(frozen=True)
class ContractionBound:
    """``deterministic = lambda_max_sym + lipschitz * weight_norm``; ``stochastic = deterministic + shift``.

    ``contractive`` is ``deterministic < 0``; ``stochastically_stable`` is ``stochastic < 0``.
    """

    lambda_max_sym: float
    weight_norm: float
    lipschitz: float
    deterministic: float
    shift: float
    stochastic: float

    @property
    def contractive(self) -> bool:
        return self.deterministic < 0.0

    @property
    def stochastically_stable(self) -> bool:
        return self.stochastic < 0.0


def contraction_bound(
    A: Tensor,  # noqa: N803 (the paper's names)
    W: Tensor,  # noqa: N803
    *,
    lipschitz: float = 1.0,
    multiplicative: float = 0.0,
    shared: bool = True,
) -> ContractionBound:
    """The contraction bound of ``f(h, x) = A h + a(W h + U x + b)`` with ``a`` ``lipschitz``-Lipschitz.

    Args:
        A, W: ``[H, H]`` matrices (for the NRNN cell: ``alpha * A`` and ``W`` of ``NRNN.matrices()``).
        lipschitz: ``L_a`` (1 for tanh).
        multiplicative, shared: the multiplicative noise level ``sigma_mult`` and whether one Brownian factor
            is shared by all units (:func:`stochastic_shift`).

    ``lambda_max(A_sym)`` is computed exactly (``eigvalsh``), ``||W||_2`` by :func:`spectral_norm`.
    """
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"contraction_bound: A must be a square [H, H] matrix, got shape {tuple(A.shape)}")
    if W.dim() != 2 or W.shape[1] != A.shape[0]:
        raise ValueError(f"contraction_bound: W must be [*, H] with H = {A.shape[0]}, got shape {tuple(W.shape)}")
    a = A.detach().to(torch.float64)
    lam = float(torch.linalg.eigvalsh(0.5 * (a + a.T))[-1])
    norm = spectral_norm(W)
    deterministic = lam + lipschitz * norm
    shift = stochastic_shift(multiplicative, A.shape[0], shared=shared)
    return ContractionBound(lam, norm, float(lipschitz), deterministic, shift, deterministic + shift)


# ============================================================================================ trajectories


def recurrent_step(module: nn.Module, layer: int = 0, direction: int = 0) -> Step:
    """The noise-free step ``Psi(state [B, n], x [B, I]) -> [B, n]`` of one layer and direction of a module.

    Supports ``nn.RNN`` (tanh/relu), ``nn.GRU``, ``nn.LSTM`` (state ``[h, c]``, ``n = 2H``; ``proj_size = 0``)
    and their noisy versions, and the NRNN layer (``nrnn_plugin.NRNN``). For other cells pass your own
    step function to the functions below.
    """
    suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    if isinstance(module, nn.RNNBase):
        if getattr(module, "proj_size", 0):
            raise ValueError("recurrent_step: LSTM with proj_size > 0 is not supported")
        if not hasattr(module, "weight_ih" + suffix):
            raise ValueError(f"recurrent_step: {type(module).__name__} has no layer {layer} direction {direction}")
        w_ih, w_hh = getattr(module, "weight_ih" + suffix), getattr(module, "weight_hh" + suffix)
        b_ih = getattr(module, "bias_ih" + suffix) if module.bias else None
        b_hh = getattr(module, "bias_hh" + suffix) if module.bias else None
        hidden = module.hidden_size
        mode = module.mode
        if mode == "LSTM":

            def lstm_step(state: Tensor, x: Tensor) -> Tensor:
                h, c = state[:, :hidden], state[:, hidden:]
                o, c_new, _ = lstm_cell(F.linear(x, w_ih, b_ih), h, c, w_hh, b_hh)
                return torch.cat([o * torch.tanh(c_new), c_new], dim=1)

            return lstm_step
        if mode == "GRU":
            return lambda h, x: gru_cell(F.linear(x, w_ih, b_ih), h, w_hh, b_hh)
        relu = mode == "RNN_RELU"
        return lambda h, x: elman_cell(F.linear(x, w_ih, b_ih), h, w_hh, b_hh, relu)
    if isinstance(module, NRNN):
        A, W = module.matrices(layer, direction)  # noqa: N806
        alpha = float(module.alpha)
        kernel = torch.cat([alpha * A, W]) if alpha != 0.0 else W
        step = module.step_size(layer, direction)
        weight = getattr(module, "weight_ih" + suffix)
        bias = getattr(module, "bias_ih" + suffix, None)
        return lambda h, x: nrnn_step(F.linear(x, weight, bias), h, kernel, step, alpha != 0.0)
    raise TypeError(
        f"recurrent_step: expected nn.RNN, nn.GRU, nn.LSTM or NRNN, got {type(module).__name__}; pass a step "
        "function Psi(state, x) -> state instead"
    )


def state_trajectory(step: Step, inputs: Tensor, initial: Tensor) -> Tensor:
    """States ``[T + 1, B, n]`` of ``h_{k+1} = step(h_k, x_k)`` from ``initial`` ``[B, n]``, inputs ``[T, B, I]``."""
    states = [initial]
    for x in inputs.unbind(0):
        states.append(step(states[-1], x))
    return torch.stack(states)


def state_jacobians(step: Step, inputs: Tensor, initial: Tensor) -> Tensor:
    """``J_k = d step(h_k, x_k) / d h_k`` along the noise-free trajectory: ``[T, B, n, n]`` (detached).

    One backward pass per state coordinate and step (samples are assumed independent).
    """
    with torch.enable_grad():
        states = state_trajectory(step, inputs.detach(), initial.detach()).detach()
        jacobians = []
        for k, x in enumerate(inputs.detach().unbind(0)):
            h = states[k].clone().requires_grad_(True)
            out = step(h, x)
            rows = [torch.autograd.grad(out[:, i].sum(), h, retain_graph=True)[0] for i in range(out.shape[1])]
            jacobians.append(torch.stack(rows, dim=1))
    return torch.stack(jacobians)


@dataclass(frozen=True)
class TrajectoryContraction:
    """Contraction along a trajectory, per sample (``[B]`` tensors).

    ``log_norm``: ``max_k mu_2((J_k - I) / dt)``, the continuous-time contraction rate (``< 0``: contracting;
    for the NRNN Euler step it is at most :func:`contraction_bound`'s deterministic value);
    ``stochastic``: ``log_norm + shift``; ``step_norm``: ``max_k ||J_k||_2`` (``< 1``: the discrete map
    contracts at every step).
    """

    log_norm: Tensor
    shift: float
    stochastic: Tensor
    step_norm: Tensor


def trajectory_contraction(
    jacobians: Tensor, *, dt: float = 1.0, multiplicative: float = 0.0, shared: bool = True
) -> TrajectoryContraction:
    """Contraction diagnostics from per-step Jacobians ``[T, B, n, n]`` (:func:`state_jacobians`)."""
    if jacobians.dim() != 4 or jacobians.shape[-1] != jacobians.shape[-2]:
        raise ValueError(f"trajectory_contraction: jacobians must be [T, B, n, n], got {tuple(jacobians.shape)}")
    n = jacobians.shape[-1]
    eye = torch.eye(n, dtype=jacobians.dtype, device=jacobians.device)
    generator = (jacobians - eye) / dt
    log_norm = torch.linalg.eigvalsh(0.5 * (generator + generator.transpose(-1, -2)))[..., -1].amax(dim=0)
    step_norm = torch.linalg.matrix_norm(jacobians, ord=2).amax(dim=0)
    shift = stochastic_shift(multiplicative, n, shared=shared)
    return TrajectoryContraction(log_norm, shift, log_norm + shift, step_norm)


def lyapunov_exponents(jacobians: Tensor, k: int | None = None, *, dt: float = 1.0) -> Tensor:
    """Finite-time Lyapunov exponents ``[B, k]`` (descending) from Jacobians ``[T, B, n, n]``.

    QR re-orthonormalisation: ``Q_0 = I[:, :k]``, ``J_t Q_t = Q_{t+1} R_{t+1}``; exponent ``i`` is
    ``sum_t log |R_t[i, i]| / (T * dt)``. The first is ``log ||Phi_{T,0}|| / (T dt)`` up to ``O(1/T)``; for a
    linear recurrence ``h <- A h`` they converge to ``log |eigenvalues of A| / dt``.
    """
    if jacobians.dim() != 4 or jacobians.shape[-1] != jacobians.shape[-2]:
        raise ValueError(f"lyapunov_exponents: jacobians must be [T, B, n, n], got {tuple(jacobians.shape)}")
    steps, batch, n, _ = jacobians.shape
    k = n if k is None else k
    if not 1 <= k <= n:
        raise ValueError(f"lyapunov_exponents: k must be in [1, {n}], got {k}")
    q = torch.eye(n, k, dtype=jacobians.dtype, device=jacobians.device).expand(batch, n, k)
    total = torch.zeros(batch, k, dtype=jacobians.dtype, device=jacobians.device)
    for jacobian in jacobians.unbind(0):
        q, r = torch.linalg.qr(jacobian @ q)
        total = total + torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs())
    exponents = total / (steps * dt)
    return exponents.sort(dim=-1, descending=True).values


def finite_time_lyapunov(
    step: Step | nn.Module, inputs: Tensor, initial: Tensor | None = None, k: int | None = None, *, dt: float = 1.0
) -> Tensor:
    """:func:`lyapunov_exponents` along the noise-free trajectory of ``step``, or of layer 0 of a module.

    ``inputs`` ``[T, B, I]``; ``initial`` ``[B, n]``: required for a step function, zeros by default for a module
    (``n = H``, ``2H`` for an LSTM).
    """
    if isinstance(step, nn.Module):
        if initial is None:
            width = int(getattr(step, "hidden_size")) * (2 if getattr(step, "mode", "") == "LSTM" else 1)  # noqa: B009
            initial = inputs.new_zeros(inputs.shape[1], width)
        step = recurrent_step(step)
    elif initial is None:
        raise ValueError("finite_time_lyapunov: initial=[B, n] is required with a step function")
    return lyapunov_exponents(state_jacobians(step, inputs, initial), k, dt=dt)


# ============================================================================================ margins


def input_output_jacobian_norms(fn: Callable[[Tensor], Tensor], inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Spectral norms of the input-output Jacobian of ``fn`` per input step and for the whole sequence.

    Args:
        fn: ``fn(inputs [T, B, I]) -> outputs [B, C]`` (e.g. the logits at the last step), noise-free.
        inputs: ``[T, B, I]``.

    Returns:
        ``(per_step [B, T], full [B])``: ``||d y / d x_k||_2`` and ``||d y / d x||_2`` over the flattened
        sequence. ``C`` backward passes (samples are assumed independent).
    """
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        if y.dim() != 2 or y.shape[0] != x.shape[1]:
            raise ValueError(
                f"input_output_jacobian_norms: fn must return [B, C] with B = {x.shape[1]}, got {tuple(y.shape)}"
            )
        rows = [torch.autograd.grad(y[:, c].sum(), x, retain_graph=True)[0] for c in range(y.shape[1])]
    jac = torch.stack(rows).permute(2, 1, 0, 3)  # [B, T, C, I]
    per_step = torch.linalg.matrix_norm(jac, ord=2)
    full = torch.linalg.matrix_norm(jac.permute(0, 2, 1, 3).reshape(jac.shape[0], jac.shape[2], -1), ord=2)
    return per_step, full


def output_margins(logits: Tensor, targets: Tensor) -> Tensor:
    """``gamma_out = logit[target] - max_{j != target} logit[j]`` per sample: ``[B]`` (``> 0``: correct)."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            "output_margins: expected logits [B, C] and targets [B], got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    true = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return true - others.amax(dim=1)


@dataclass(frozen=True)
class MarginReport:
    """Per-sample ``[B]``: output margin, Jacobian norm over the whole input sequence, and the first-order input
    margin ``radius = margin / (sqrt(2) * jacobian_norm)`` (``docs/method.md``; a local estimate, a certified
    bound needs the sup of the norm over the neighbourhood)."""

    margin: Tensor
    jacobian_norm: Tensor
    radius: Tensor


def margin_report(fn: Callable[[Tensor], Tensor], inputs: Tensor, targets: Tensor) -> MarginReport:
    """:func:`output_margins` and :func:`input_output_jacobian_norms` of ``fn`` at ``inputs`` ``[T, B, I]``."""
    with torch.no_grad():
        margin = output_margins(fn(inputs), targets)
    _, full = input_output_jacobian_norms(fn, inputs)
    return MarginReport(margin, full, margin / (math.sqrt(2.0) * full))


# ============================================================================================ Monte Carlo


def noise_gap(model: nn.Module, closure: Callable[[], Tensor], *, antithetic: bool = True) -> tuple[float, float]:
    """Monte Carlo ``E[loss with the configured noise] - loss without noise`` and its standard error.

    ``closure()`` runs ``model`` and returns per-sample losses (any shape, e.g. ``reduction="none"``); batch
    many noise paths by repeating the inputs along the batch dimension (every row draws its own noise). The
    closure runs with noise forced on (``+xi``), on again with the negated draws (``-xi``, if ``antithetic``;
    a valid draw for every built-in scheme) and with noise off, the global RNG restored before each pass (one
    dropout mask for all three); the gap is averaged over all elements. The standard error treats elements as
    independent; pooling different samples makes it conservative.
    """
    devices = model_devices(model)
    rng = GlobalRng(devices)  # every pass draws the same dropout masks, if any
    with torch.no_grad():
        with noise_control(model, inject=True), recording(model) as tapes:
            noisy = closure().detach().double().flatten()
        if antithetic:
            negated: dict[str, NoiseTape] = {}
            for name, tape in tapes.items():
                negated[name] = NoiseTape()
                for draw in tape.draws:  # keys of the counter-based stream become their numbers, negated
                    numbers = key_tensor(draw, devices[0], torch.float32) if isinstance(draw, NoiseKey) else draw
                    negated[name].append(-numbers)
            rng.restore()
            with noise_control(model, inject=True), replaying(model, negated):
                noisy = 0.5 * (noisy + closure().detach().double().flatten())
        rng.restore()
        with noise_control(model, inject=False):
            clean = closure().detach().double().flatten()
    gap = noisy - clean
    return float(gap.mean()), float(gap.std() / math.sqrt(gap.numel()))
