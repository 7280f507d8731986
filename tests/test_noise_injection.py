"""Known injected noise against hand-computed recursions, noise statistics, seeds and ranks.

The hand references below are written from ``docs/method.md`` (schemes) with PyTorch's own cells (``nn.LSTMCell``,
``nn.GRUCell``, ``nn.RNNCell``) and a per-step Python loop; they share no code with the library's kernels.
The draws the library asks for are recorded by :class:`GeneratedNoise` and re-read here by their documented
layout: one draw ``[directions, rows, width]`` per layer, rows time-major (``t * B + b`` for padded input),
columns ``[h-noise | c-noise]`` for ``target="both"`` and, within a state, ``[additive H | multiplicative H or 1]``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from nrnn_testing import GeneratedNoise
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.layers import use_kernel
from nrnn_plugin.noise import FixedNoise, derive_seed
from nrnn_plugin.runtime import runtime_of

DTYPE = torch.float64
I, H, T, B = 3, 5, 6, 4


def _cell_for(module: nn.RNNBase, layer: int, direction: int) -> nn.Module:
    """PyTorch's own cell carrying the weights of one layer/direction of ``module``."""
    in_size = module.input_size if layer == 0 else module.hidden_size * (2 if module.bidirectional else 1)
    if module.mode == "LSTM":
        cell = nn.LSTMCell(in_size, module.hidden_size)
    elif module.mode == "GRU":
        cell = nn.GRUCell(in_size, module.hidden_size)
    else:
        cell = nn.RNNCell(in_size, module.hidden_size, nonlinearity=module.nonlinearity)
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(module, name + suffix))
    return cell.to(DTYPE)


def _scheme_step(scheme: str, psi, prev, xi_add, xi_mult, sa, sm, dt):
    """The schemes of ``docs/method.md``, written out: the noisy state from the clean step ``psi`` and ``prev``."""
    if scheme == "euler_maruyama":
        out = psi.clone()
        if sa:
            out = out + math.sqrt(dt) * sa * xi_add
        if sm:
            out = out + math.sqrt(dt) * sm * prev * xi_mult
        return out
    if scheme == "milstein":
        xi = xi_add  # one Gaussian per unit drives both parts
        s = sa + sm * prev
        return psi + math.sqrt(dt) * s * xi + 0.5 * dt * s * sm * (xi**2 - 1)
    # reference: h + dt * m * (Psi - h) + sa * xi, m = 1 - sm * U, U = Phi(z)
    m = 1 - sm * 0.5 * (1 + torch.erf(xi_mult / math.sqrt(2))) if sm else torch.ones_like(psi)
    out = prev + dt * m * (psi - prev)
    return out + sa * xi_add if sa else out


def _split_draw(draw_rows, width_h, sa, sm, scheme, shared):
    """Split one state's columns into (additive, multiplicative) Gaussians."""
    if scheme == "milstein":
        return draw_rows, None
    add_w = H if sa else 0
    return draw_rows[:, :add_w], (draw_rows[:, add_w:] if sm else None)


def _hand_reference(module, x, draws, cfg, h0=None, c0=None):
    """Noisy forward of a padded, time-major batch with PyTorch cells and the recorded draws."""
    sa, sm, dt, scheme = cfg.additive, cfg.multiplicative, cfg.dt, cfg.scheme
    is_lstm = module.mode == "LSTM"
    directions = 2 if module.bidirectional else 1
    targets = ("h",) if not is_lstm or cfg.target == "h" else (("c",) if cfg.target == "c" else ("h", "c"))
    per_target = draws[0].shape[-1] // len(targets)
    layer_input = x
    finals_h, finals_c = [], []
    for layer in range(module.num_layers):
        outs = []
        for d in range(directions):
            cell = _cell_for(module, layer, d)
            draw = draws[layer][d]
            h = torch.zeros(B, H, dtype=DTYPE) if h0 is None else h0[layer * directions + d]
            c = torch.zeros(B, H, dtype=DTYPE) if c0 is None else c0[layer * directions + d]
            out = [None] * T
            for t in range(T - 1, -1, -1) if d else range(T):
                rows = draw[t * B : (t + 1) * B]
                noise = {tg: rows[:, i * per_target : (i + 1) * per_target] for i, tg in enumerate(targets)}
                if is_lstm:
                    if "c" in noise:
                        gates = nn.functional.linear(
                            layer_input[t], cell.weight_ih, cell.bias_ih
                        ) + nn.functional.linear(h, cell.weight_hh, cell.bias_hh)
                        i_g, f_g, g_g, o_g = gates.chunk(4, 1)
                        c_clean = torch.sigmoid(f_g) * c + torch.sigmoid(i_g) * torch.tanh(g_g)
                        xa, xm = _split_draw(noise["c"], per_target, sa, sm, scheme, cfg.shared_multiplicative)
                        c_new = _scheme_step(scheme, c_clean, c, xa, xm, sa, sm, dt)
                        h_clean = torch.sigmoid(o_g) * torch.tanh(c_new)
                    else:
                        h_clean, c_new = cell(layer_input[t], (h, c))
                    c = c_new
                else:
                    h_clean = cell(layer_input[t], h)
                if "h" in noise:
                    xa, xm = _split_draw(noise["h"], per_target, sa, sm, scheme, cfg.shared_multiplicative)
                    h = _scheme_step(scheme, h_clean, h, xa, xm, sa, sm, dt)
                else:
                    h = h_clean
                out[t] = h
            outs.append(torch.stack(out))
            finals_h.append(h)
            finals_c.append(c)
        layer_input = torch.cat(outs, dim=2)
    return layer_input, torch.stack(finals_h), torch.stack(finals_c)


SCHEME_CASES = [
    ("euler_maruyama", 0.3, 0.0, 1.0, False),
    ("euler_maruyama", 0.0, 0.4, 0.5, False),
    ("euler_maruyama", 0.3, 0.4, 0.5, False),
    ("euler_maruyama", 0.3, 0.4, 0.5, True),
    ("milstein", 0.3, 0.4, 0.5, False),
    ("milstein", 0.3, 0.0, 0.5, False),
    ("reference", 0.3, 0.0, 1.0, False),
    ("reference", 0.3, 0.4, 0.7, False),
    ("reference", 0.0, 0.4, 1.0, True),
]


@pytest.mark.parametrize("scheme, sa, sm, dt, shared", SCHEME_CASES)
@pytest.mark.parametrize("mode_target", ["RNN_TANH/h", "GRU/h", "LSTM/h", "LSTM/c", "LSTM/both"])
@pytest.mark.parametrize("kernel", ["reference", "auto"])
def test_known_noise_matches_hand_computed_recursion(scheme, sa, sm, dt, shared, mode_target, kernel):
    mode, target = mode_target.split("/")
    torch.manual_seed(0)
    module = {"RNN_TANH": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}[mode](I, H, num_layers=2, bidirectional=True).to(
        DTYPE
    )
    plain = copy.deepcopy(module)
    cfg = nrnn.NoiseConfig(
        additive=sa, multiplicative=sm, dt=dt, scheme=scheme, target=target, shared_multiplicative=shared
    )
    nrnn.register_noise(module, cfg)
    source = GeneratedNoise(seed=3)
    runtime_of(module).source = source
    x = torch.randn(T, B, I, dtype=DTYPE)
    h0 = torch.randn(4, B, H, dtype=DTYPE)
    c0 = torch.randn(4, B, H, dtype=DTYPE)
    hx = (h0, c0) if mode == "LSTM" else h0
    with use_kernel(kernel):
        out, state = module(x, hx)
    assert len(source.history) == 2  # one draw per layer for the whole sequence and both directions
    assert source.history[0].shape[:2] == (2, T * B)
    expected_out, expected_h, expected_c = _hand_reference(plain, x, source.history, cfg, h0, c0)
    torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-12)
    got_h = state[0] if mode == "LSTM" else state
    torch.testing.assert_close(got_h, expected_h, rtol=1e-10, atol=1e-12)
    if mode == "LSTM":
        torch.testing.assert_close(state[1], expected_c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True)])
def test_lstm_fast_path_equals_unrolled_path_with_the_same_noise(packed, layers, bidirectional):
    """Fused fast path vs autograd unroll: outputs, states and every gradient (``docs/method.md``, fused LSTM)."""
    torch.manual_seed(0)
    module = nn.LSTM(I, H, num_layers=layers, bidirectional=bidirectional).to(DTYPE)
    nrnn.register_noise(module, nrnn.NoiseConfig(additive=0.4, seed=1))
    x = torch.randn(T, B, I, dtype=DTYPE)
    lengths = torch.tensor([6, 2, 5, 3])
    results = []
    for kernel in ("auto", "reference"):
        module.zero_grad()
        runtime_of(module).source = GeneratedNoise(seed=9)
        leaf = x.clone().requires_grad_(True)
        inp = nn.utils.rnn.pack_padded_sequence(leaf, lengths, enforce_sorted=False) if packed else leaf
        with use_kernel(kernel):
            out, (h, c) = module(inp)
        if packed:
            out = nn.utils.rnn.pad_packed_sequence(out)[0]
        (out.sin().sum() + (2 * h).cos().sum() + (3 * c).sin().sum()).backward()
        results.append([out, h, c, leaf.grad] + [p.grad.clone() for p in module.parameters()])
    for fast, slow in zip(*results):
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "cell_cls, target",
    [(nn.RNNCell, "h"), (nn.GRUCell, "h"), (nn.LSTMCell, "h"), (nn.LSTMCell, "c"), (nn.LSTMCell, "both")],
)
@pytest.mark.parametrize("scheme", ["euler_maruyama", "milstein", "reference"])
def test_known_noise_on_cells(cell_cls, target, scheme):
    torch.manual_seed(0)
    cell = cell_cls(I, H).to(DTYPE)
    plain = copy.deepcopy(cell)
    cfg = nrnn.NoiseConfig(additive=0.3, multiplicative=0.2, dt=0.5, scheme=scheme, target=target)
    nrnn.register_noise(cell, cfg)
    runtime_of(cell).source = source = GeneratedNoise(seed=4)
    x = torch.randn(B, I, dtype=DTYPE)
    h = torch.randn(B, H, dtype=DTYPE)
    c = torch.randn(B, H, dtype=DTYPE)
    if cell_cls is nn.LSTMCell:
        got_h, got_c = cell(x, (h, c))
        draw = source.history[0]
        targets = ("h",) if target == "h" else (("c",) if target == "c" else ("h", "c"))
        width = draw.shape[1] // len(targets)
        cols = {tg: draw[:, i * width : (i + 1) * width] for i, tg in enumerate(targets)}
        gates = nn.functional.linear(x, plain.weight_ih, plain.bias_ih) + nn.functional.linear(
            h, plain.weight_hh, plain.bias_hh
        )
        i_g, f_g, g_g, o_g = gates.chunk(4, 1)
        c_new = torch.sigmoid(f_g) * c + torch.sigmoid(i_g) * torch.tanh(g_g)
        if "c" in cols:
            c_new = _scheme_step(
                scheme, c_new, c, *_split_draw(cols["c"], width, 0.3, 0.2, scheme, False), 0.3, 0.2, 0.5
            )
        h_new = torch.sigmoid(o_g) * torch.tanh(c_new)
        if "h" in cols:
            h_new = _scheme_step(
                scheme, h_new, h, *_split_draw(cols["h"], width, 0.3, 0.2, scheme, False), 0.3, 0.2, 0.5
            )
        torch.testing.assert_close(got_h, h_new, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got_c, c_new, rtol=1e-10, atol=1e-12)
    else:
        got = cell(x, h)
        xa, xm = _split_draw(source.history[0], H, 0.3, 0.2, scheme, False)
        expected = _scheme_step(scheme, plain(x, h), h, xa, xm, 0.3, 0.2, 0.5)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_fixed_noise_source_replaces_sampling():
    module = nrnn.register_noise(nn.GRU(I, H).to(DTYPE), nrnn.NoiseConfig(additive=1.0))
    draw = torch.zeros(1, T * B, H, dtype=DTYPE)
    draw[0, :B] = 1.0  # unit noise on every unit at the first step only
    runtime_of(module).source = FixedNoise([draw])
    x = torch.randn(T, B, I, dtype=DTYPE)
    out, _ = module(x)
    module.eval()
    clean_first = nn.GRUCell(I, H).to(DTYPE)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(clean_first, name).data.copy_(getattr(module, name + "_l0"))
    torch.testing.assert_close(out[0], clean_first(x[0]) + 1.0)
    with pytest.raises(RuntimeError, match="only 1 were recorded"):
        module.train()(x)


# ---------------------------------------------------------------------------------------------- statistics


def _one_step_increment(cfg: nrnn.NoiseConfig, h0_value: float, batch: int = 40_000, hidden: int = 8, seed: int = 0):
    """Noisy minus clean state after one step of an RNN whose clean step is known; many samples."""
    module = nn.RNN(1, hidden, nonlinearity="relu", bias=False)
    with torch.no_grad():
        module.weight_ih_l0.zero_()
        module.weight_hh_l0.copy_(torch.eye(hidden))  # clean step: relu(h0) = h0 for h0 > 0
    nrnn.register_noise(module, cfg.replace(seed=seed))
    h0 = torch.full((1, batch, hidden), h0_value)
    with torch.no_grad():
        out, _ = module(torch.zeros(1, batch, 1), h0)
    return out[0] - h0_value


@pytest.mark.parametrize("sa, sm, dt", [(0.2, 0.0, 1.0), (0.2, 0.0, 0.25), (0.0, 0.3, 0.5), (0.1, 0.3, 0.5)])
def test_euler_maruyama_variance_is_dt_sigma_squared(sa, sm, dt):
    """Var = dt * (sa^2 + sm^2 h^2). With n = 320k draws the sample variance has relative s.d. ~0.25%;
    tolerance 2% (8 s.d.), mean within 6 s.e."""
    h_value = 1.5
    increment = _one_step_increment(nrnn.NoiseConfig(additive=sa, multiplicative=sm, dt=dt), h_value)
    expected = dt * (sa**2 + sm**2 * h_value**2)
    n = increment.numel()
    assert increment.var().item() == pytest.approx(expected, rel=0.02)
    assert abs(increment.mean().item()) < 6 * math.sqrt(expected / n)


def test_milstein_variance_includes_the_correction():
    """Var = dt s^2 (1 + dt sm^2 / 2) with s = sa + sm h; the mean stays 0."""
    sa, sm, dt, h_value = 0.1, 0.6, 0.5, 1.5
    increment = _one_step_increment(nrnn.NoiseConfig(additive=sa, multiplicative=sm, dt=dt, scheme="milstein"), h_value)
    s = sa + sm * h_value
    expected = dt * s**2 * (1 + dt * sm**2 / 2)
    assert increment.var().item() == pytest.approx(expected, rel=0.02)
    assert abs(increment.mean().item()) < 6 * math.sqrt(expected / increment.numel())


def test_shared_multiplicative_factor_is_one_per_sample():
    increment = _one_step_increment(nrnn.NoiseConfig(multiplicative=0.3, shared_multiplicative=True), 1.0, batch=20_000)
    # all units of a sample move together, and the factor varies across samples with variance dt sm^2 h^2
    assert torch.allclose(increment, increment[:, :1].expand_as(increment))
    assert increment[:, 0].var().item() == pytest.approx(0.09, rel=0.05)


def test_reference_scheme_has_its_biased_mean():
    """Reference scheme: E[h'] = h + dt (1 - sm/2)(Psi - h). Clean step Psi(h) = 0 here (relu of -h)."""
    sm, dt, h_value = 0.4, 0.5, 1.0
    module = nn.RNN(1, 8, nonlinearity="relu", bias=False)
    with torch.no_grad():
        module.weight_ih_l0.zero_()
        module.weight_hh_l0.copy_(-torch.eye(8))
    nrnn.register_noise(module, nrnn.NoiseConfig(multiplicative=sm, dt=dt, scheme="reference", seed=0))
    with torch.no_grad():
        out, _ = module(torch.zeros(1, 40_000, 1), torch.full((1, 40_000, 8), h_value))
    mean = out.mean().item()
    expected = h_value + dt * (1 - sm / 2) * (0.0 - h_value)
    # m ~ U[1 - sm, 1]: Var(h') = dt^2 h^2 sm^2 / 12 -> s.e. of the mean ~ 1.8e-4
    assert mean == pytest.approx(expected, abs=1.5e-3)
    assert (
        out.min().item() >= h_value - dt * h_value - 1e-6
        and out.max().item() <= h_value - dt * (1 - sm) * h_value + 1e-6
    )


# ---------------------------------------------------------------------------------------------- seeds, ranks, RNG


def _training_output(seed, name="rnn", rank_env=None, monkeypatch=None):
    torch.manual_seed(123)
    model = nn.ModuleDict({name: nn.GRU(I, H)})
    if rank_env is not None:
        monkeypatch.setenv("RANK", str(rank_env))
    nrnn.register_noise(model, nrnn.NoiseConfig(additive=0.5, seed=seed))
    x = torch.ones(T, B, I)
    return model[name](x)[0]


def test_same_seed_reproduces_and_other_seeds_differ():
    a, b, c = _training_output(1), _training_output(1), _training_output(2)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_modules_with_different_names_draw_different_noise():
    assert not torch.allclose(_training_output(1, "encoder"), _training_output(1, "decoder"))


def test_different_ranks_draw_different_noise(monkeypatch):
    rank0 = _training_output(1, rank_env=0, monkeypatch=monkeypatch)
    rank1 = _training_output(1, rank_env=1, monkeypatch=monkeypatch)
    again = _training_output(1, rank_env=1, monkeypatch=monkeypatch)
    assert not torch.allclose(rank0, rank1) and torch.equal(rank1, again)
    assert derive_seed(1, "rnn", 0) != derive_seed(1, "rnn", 1)


def test_unseeded_noise_follows_torch_manual_seed():
    assert torch.equal(_training_output(None), _training_output(None))
    torch.manual_seed(5)
    model = nrnn.register_noise(nn.GRU(I, H), nrnn.NoiseConfig(additive=0.5))
    model.load_state_dict(nn.GRU(I, H).state_dict())
    assert runtime_of(model).source.generator("cpu").initial_seed() == derive_seed(None, "", 0)


def test_global_rng_state_is_never_touched():
    model = nrnn.register_noise(nn.LSTM(I, H, num_layers=2), nrnn.NoiseConfig(additive=0.1, multiplicative=0.1, seed=0))
    cells = nrnn.register_noise(nn.LSTMCell(I, H), nrnn.NoiseConfig(additive=0.1, target="both", seed=0))
    unseeded = nrnn.register_noise(nn.GRU(I, H), nrnn.NoiseConfig(additive=0.1))
    x = torch.randn(T, B, I)
    before = torch.get_rng_state()
    model(x)
    cells(torch.zeros(B, I))
    unseeded(x)
    assert torch.equal(torch.get_rng_state(), before)


def test_recording_and_replaying_reproduce_a_draw_exactly():
    from nrnn_plugin.runtime import recording, replaying

    model = nrnn.register_noise(nn.Sequential(nn.GRU(I, H)), nrnn.NoiseConfig(additive=0.3, multiplicative=0.2))
    x = torch.randn(T, B, I)
    with recording(model) as tapes:
        first = model[0](x)[0]
    assert not torch.equal(model[0](x)[0], first)  # the stream moved on
    with replaying(model, tapes):
        assert torch.equal(model[0](x)[0], first)
        with pytest.raises(RuntimeError, match="draw #2"):
            model[0](x)


def test_noise_source_state_round_trip_continues_the_stream():
    model = nrnn.register_noise(nn.GRU(I, H), nrnn.NoiseConfig(additive=0.3, seed=4))
    x = torch.randn(T, B, I)
    model(x)
    state = runtime_of(model).source.state_dict()
    expected = model(x)[0]
    other = nrnn.register_noise(copy.deepcopy(nn.GRU(I, H)), nrnn.NoiseConfig(additive=0.3, seed=99))
    other.load_state_dict(model.state_dict())
    runtime_of(other).source.load_state_dict(state)
    assert torch.equal(other(x)[0], expected)


# ---------------------------------------------------------------------------------------------- dtypes, devices


@pytest.mark.parametrize("kernel", ["reference", "auto"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_cpu_autocast_bfloat16_draws_noise_in_the_compute_dtype(kernel, mode):
    module = getattr(nn, mode)(I, H, num_layers=2)
    nrnn.register_noise(module, nrnn.NoiseConfig(additive=0.1, multiplicative=0.1, seed=0))
    runtime_of(module).source = source = GeneratedNoise(seed=0)
    x = torch.randn(T, B, I)
    with use_kernel(kernel), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = module(x)
    assert out.dtype == torch.bfloat16
    assert all(d.dtype == torch.bfloat16 for d in source.history)
    out.float().sum().backward()
    assert module.weight_hh_l0.grad is not None and module.weight_hh_l0.grad.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_cuda_matches_cpu_with_the_same_noise(mode):
    torch.manual_seed(0)
    cpu = getattr(nn, mode)(I, H, num_layers=2, bidirectional=True)
    gpu = copy.deepcopy(cpu).cuda()
    cfg = nrnn.NoiseConfig(additive=0.2, multiplicative=0.1, seed=0)
    nrnn.register_noise(cpu, cfg), nrnn.register_noise(gpu, cfg)
    draws = [torch.randn(2, T * B, 2 * H) for _ in range(2)]
    runtime_of(cpu).source = FixedNoise(draws)
    runtime_of(gpu).source = FixedNoise(draws)
    x = torch.randn(T, B, I)
    out_cpu, _ = cpu(x)
    out_gpu, _ = gpu(x.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-4, atol=1e-5)
    # a CUDA generator per device, drawing on the device
    fresh = nrnn.register_noise(getattr(nn, mode)(I, H).cuda(), cfg)
    fresh(x.cuda())
    assert "cuda:0" in runtime_of(fresh).source._generators or "cuda" in runtime_of(fresh).source._generators
