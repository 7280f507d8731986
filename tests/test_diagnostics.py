"""Stability and margin diagnostics on cases with known answers (``docs/method.md``: stability and margins)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.diagnostics import (
    contraction_bound,
    finite_time_lyapunov,
    input_output_jacobian_norms,
    lyapunov_exponents,
    margin_report,
    noise_gap,
    output_margins,
    recurrent_step,
    spectral_norm,
    state_jacobians,
    state_trajectory,
    stochastic_shift,
    trajectory_contraction,
)

DTYPE = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def matrix_with_singular_values(values: list[float], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = len(values)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=DTYPE))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=DTYPE))
    return u @ torch.diag(torch.tensor(values, dtype=DTYPE)) @ v.T


def test_spectral_norm_by_power_iteration() -> None:
    w = matrix_with_singular_values([3.0, 2.5, 1.0, 0.1], seed=0)
    assert spectral_norm(w) == pytest.approx(3.0, rel=1e-8)
    generator = torch.Generator().manual_seed(1)
    for shape in [(7, 7), (5, 9), (9, 5)]:
        m = torch.randn(*shape, generator=generator, dtype=DTYPE)
        assert spectral_norm(m) == pytest.approx(float(torch.linalg.matrix_norm(m, ord=2)), rel=1e-6)
    assert spectral_norm(torch.zeros(3, 3)) == 0.0
    with pytest.raises(ValueError, match="2-D"):
        spectral_norm(torch.zeros(3))


def test_contraction_bound_with_known_spectra() -> None:
    """``A = -a I + S`` (``S`` skew) has ``lambda_max(A_sym) = -a``; ``W`` has top singular value 0.7."""
    generator = torch.Generator().manual_seed(2)
    free = torch.randn(5, 5, generator=generator, dtype=DTYPE)
    a = -1.2 * torch.eye(5, dtype=DTYPE) + (free - free.T)
    w = matrix_with_singular_values([0.7, 0.5, 0.3, 0.2, 0.1], seed=3)
    bound = contraction_bound(a, w, multiplicative=0.4)
    assert bound.lambda_max_sym == pytest.approx(-1.2, abs=1e-10)
    assert bound.weight_norm == pytest.approx(0.7, rel=1e-8)
    assert bound.deterministic == pytest.approx(-0.5, rel=1e-8) and bound.contractive
    assert bound.shift == pytest.approx(-0.08) and bound.stochastic == pytest.approx(-0.58, rel=1e-8)
    # a non-contractive drift that shared multiplicative noise stabilises (Mao-type criterion)
    unstable = contraction_bound(-0.1 * torch.eye(5, dtype=DTYPE), w, lipschitz=0.2, multiplicative=0.5)
    assert not unstable.contractive and unstable.stochastically_stable
    assert contraction_bound(a, w, lipschitz=2.0).deterministic == pytest.approx(-1.2 + 1.4, rel=1e-8)
    with pytest.raises(ValueError, match="square"):
        contraction_bound(torch.zeros(2, 3), w)


def test_stochastic_shift() -> None:
    assert stochastic_shift(0.2, 8, shared=True) == pytest.approx(-0.02)
    assert stochastic_shift(0.2, 1, shared=False) == pytest.approx(-0.02)  # one unit: the same as shared
    assert stochastic_shift(0.2, 2, shared=False) == pytest.approx(0.0)
    assert stochastic_shift(0.2, 8, shared=False) == pytest.approx(0.04 * (0.5 - 1 / 8))
    assert stochastic_shift(0.0, 8) == 0.0
    with pytest.raises(ValueError, match="multiplicative"):
        stochastic_shift(-1.0, 3)


def test_nrnn_trajectory_log_norm_is_below_the_contraction_bound() -> None:
    """For the paper's cell the Euler-step Jacobian is ``I + d (alpha A + diag(a') W)``, so the trajectory's
    ``max mu_2((J - I)/d)`` must not exceed ``lambda_max(alpha A_sym) + ||W||_2``; with tanh' < 1 it is below."""
    from nrnn_plugin.layers.nrnn import NRNN

    torch.manual_seed(4)
    layer = NRNN(3, 6, alpha=1.0, beta=0.6, gamma_A=0.5, gamma_W=0.2, dt=0.1, init_std=4.0).to(DTYPE)
    a, w = layer.matrices()
    bound = contraction_bound(layer.alpha * a, w)
    x = torch.randn(20, 4, 3, dtype=DTYPE)
    jac = state_jacobians(recurrent_step(layer), x, torch.zeros(4, 6, dtype=DTYPE))
    report = trajectory_contraction(jac, dt=0.1)
    assert torch.all(report.log_norm <= bound.deterministic + 1e-10)
    assert float(report.log_norm.max()) > bound.lambda_max_sym  # the tanh part is seen, not only A
    # the step function reproduces the layer's own forward
    states = state_trajectory(recurrent_step(layer), x, torch.zeros(4, 6, dtype=DTYPE))
    assert torch.allclose(states[1:], layer(x)[0], atol=1e-12)


def positive_relu_rnn() -> nn.RNN:
    """relu RNN with non-negative weights, bias and inputs: the recursion is ``h <- W_hh h + (W_ih x + b)``."""
    torch.manual_seed(5)
    rnn = nn.RNN(2, 4, nonlinearity="relu").to(DTYPE)
    with torch.no_grad():
        for p in rnn.parameters():
            p.abs_()
        rnn.weight_hh_l0.mul_(0.4)
    return rnn


def test_lyapunov_exponents_of_a_linear_recurrence() -> None:
    """For ``h <- W h`` (linear region) the exponents are ``log |eigenvalues of W|``; the top one is the log
    spectral radius. 300 steps: the finite-time error is O(log(cond)/T)."""
    rnn = positive_relu_rnn()
    x = torch.rand(300, 3, 2, dtype=DTYPE)
    exponents = finite_time_lyapunov(rnn, x)
    expected = torch.linalg.eigvals(rnn.weight_hh_l0.detach()).abs().log().sort(descending=True).values
    assert exponents.shape == (3, 4)
    assert torch.allclose(exponents, expected.expand(3, 4), atol=0.02)
    assert torch.allclose(exponents[:, 0], expected[0].expand(3), atol=5e-3)
    # k < n exponents and a time step
    top = lyapunov_exponents(state_jacobians(recurrent_step(rnn), x, torch.zeros(3, 4, dtype=DTYPE)), 2, dt=0.5)
    assert torch.allclose(top, 2.0 * exponents[:, :2], atol=1e-10)


def test_lyapunov_exponents_of_rotations_and_known_diagonal() -> None:
    generator = torch.Generator().manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator, dtype=DTYPE))
    jac = q.expand(50, 2, 5, 5)
    assert torch.allclose(lyapunov_exponents(jac), torch.zeros(2, 5, dtype=DTYPE), atol=1e-12)
    d = torch.diag(torch.tensor([2.0, 0.5, -1.5], dtype=DTYPE))
    expected = torch.tensor([math.log(2.0), math.log(1.5), math.log(0.5)], dtype=DTYPE)
    assert torch.allclose(lyapunov_exponents(d.expand(10, 1, 3, 3))[0], expected, atol=1e-12)
    with pytest.raises(ValueError, match=r"\[T, B, n, n\]"):
        lyapunov_exponents(torch.zeros(3, 3))


def test_trajectory_contraction_of_a_known_step() -> None:
    """``J = diag(0.5, 0.9)`` at every step: ``mu_2((J - I)/dt) = -0.1/dt``, ``||J||_2 = 0.9``."""
    jac = torch.diag(torch.tensor([0.5, 0.9], dtype=DTYPE)).expand(7, 3, 2, 2)
    report = trajectory_contraction(jac, dt=0.5, multiplicative=0.2)
    assert torch.allclose(report.log_norm, torch.full((3,), -0.2, dtype=DTYPE))
    assert torch.allclose(report.step_norm, torch.full((3,), 0.9, dtype=DTYPE))
    assert report.shift == pytest.approx(-0.02) and torch.allclose(report.stochastic, report.log_norm - 0.02)


@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
def test_recurrent_step_reproduces_torch_modules(kind: str) -> None:
    torch.manual_seed(7)
    module = getattr(nn, kind)(3, 4).to(DTYPE)
    x = torch.randn(6, 2, 3, dtype=DTYPE)
    width = 8 if kind == "LSTM" else 4
    states = state_trajectory(recurrent_step(module), x, torch.zeros(2, width, dtype=DTYPE))
    assert torch.allclose(states[1:, :, :4], module(x)[0], atol=1e-12)
    jac = state_jacobians(recurrent_step(module), x, torch.zeros(2, width, dtype=DTYPE))
    assert jac.shape == (6, 2, width, width)
    # one sample's Jacobian at step 2 against torch.func
    step = recurrent_step(module)
    single = torch.func.jacrev(lambda h: step(h[None], x[2, :1])[0])(states[2, 0])
    assert torch.allclose(jac[2, 0], single, atol=1e-12)
    with pytest.raises(TypeError, match="pass a step function"):
        recurrent_step(nn.Linear(2, 2))


def test_input_output_jacobian_of_a_linear_model() -> None:
    """``h_{k+1} = A h_k + U x_k``, ``y = V h_T``: ``d y / d x_k = V A^(T-1-k) U``."""
    generator = torch.Generator().manual_seed(8)
    a = 0.5 * torch.randn(4, 4, generator=generator, dtype=DTYPE)
    u = torch.randn(4, 2, generator=generator, dtype=DTYPE)
    v = torch.randn(3, 4, generator=generator, dtype=DTYPE)

    def fn(x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[1], 4)
        for xk in x.unbind(0):
            h = h @ a.T + xk @ u.T
        return h @ v.T

    x = torch.randn(5, 2, 2, generator=generator, dtype=DTYPE)
    per_step, full = input_output_jacobian_norms(fn, x)
    blocks = [v @ torch.linalg.matrix_power(a, 4 - k) @ u for k in range(5)]
    expected = torch.stack([torch.linalg.matrix_norm(b, ord=2) for b in blocks])
    assert torch.allclose(per_step, expected.expand(2, 5), atol=1e-12)
    expected_full = torch.linalg.matrix_norm(torch.cat(blocks, dim=1), ord=2)
    assert torch.allclose(full, expected_full.expand(2), atol=1e-12)


def test_output_margins_and_margin_report() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]], dtype=DTYPE)
    margins = output_margins(logits, torch.tensor([0, 2]))
    assert torch.allclose(margins, torch.tensor([1.5, -0.1], dtype=DTYPE))
    # a linear classifier of the summed inputs: J is the same for every sample, radius = margin / (sqrt2 ||J||)
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=DTYPE)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x.sum(0) @ weight.T

    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.0], [0.0, 0.5]]], dtype=DTYPE)  # [T=2, B=2, I=2]
    report = margin_report(fn, x, torch.tensor([0, 1]))
    norm = float(torch.linalg.matrix_norm(torch.cat([weight, weight], dim=1), ord=2))
    assert torch.allclose(report.jacobian_norm, torch.full((2,), norm, dtype=DTYPE))
    assert torch.allclose(report.radius, report.margin / (math.sqrt(2) * norm))
    assert torch.allclose(report.margin, output_margins(fn(x), torch.tensor([0, 1])))


def test_noise_gap_of_a_linear_model_with_quadratic_loss() -> None:
    """Additive Euler-Maruyama noise on an ``nn.RNN`` in its linear region with the loss ``||V h_T||^2``: the gap
    is exactly ``dt sa^2 sum_k ||V W^k||_F^2`` (no higher orders); the Monte Carlo estimate is within 4 s.e."""
    rnn = positive_relu_rnn()
    head = nn.Linear(4, 2, bias=False).to(DTYPE)
    sa, dt = 0.05, 0.5
    nrnn.register_noise(rnn, nrnn.NoiseConfig(additive=sa, dt=dt, seed=0))
    x = torch.rand(6, 2, 2, dtype=DTYPE).repeat(1, 4096, 1)
    mc, stderr = noise_gap(rnn, lambda: head(rnn(x)[0][-1]).pow(2).sum(-1))
    power, expected = torch.eye(4, dtype=DTYPE), 0.0
    for _ in range(6):
        expected += dt * sa**2 * float((head.weight.detach() @ power).pow(2).sum())
        power = rnn.weight_hh_l0.detach() @ power
    assert stderr < 0.05 * expected
    assert abs(mc - expected) < 4 * stderr
    # the antithetic pairing removes the first-order noise: a much smaller error than one-sided sampling
    _, one_sided = noise_gap(rnn, lambda: head(rnn(x)[0][-1]).pow(2).sum(-1), antithetic=False)
    assert stderr < 0.5 * one_sided


def test_state_jacobians_of_a_cell_module_used_with_noise_registered() -> None:
    """Diagnostics run on the noise-free map even when the module is noisy (in train mode)."""
    torch.manual_seed(9)
    gru = nn.GRU(2, 3).to(DTYPE)
    x = torch.randn(4, 2, 2, dtype=DTYPE)
    clean = state_jacobians(recurrent_step(gru), x, torch.zeros(2, 3, dtype=DTYPE))
    nrnn.register_noise(gru, nrnn.NoiseConfig(additive=0.5, seed=0))
    gru.train()
    noisy = state_jacobians(recurrent_step(gru), x, torch.zeros(2, 3, dtype=DTYPE))
    assert torch.equal(clean, noisy)
