"""The NRNN layer and cell: the paper's drift, nn.RNN interface parity, noise schemes against hand recursions.

References are written out independently of the implementation: ``A`` and ``W`` from their defining formula,
the recursion as a plain Python loop over time, packed sequences against running every sequence alone. All in
float64 so that a wrong term cannot hide in rounding.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import nrnn_plugin as nrnn
from nrnn_plugin.layers.nrnn import NRNN, NoisyNRNN, NoisyNRNNCell, NRNNCell
from nrnn_plugin.noise import FixedNoise
from nrnn_plugin.runtime import runtime_of

DTYPE = torch.float64
I, H, T, B = 3, 4, 6, 3
LENGTHS = torch.tensor([4, 6, 2])  # unsorted on purpose
ATOL = 1e-12


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _layer(**kwargs) -> NRNN:
    torch.manual_seed(0)
    kwargs.setdefault("dt", 0.3)  # large enough that every term matters at 1e-12
    kwargs.setdefault("init_std", 3.0)
    return NRNN(I, H, dtype=DTYPE, **kwargs)


def _structured(M: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    return beta * (M - M.T) + (1 - beta) * (M + M.T) - gamma * torch.eye(M.shape[0], dtype=M.dtype)


def _hand_recursion(
    model: NRNN, x: torch.Tensor, h0: torch.Tensor, noise=None, layer: int = 0, suffix: str | None = None
):
    """``h <- noise(t, h + d * (alpha A h + tanh(W h + U x + b)), h)`` with a Python loop; x: [T, B, I]."""
    sfx = suffix if suffix is not None else f"_l{layer}"
    U = getattr(model, "weight_ih" + sfx)
    b = getattr(model, "bias_ih" + sfx, None)
    A = _structured(getattr(model, "weight_B" + sfx), model.beta, model.gamma_A)
    W = _structured(getattr(model, "weight_C" + sfx), model.beta, model.gamma_W)
    d = torch.nn.functional.softplus(getattr(model, "step_raw" + sfx)) if model.learn_dt else model.dt
    h, outs = h0, []
    for t in range(x.shape[0]):
        pre = h @ W.T + x[t] @ U.T + (0 if b is None else b)
        psi = h + d * (model.alpha * (h @ A.T) + torch.tanh(pre))
        h = psi if noise is None else noise(t, psi, h)
        outs.append(h)
    return torch.stack(outs), h


# ---------------------------------------------------------------------------------------------- parameters


def test_structured_matrices_follow_the_definition():
    model = _layer(beta=0.6, gamma_A=0.2, gamma_W=0.05)
    A, W = model.matrices()
    torch.testing.assert_close(A, _structured(model.weight_B_l0, 0.6, 0.2), rtol=0, atol=ATOL)
    torch.testing.assert_close(W, _structured(model.weight_C_l0, 0.6, 0.05), rtol=0, atol=ATOL)


def test_init_std_is_divided_by_n():
    model = NRNN(2, 200, init_std=0.5)
    for name in ("weight_B_l0", "weight_C_l0"):
        std = getattr(model, name).std().item()
        assert abs(std - 0.5 / 200) < 0.03 * 0.5 / 200  # 40000 samples: relative error of the std ~0.4%


def test_antisymmetric_setting_has_no_symmetric_part_but_gamma():
    model = NRNN.antisymmetric(I, H, gamma=0.01, init_std=5.0, dtype=DTYPE)
    assert model.alpha == 0.0 and model.beta == 1.0
    A, W = model.matrices()
    for M in (A, W):
        torch.testing.assert_close((M + M.T) / 2, -0.01 * torch.eye(H, dtype=DTYPE), rtol=0, atol=ATOL)
        assert (M - M.T).abs().max() > 1e-3  # the skew part is not trivially zero
    # and the forward has no A h term: h + dt * tanh(W h + U x + b)
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    out, _ = model(x)
    expected, _ = _hand_recursion(model, x, torch.zeros(B, H, dtype=DTYPE))
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)
    with pytest.raises(TypeError, match="alpha"):
        NRNN.antisymmetric(I, H, alpha=1.0)


def test_lipschitz_constructor_is_the_plain_layer():
    model = NRNN.lipschitz(I, H, dt=0.1)
    assert type(model) is NRNN and model.alpha == 1.0 and not nrnn.is_noisy(model)


def test_learned_step_is_positive_starts_at_dt_and_trains():
    model = _layer(learn_dt=True, dt=0.05)
    torch.testing.assert_close(model.step_size(), torch.full((H,), 0.05, dtype=DTYPE), rtol=1e-12, atol=0)
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    out, _ = model(x)
    expected, _ = _hand_recursion(model, x, torch.zeros(B, H, dtype=DTYPE))
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)
    out.sum().backward()
    assert model.step_raw_l0.grad is not None and model.step_raw_l0.grad.abs().sum() > 0
    with torch.no_grad():
        model.step_raw_l0.fill_(-50.0)
    assert (model.step_size() > 0).all()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"dt": 0.0}, ValueError),
        ({"dt": -1.0}, ValueError),
        ({"init_std": 0}, ValueError),
        ({"learn_dt": 1}, TypeError),
        ({"dropout": 1.5}, ValueError),
        ({"batch_first": "yes"}, TypeError),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, error):
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        NRNN(I, H, **kwargs)


# ---------------------------------------------------------------------------------------------- nn.RNN interface


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_shapes_match_nn_rnn(num_layers, bidirectional, batch_first):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    ours, ref = NRNN(I, H, **kw), nn.RNN(I, H, **kw)
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    D = 2 if bidirectional else 1
    h0 = torch.randn(num_layers * D, B, H)
    for args in ((x,), (x, h0), (x[0] if batch_first else x[:, 0],), (x[0] if batch_first else x[:, 0], h0[:, 0])):
        (o1, h1), (o2, h2) = ours(*args), ref(*args)
        assert o1.shape == o2.shape and h1.shape == h2.shape


def test_batch_first_equals_time_major():
    model = _layer(num_layers=2)
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    out, h = model(x)
    model.batch_first = True
    out_bf, h_bf = model(x.transpose(0, 1))
    torch.testing.assert_close(out_bf.transpose(0, 1), out, rtol=0, atol=0)
    torch.testing.assert_close(h_bf, h, rtol=0, atol=0)


def test_single_layer_matches_hand_recursion_with_initial_state_and_gradients():
    model = _layer(beta=0.8, gamma_A=0.1, gamma_W=0.2)
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen(), requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=DTYPE, generator=_gen(1), requires_grad=True)
    out, h_n = model(x, h0)
    expected, h_last = _hand_recursion(model, x, h0[0])
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(h_n[0], h_last, rtol=0, atol=ATOL)
    # gradients of the implementation against those of the hand recursion
    params = [x, h0, *model.parameters()]
    g_impl = torch.autograd.grad((out.sin() * 3).sum() + h_n.cos().sum(), params)
    g_ref = torch.autograd.grad((expected.sin() * 3).sum() + h_last.cos().sum(), params)
    for a, b in zip(g_impl, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_multi_layer_feeds_each_layer_the_previous_output():
    model = _layer(num_layers=2)
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    h0 = torch.randn(2, B, H, dtype=DTYPE, generator=_gen(1))
    out, h_n = model(x, h0)
    first, h1 = _hand_recursion(model, x, h0[0], layer=0)
    second, h2 = _hand_recursion(model, first, h0[1], layer=1)
    torch.testing.assert_close(out, second, rtol=0, atol=ATOL)
    torch.testing.assert_close(h_n, torch.stack([h1, h2]), rtol=0, atol=ATOL)


def test_bidirectional_reverse_direction_reads_the_sequence_backwards():
    model = _layer(bidirectional=True)
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    out, h_n = model(x)
    fwd, h_f = _hand_recursion(model, x, torch.zeros(B, H, dtype=DTYPE), suffix="_l0")
    bwd, h_b = _hand_recursion(model, x.flip(0), torch.zeros(B, H, dtype=DTYPE), suffix="_l0_reverse")
    torch.testing.assert_close(out, torch.cat([fwd, bwd.flip(0)], dim=2), rtol=0, atol=ATOL)
    torch.testing.assert_close(h_n, torch.stack([h_f, h_b]), rtol=0, atol=ATOL)


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_equals_each_sequence_alone(enforce_sorted, bidirectional):
    model = _layer(num_layers=2, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen(), requires_grad=True)
    h0 = torch.randn(2 * D, B, H, dtype=DTYPE, generator=_gen(1), requires_grad=True)
    lengths = LENGTHS.sort(descending=True).values if enforce_sorted else LENGTHS
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out_packed, h_n = model(packed, h0)
    out, _ = pad_packed_sequence(out_packed)
    loss_packed = (out.sin()).sum() + (h_n * 2).cos().sum()
    loss_alone = 0.0
    for i, n in enumerate(lengths.tolist()):
        o_i, h_i = model(x[:n, i : i + 1], h0[:, i : i + 1])
        torch.testing.assert_close(out[:n, i : i + 1], o_i, rtol=0, atol=ATOL)
        assert (out[n:, i] == 0).all()
        torch.testing.assert_close(h_n[:, i : i + 1], h_i, rtol=0, atol=ATOL)
        loss_alone = loss_alone + o_i.sin().sum() + (h_i * 2).cos().sum()
    params = [x, h0, *model.parameters()]
    for a, b in zip(torch.autograd.grad(loss_packed, params), torch.autograd.grad(loss_alone, params)):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_unbatched_equals_batch_of_one():
    model = _layer(num_layers=2)
    x = torch.randn(T, I, dtype=DTYPE, generator=_gen())
    h0 = torch.randn(2, H, dtype=DTYPE, generator=_gen(1))
    out, h = model(x, h0)
    out_b, h_b = model(x.unsqueeze(1), h0.unsqueeze(1))
    torch.testing.assert_close(out, out_b.squeeze(1), rtol=0, atol=ATOL)
    torch.testing.assert_close(h, h_b.squeeze(1), rtol=0, atol=ATOL)


def test_drop_in_replacement_inside_existing_code():
    class Classifier(nn.Module):
        def __init__(self, rnn: nn.Module) -> None:
            super().__init__()
            self.rnn, self.head = rnn, nn.Linear(H, 2)

        def forward(self, x):
            _, h = self.rnn(x)
            return self.head(h[-1])

    x = torch.randn(B, T, I)
    for rnn in (nn.GRU(I, H, num_layers=2, batch_first=True), NRNN(I, H, num_layers=2, batch_first=True, dt=0.1)):
        assert Classifier(rnn)(x).shape == (B, 2)


def test_input_errors_name_the_argument():
    model = NRNN(I, H)
    with pytest.raises(ValueError, match="input_size=3"):
        model(torch.randn(T, B, I + 1))
    with pytest.raises(ValueError, match="hx"):
        model(torch.randn(T, B, I), torch.zeros(2, B, H))
    with pytest.raises(ValueError, match="2-D .*3-D"):
        model(torch.randn(T))


# ---------------------------------------------------------------------------------------------- cell


def test_cell_matches_one_layer_step_and_noise():
    torch.manual_seed(0)
    cell = NRNNCell(I, H, dt=0.3, init_std=3.0, learn_dt=True, dtype=DTYPE)
    layer = _layer(learn_dt=True)
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    x = torch.randn(1, B, I, dtype=DTYPE, generator=_gen())
    h = torch.randn(B, H, dtype=DTYPE, generator=_gen(1))
    torch.testing.assert_close(cell(x[0], h), layer(x, h.unsqueeze(0))[1][0], rtol=0, atol=ATOL)
    torch.testing.assert_close(cell(x[0, 0], h[0]), cell(x[0], h)[0], rtol=0, atol=ATOL)

    nrnn.register_noise(cell, nrnn.NoiseConfig(additive=0.3, dt=0.5))
    assert type(cell) is NoisyNRNNCell
    draw = torch.randn(B, H, dtype=DTYPE, generator=_gen(2))
    runtime_of(cell).source = FixedNoise([draw])
    cell.train()
    expected = layer(x, h.unsqueeze(0))[1][0] + math.sqrt(0.5) * 0.3 * draw
    torch.testing.assert_close(cell(x[0], h), expected, rtol=0, atol=ATOL)
    cell.eval()
    torch.testing.assert_close(cell(x[0], h), layer(x, h.unsqueeze(0))[1][0], rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------- noise


def _noisy(config: nrnn.NoiseConfig, draws: list[torch.Tensor], **kwargs) -> NRNN:
    model = nrnn.register_noise(_layer(**kwargs), config)
    assert type(model) is NoisyNRNN
    runtime_of(model).source = FixedNoise(draws)
    return model.train()


def test_euler_maruyama_additive_and_multiplicative_against_hand_recursion():
    sa, sm, dt = 0.3, 0.2, 0.5
    draw = torch.randn(1, T * B, 2 * H, dtype=DTYPE, generator=_gen(3))
    model = _noisy(nrnn.NoiseConfig(additive=sa, multiplicative=sm, dt=dt), [draw])
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    out, _ = model(x)
    xi = draw[0].view(T, B, 2 * H)

    def noise(t, psi, h):  # Ito: the multiplicative part uses the state before the step
        return psi + math.sqrt(dt) * (sa * xi[t, :, :H] + sm * h * xi[t, :, H:])

    expected, _ = _hand_recursion(model, x, torch.zeros(B, H, dtype=DTYPE), noise)
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)


def test_shared_multiplicative_uses_one_factor_per_sample():
    sm = 0.4
    draw = torch.randn(1, T * B, 1, dtype=DTYPE, generator=_gen(3))
    model = _noisy(nrnn.NoiseConfig(multiplicative=sm, shared_multiplicative=True), [draw])
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    xi = draw[0].view(T, B, 1)
    expected, _ = _hand_recursion(model, x, torch.zeros(B, H, dtype=DTYPE), lambda t, psi, h: psi + sm * h * xi[t])
    torch.testing.assert_close(model(x)[0], expected, rtol=0, atol=ATOL)


def test_milstein_against_hand_recursion():
    sa, sm, dt = 0.3, 0.2, 0.5
    draw = torch.randn(1, T * B, H, dtype=DTYPE, generator=_gen(3))
    model = _noisy(nrnn.NoiseConfig(additive=sa, multiplicative=sm, dt=dt, scheme="milstein"), [draw])
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    xi = draw[0].view(T, B, H)

    def noise(t, psi, h):
        s = sa + sm * h
        return psi + math.sqrt(dt) * s * xi[t] + 0.5 * dt * sm * s * (xi[t] ** 2 - 1)

    expected, _ = _hand_recursion(model, x, torch.zeros(B, H, dtype=DTYPE), noise)
    torch.testing.assert_close(model(x)[0], expected, rtol=0, atol=ATOL)


def test_reference_scheme_is_the_research_code_update():
    """``h + d * m * f(h, x) + sa * xi`` with ``m = 1 - sm * U``, ``U ~ Uniform[0, 1]`` (here ``Phi(z)``)."""
    sa, sm = 0.3, 0.2
    draw = torch.randn(1, T * B, 2 * H, dtype=DTYPE, generator=_gen(3))
    model = _noisy(nrnn.NoiseConfig(additive=sa, multiplicative=sm, scheme="reference"), [draw], learn_dt=True)
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    xi = draw[0].view(T, B, 2 * H)
    m = 1 - sm * torch.special.ndtr(xi[..., H:])
    assert m.min() >= 1 - sm and m.max() <= 1

    def noise(t, psi, h):
        return h + m[t] * (psi - h) + sa * xi[t, :, :H]  # psi - h = d * f

    expected, _ = _hand_recursion(model, x, torch.zeros(B, H, dtype=DTYPE), noise)
    out, _ = model(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)
    # gradients reach the learned step through d * m * f
    out.sum().backward()
    assert model.step_raw_l0.grad.abs().sum() > 0


def test_one_draw_per_layer_and_direction_block():
    """Two layers, bidirectional: exactly two draws of shape [2, rows, H] (FixedNoise fails on any other call)."""
    sa = 0.2
    draws = [torch.randn(2, T * B, H, dtype=DTYPE, generator=_gen(k)) for k in (3, 4)]
    model = _noisy(nrnn.NoiseConfig(additive=sa), draws, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    out, h_n = model(x)
    zero = torch.zeros(B, H, dtype=DTYPE)

    def additive(draw):
        return lambda t, psi, h: psi + sa * draw.view(T, B, H)[t]

    def reversed_additive(draw):  # the backward direction visits time step T-1-t at its t-th step
        return lambda t, psi, h: psi + sa * draw.view(T, B, H)[T - 1 - t]

    f0, _ = _hand_recursion(model, x, zero, additive(draws[0][0]), suffix="_l0")
    b0, _ = _hand_recursion(model, x.flip(0), zero, reversed_additive(draws[0][1]), suffix="_l0_reverse")
    mid = torch.cat([f0, b0.flip(0)], dim=2)
    f1, _ = _hand_recursion(model, mid, zero, additive(draws[1][0]), suffix="_l1")
    b1, _ = _hand_recursion(model, mid.flip(0), zero, reversed_additive(draws[1][1]), suffix="_l1_reverse")
    torch.testing.assert_close(out, torch.cat([f1, b1.flip(0)], dim=2), rtol=0, atol=ATOL)
    with pytest.raises(RuntimeError, match="draw #3"):
        model(x)  # a second forward would need new draws: proves only two were taken


def test_packed_noise_rows_follow_the_packed_layout():
    sa = 0.5
    lengths = LENGTHS.sort(descending=True).values
    rows = int(lengths.sum())
    draw = torch.randn(1, rows, H, dtype=DTYPE, generator=_gen(3))
    model = _noisy(nrnn.NoiseConfig(additive=sa), [draw])
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    packed = pack_padded_sequence(x, lengths)
    out, _ = pad_packed_sequence(model(packed)[0])
    # row r of the draw belongs to (step t, sample b) in packed order
    per_step = torch.split(draw[0], packed.batch_sizes.tolist())
    for b, n in enumerate(lengths.tolist()):
        noise = lambda t, psi, h, b=b: psi + sa * per_step[t][b : b + 1]  # noqa: E731
        expected, _ = _hand_recursion(model, x[:n, b : b + 1], torch.zeros(1, H, dtype=DTYPE), noise)
        torch.testing.assert_close(out[:n, b : b + 1], expected, rtol=0, atol=ATOL)


def test_noise_only_in_training_and_swap_is_reversible():
    plain = _layer(num_layers=2)
    model = copy.deepcopy(plain)
    keys = list(plain.state_dict())
    nrnn.register_noise(model, nrnn.NoiseConfig(additive=0.1, multiplicative=0.1, seed=0))
    assert list(model.state_dict()) == keys
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen())
    clean, _ = plain(x)
    model.eval()
    torch.testing.assert_close(model(x)[0], clean, rtol=0, atol=0)
    model.train()
    assert (model(x)[0] - clean).abs().max() > 1e-3
    with nrnn.runtime.noise_control(model, inject=False):
        torch.testing.assert_close(model(x)[0], clean, rtol=0, atol=0)
    nrnn.remove_noise(model)
    assert type(model) is NRNN and not nrnn.is_noisy(model)
    torch.testing.assert_close(model(x)[0], clean, rtol=0, atol=0)


def test_target_c_is_rejected():
    with pytest.raises(ValueError, match="target"):
        nrnn.register_noise(NRNN(I, H), nrnn.NoiseConfig(additive=0.1, target="c"))


def test_seeded_noise_is_reproducible():
    x = torch.randn(T, B, I, generator=_gen())
    outs = []
    for _ in range(2):
        model = nrnn.register_noise(NRNN(I, H, dt=0.1), nrnn.NoiseConfig(additive=0.1, seed=7)).train()
        torch.manual_seed(1)
        model.load_state_dict(NRNN(I, H, dt=0.1).state_dict())
        outs.append(model(x)[0])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- sequence kernel


KERNEL_CASES = {
    "deterministic": (None, {}),
    "no_linear_part": (None, {"alpha": 0.0, "beta": 1.0}),
    "em_add_mult": (nrnn.NoiseConfig(additive=0.3, multiplicative=0.2, dt=0.5), {}),
    "em_shared": (nrnn.NoiseConfig(additive=0.1, multiplicative=0.3, shared_multiplicative=True), {}),
    "milstein": (nrnn.NoiseConfig(additive=0.3, multiplicative=0.2, scheme="milstein"), {"alpha": 0.0}),
    "reference": (nrnn.NoiseConfig(additive=0.3, multiplicative=0.2, scheme="reference"), {}),
    "reference_dt": (nrnn.NoiseConfig(additive=0.3, scheme="reference", dt=0.7), {}),
}


def _forward_and_grads(model: NRNN, x, h0):
    out, h_n = model(x, h0)
    loss = (out * torch.linspace(-1, 2, out.shape[-1], dtype=DTYPE)).sin().sum() + (h_n * 3).cos().sum()
    inputs = [x, h0, *model.parameters()]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)  # weight_B is unused when alpha = 0
    return [out, h_n, *(torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads))]


@pytest.mark.parametrize("case", list(KERNEL_CASES))
@pytest.mark.parametrize("learn_dt", [False, True])
def test_sequence_kernel_matches_the_autograd_unroll(case, learn_dt):
    """Padded input runs NRNNSequence (hand-written backward); use_kernel('reference') the autograd unroll."""
    from nrnn_plugin.layers import use_kernel

    config, kwargs = KERNEL_CASES[case]
    base = _layer(num_layers=2, bidirectional=True, learn_dt=learn_dt, **kwargs)
    x = torch.randn(T, B, I, dtype=DTYPE, generator=_gen(), requires_grad=True)
    h0 = torch.randn(4, B, H, dtype=DTYPE, generator=_gen(1), requires_grad=True)
    results = []
    for kernel in ("auto", "reference"):
        model = copy.deepcopy(base)
        if config is not None:
            nrnn.register_noise(model, config)
            probe = torch.Generator().manual_seed(5)
            runtime_of(model).source = FixedNoise(
                [
                    torch.randn(2, T * B, w, dtype=DTYPE, generator=probe)
                    for w in [runtime_of(model).diffusion().width(H)] * 2
                ]
            )
        with use_kernel(kernel):
            results.append(_forward_and_grads(model.train(), x, h0))
    for fast, ref in zip(*results):
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)


def test_sequence_kernel_gradcheck_and_mean_coefficients():
    from nrnn_plugin.layers.nrnn_kernel import NRNNSequence

    g = _gen(7)
    xw = torch.randn(4, 2, 3, dtype=DTYPE, generator=g, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=DTYPE, generator=g, requires_grad=True)
    kernel = torch.randn(6, 3, dtype=DTYPE, generator=g, requires_grad=True)
    step = torch.rand(3, dtype=DTYPE, generator=g).add(0.1).requires_grad_(True)
    gate = torch.rand(4, 2, 3, dtype=DTYPE, generator=g) + 0.5
    mult = torch.randn(4, 2, 1, dtype=DTYPE, generator=g)
    add = torch.randn(4, 2, 3, dtype=DTYPE, generator=g)
    fn = lambda *a: NRNNSequence.apply(*a[:4], True, gate, mult, add)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (xw, h0, kernel, step))
    fn = lambda *a: NRNNSequence.apply(*a[:3], 0.3, False, 0.9, 0.1, None)  # numbers: the mean coefficients  # noqa: E731
    assert torch.autograd.gradcheck(fn, (xw, h0, kernel[:3]))


def test_coefficients_that_require_grad_fall_back_to_autograd():
    model = nrnn.register_noise(_layer(), nrnn.NoiseConfig(additive=0.3, scheme="reference", multiplicative=0.2))
    runtime_of(model).source = FixedNoise([torch.randn(1, T * B, 2 * H, dtype=DTYPE, generator=_gen(3))])
    scale = torch.tensor(0.5, dtype=DTYPE, requires_grad=True)
    with nrnn.runtime.noise_control(model, scale=scale):
        out, _ = model.train()(torch.randn(T, B, I, dtype=DTYPE, generator=_gen()))
    assert "NRNNSequenceBackward" not in type(out.grad_fn).__name__  # the autograd unroll ran
    (grad,) = torch.autograd.grad(out.sum(), scale)
    assert grad.abs() > 0


def test_public_name_and_explicit_regularizer_estimators_agree_on_nrnn():
    """The NRNN works with the core's regularizer: the jet estimate (64 probes) is near the exact oracle."""
    assert nrnn.NRNN is NRNN
    model = nrnn.register_noise(
        _layer(learn_dt=True, batch_first=True), nrnn.NoiseConfig(additive=0.1, multiplicative=0.1, seed=0)
    )
    x = torch.randn(B, T, I, dtype=DTYPE, generator=_gen())

    def closure():
        _, h = model(x)
        return (h**2).sum().sin()

    exact = nrnn.explicit_regularizer(model, closure, estimator="exact")
    jet = nrnn.explicit_regularizer(model, closure, estimator="jet", probes=64)
    assert exact.abs() > 1e-3
    assert abs(jet.item() - exact.item()) < 0.1 * abs(exact.item())
