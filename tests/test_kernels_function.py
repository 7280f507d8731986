"""The hand-written sequence kernels (``nrnn_plugin.layers.functions``) against the autograd reference.

Every kernel must reproduce :func:`reference_unroll` exactly: outputs, final states and the gradients of the
input, the initial states, the weights and the biases, over modes x bias x direction x layout x noise form.
Computed in float64 with a loss that weighs every output differently, so a wrong or misrouted gradient
cannot hide in rounding. ``gradcheck`` checks the backward against finite differences independently of the
reference.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.diffusion import AffineNoise, Milstein, ReferenceScheme
from nrnn_plugin.layers import functions, use_kernel
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.recurrent import FUNCTION_KERNELS
from nrnn_plugin.layers.reference import GATE_COUNT, reference_unroll
from nrnn_plugin.noise import recording, replaying

DTYPE = torch.float64
I, H = 3, 4
LAYOUTS = {
    "uniform": SequenceLayout.padded(5, 3),
    "packed": SequenceLayout((4, 3, 3, 1, 1)),  # lengths 5, 3, 3, 1 (a sample of length 1 included)
}
MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
NOISE_FORMS = (
    "none",
    "additive",
    "mult",
    "add_mult",
    "shared_mult",
    "reference_float",
    "reference_tensor",
    "milstein",
    "scalar_tensors",
)


def _noise(form: str, rows: int, generator: torch.Generator) -> AffineNoise | None:
    """One of the coefficient forms the schemes produce (see nrnn_plugin.diffusion)."""

    def randn(width: int, scale: float) -> torch.Tensor:
        return torch.randn(rows, width, dtype=DTYPE, generator=generator) * scale

    if form == "none":
        return None
    if form == "additive":
        return AffineNoise(add=randn(H, 0.3))
    if form == "mult":
        return AffineNoise(mult=randn(H, 0.3))
    if form == "add_mult":
        return AffineNoise(mult=randn(H, 0.3), add=randn(H, 0.3))
    if form == "shared_mult":
        return AffineNoise(mult=randn(1, 0.3), add=randn(H, 0.3))
    if form == "reference_float":  # reference scheme with dt != 1 and no multiplicative noise: float gate/mult
        return ReferenceScheme(NoiseConfig(additive=0.3, dt=0.7, scheme="reference")).coefficients(randn(H, 1.0), H)
    if form == "reference_tensor":  # reference scheme, shared multiplicative factor: gate/mult tensors [rows, 1]
        config = NoiseConfig(additive=0.3, multiplicative=0.4, dt=0.6, scheme="reference", shared_multiplicative=True)
        return ReferenceScheme(config).coefficients(randn(H + 1, 1.0), H)
    if form == "scalar_tensors":  # 0-dim tensor coefficients (mean coefficients scaled by a tensor probe scale)
        return AffineNoise(torch.tensor(0.8, dtype=DTYPE), torch.tensor(0.15, dtype=DTYPE), randn(H, 0.3))
    if form == "milstein":
        config = NoiseConfig(additive=0.2, multiplicative=0.3, dt=0.5, scheme="milstein")
        return Milstein(config).coefficients(randn(H, 1.0), H)
    raise AssertionError(form)


def _case(mode: str, layout: SequenceLayout, bias: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    gates = GATE_COUNT[mode] * H

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, dtype=DTYPE, generator=generator) * scale).requires_grad_()

    x = leaf(layout.rows, I)
    weights = [leaf(gates, I, scale=0.5), leaf(gates, H, scale=0.5)]
    weights += [leaf(gates, scale=0.5), leaf(gates, scale=0.5)] if bias else [None, None]
    h0 = leaf(layout.batch, H)
    c0 = leaf(layout.batch, H) if mode == "LSTM" else None
    return generator, x, weights, h0, c0


def _results_and_grads(kernel, inputs, noise_h, noise_c, reverse, layout, generator_seed: int):
    x, weights, h0, c0 = inputs
    out, h_n, c_n = kernel(x, layout, *weights, h0, c0, noise_h, noise_c, reverse)
    generator = torch.Generator().manual_seed(generator_seed)
    results = [out, h_n] + ([] if c_n is None else [c_n])
    loss = sum((torch.randn(r.shape, dtype=DTYPE, generator=generator) * r).sum() for r in results)
    loss = loss + (out * out).sum() * 0.1  # a non-linear term: the gradient depends on the outputs too
    leaves = [t for t in (x, *weights, h0, c0) if t is not None]
    grads = torch.autograd.grad(loss, leaves)
    return [r.detach() for r in results], list(grads)


def _assert_close(actual: list[torch.Tensor], expected: list[torch.Tensor], what: str, tol: float = 1e-12) -> None:
    assert len(actual) == len(expected), what
    for k, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol, msg=lambda m: f"{what} #{k}: {m}")


def _compare(mode: str, layout_name: str, bias: bool, reverse: bool, form_h: str, form_c: str, seed: int) -> None:
    layout = LAYOUTS[layout_name]
    generator, x, weights, h0, c0 = _case(mode, layout, bias, seed)
    noise_h = _noise(form_h, layout.rows, generator)
    noise_c = _noise(form_c, layout.rows, generator) if mode == "LSTM" else None
    inputs = (x, weights, h0, c0)

    def reference(*args):
        return reference_unroll(mode, *args)

    expected = _results_and_grads(reference, inputs, noise_h, noise_c, reverse, layout, seed + 1)
    actual = _results_and_grads(FUNCTION_KERNELS[mode], inputs, noise_h, noise_c, reverse, layout, seed + 1)
    what = f"{mode} {layout_name} bias={bias} reverse={reverse} noise_h={form_h} noise_c={form_c}"
    _assert_close(actual[0], expected[0], what + " results")
    _assert_close(actual[1], expected[1], what + " grads")


def test_registered():
    assert FUNCTION_KERNELS["LSTM"] is functions.lstm_sequence
    assert FUNCTION_KERNELS["GRU"] is functions.gru_sequence
    assert FUNCTION_KERNELS["RNN_TANH"] is functions.rnn_tanh_sequence
    assert FUNCTION_KERNELS["RNN_RELU"] is functions.rnn_relu_sequence


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_reference_noise_on_h(mode, layout_name, reverse, bias):
    for k, form in enumerate(NOISE_FORMS):
        _compare(mode, layout_name, bias, reverse, form, "none", seed=100 * k + 7)


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("target", ["c", "both"])
def test_lstm_noise_on_cell(layout_name, reverse, target):
    for k, form in enumerate(NOISE_FORMS[1:]):
        form_h = form if target == "both" else "none"
        _compare("LSTM", layout_name, True, reverse, form_h, form, seed=31 * k + 3)
    # h and c with different forms at once
    _compare("LSTM", layout_name, False, reverse, "reference_tensor", "add_mult", seed=5)


@pytest.mark.parametrize("sizes", [(3,), (1, 1, 1), (2, 1), (3, 3, 1)], ids=["one-step", "batch-1", "2-1", "3-3-1"])
def test_small_layouts(sizes):
    """Edge layouts: a single step, a single sample, a batch that shrinks to one sample."""
    LAYOUTS["edge"] = SequenceLayout(sizes)
    try:
        for k, (mode, reverse) in enumerate(itertools.product(MODES, (False, True))):
            _compare(mode, "edge", True, reverse, "add_mult", "shared_mult", seed=k)
    finally:
        del LAYOUTS["edge"]


@pytest.mark.parametrize("present", ["b_ih", "b_hh"])
def test_single_bias(present):
    """Only one of the two biases given (not produced by nn.RNNBase, allowed by the kernel contract)."""
    layout = LAYOUTS["packed"]
    for k, mode in enumerate(MODES):
        generator, x, weights, h0, c0 = _case(mode, layout, True, 41 + k)
        weights[3 if present == "b_ih" else 2] = None
        noise_h = _noise("add_mult", layout.rows, generator)
        inputs = (x, weights, h0, c0)
        expected = _results_and_grads(lambda *a: reference_unroll(mode, *a), inputs, noise_h, None, False, layout, 3)
        actual = _results_and_grads(FUNCTION_KERNELS[mode], inputs, noise_h, None, False, layout, 3)
        _assert_close(actual[0] + actual[1], expected[0] + expected[1], f"{mode} only {present}")


def test_backward_twice_with_retained_graph():
    """The backward does not modify what it saved: a second backward (retain_graph) gives the same grads."""
    layout = LAYOUTS["packed"]
    for mode in MODES:
        generator, x, weights, h0, c0 = _case(mode, layout, True, 37)
        noise = _noise("reference_tensor", layout.rows, generator)
        out, h_n, c_n = FUNCTION_KERNELS[mode](x, layout, *weights, h0, c0, noise, noise if c0 is not None else None, True)
        loss = out.sin().sum() + h_n.sum() + (0.0 if c_n is None else c_n.sum())
        leaves = [t for t in (x, *weights, h0, c0) if t is not None]
        first = torch.autograd.grad(loss, leaves, retain_graph=True)
        second = torch.autograd.grad(loss, leaves)
        _assert_close(list(second), list(first), f"{mode} second backward", tol=0.0)


def test_only_final_state_used():
    """Gradients when the per-step output is unused (grad_out is None) or only ``h_n`` is used."""
    layout = LAYOUTS["packed"]
    for mode in MODES:
        generator, x, weights, h0, c0 = _case(mode, layout, True, 11)
        noise = _noise("add_mult", layout.rows, generator)
        grads = []
        for kernel in (lambda *a: reference_unroll(mode, *a), FUNCTION_KERNELS[mode]):
            out, h_n, c_n = kernel(x, layout, *weights, h0, c0, noise, None, False)
            loss = h_n.sin().sum() + (0.0 if c_n is None else c_n.cos().sum())
            grads.append(torch.autograd.grad(loss, [t for t in (x, *weights, h0, c0) if t is not None]))
        _assert_close(list(grads[1]), list(grads[0]), f"{mode} final-state-only grads")


@pytest.mark.parametrize(
    "mode,layout_name,reverse,form_h,form_c",
    [
        ("LSTM", "packed", True, "shared_mult", "reference_tensor"),
        ("LSTM", "uniform", False, "milstein", "none"),
        ("GRU", "packed", True, "reference_tensor", "none"),
        ("GRU", "uniform", False, "shared_mult", "none"),
        ("RNN_TANH", "packed", True, "reference_tensor", "none"),
        ("RNN_RELU", "packed", False, "add_mult", "none"),
    ],
)
def test_gradcheck(mode, layout_name, reverse, form_h, form_c):
    layout = LAYOUTS[layout_name]
    generator, x, weights, h0, c0 = _case(mode, layout, True, 3)
    if mode == "RNN_RELU":  # keep pre-activations away from the kink of relu
        weights[2].data.add_(1.0)
    noise_h = _noise(form_h, layout.rows, generator)
    noise_c = _noise(form_c, layout.rows, generator) if mode == "LSTM" else None
    kernel = FUNCTION_KERNELS[mode]
    leaves = [t for t in (x, *weights, h0, c0) if t is not None]

    def function(*tensors):
        x_, w_ih, w_hh, b_ih, b_hh, h0_, *rest = tensors
        out, h_n, c_n = kernel(x_, layout, w_ih, w_hh, b_ih, b_hh, h0_, rest[0] if rest else None, noise_h, noise_c, reverse)
        return (out, h_n) if c_n is None else (out, h_n, c_n)

    assert torch.autograd.gradcheck(function, leaves, eps=1e-6, atol=1e-7)


def test_falls_back_when_coefficient_requires_grad():
    layout = LAYOUTS["uniform"]
    generator, x, weights, h0, c0 = _case("GRU", layout, True, 13)
    mult = (torch.randn(layout.rows, H, dtype=DTYPE, generator=generator) * 0.3).requires_grad_()
    noise = AffineNoise(mult=mult)
    assert functions.needs_reference(noise)
    out, h_n, _ = FUNCTION_KERNELS["GRU"](x, layout, *weights, h0, None, noise, None, False)
    (grad,) = torch.autograd.grad(out.sum() + h_n.sum(), [mult])
    ref_out, ref_h_n, _ = reference_unroll("GRU", x, layout, *weights, h0, None, noise, None, False)
    (ref_grad,) = torch.autograd.grad(ref_out.sum() + ref_h_n.sum(), [mult])
    _assert_close([out, grad], [ref_out, ref_grad], "fallback")


def test_falls_back_under_torch_func():
    layout = LAYOUTS["packed"]
    generator, x, weights, h0, c0 = _case("LSTM", layout, True, 17)
    noise = _noise("add_mult", layout.rows, generator)
    w_hh = weights[1].detach()

    def loss(w):
        out, _, _ = FUNCTION_KERNELS["LSTM"](x.detach(), layout, weights[0].detach(), w, None, None, h0.detach(), c0.detach(), noise, None, False)
        return out.sum()

    grad = torch.func.grad(loss)(w_hh)
    w = w_hh.clone().requires_grad_()
    out, _, _ = reference_unroll("LSTM", x.detach(), layout, weights[0].detach(), w, None, None, h0.detach(), c0.detach(), noise, None, False)
    (expected,) = torch.autograd.grad(out.sum(), [w])
    _assert_close([grad], [expected], "torch.func fallback")


def test_double_backward_is_an_error():
    layout = LAYOUTS["uniform"]
    generator, x, weights, h0, c0 = _case("RNN_TANH", layout, True, 19)
    out, _, _ = FUNCTION_KERNELS["RNN_TANH"](x, layout, *weights, h0, None, _noise("additive", layout.rows, generator), None, False)
    (grad,) = torch.autograd.grad(out.pow(2).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad.sum(), [x])


def test_bad_coefficient_shape():
    layout = LAYOUTS["uniform"]
    _, x, weights, h0, _ = _case("GRU", layout, True, 23)
    with pytest.raises(ValueError, match="noise_h.add"):
        FUNCTION_KERNELS["GRU"](x, layout, *weights, h0, None, AffineNoise(add=torch.zeros(2, H, dtype=DTYPE)), None, False)


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_smoke(mode):
    """bfloat16 runs and stays within bfloat16 rounding of the float64 result."""
    layout = LAYOUTS["packed"]
    generator, x, weights, h0, c0 = _case(mode, layout, True, 29)
    noise = _noise("add_mult", layout.rows, generator)
    expected, _ = _results_and_grads(lambda *a: reference_unroll(mode, *a), (x, weights, h0, c0), noise, None, True, layout, 1)

    def bf16(t):
        return None if t is None else t.detach().to(torch.bfloat16).requires_grad_()

    low = [bf16(x), [bf16(w) for w in weights], bf16(h0), bf16(c0)]
    noise_low = AffineNoise(None, noise.mult.to(torch.bfloat16), noise.add.to(torch.bfloat16))
    out, h_n, c_n = FUNCTION_KERNELS[mode](low[0], layout, *low[1], low[2], low[3], noise_low, None, True)
    assert out.dtype == torch.bfloat16
    (out.float().sum() + h_n.float().sum()).backward()
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in low[1])
    for a, e in zip([out, h_n] + ([] if c_n is None else [c_n]), expected):
        torch.testing.assert_close(a.double(), e, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_module_function_kernel_matches_reference(packed):
    """A registered nn.GRU (2 layers, bidirectional) in training: same outputs and grads on both kernels."""
    torch.manual_seed(0)
    model = nn.GRU(3, 5, num_layers=2, bidirectional=True).double()
    nrnn.register_noise(model, NoiseConfig(additive=0.1, multiplicative=0.2, seed=1))
    model.train()
    x = torch.randn(6, 4, 3, dtype=DTYPE)
    if packed:
        x = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 2, 5, 3]), enforce_sorted=False)

    def run(kind: str):
        model.zero_grad()
        with use_kernel(kind):
            out, h_n = model(x)
        if packed:
            out = nn.utils.rnn.pad_packed_sequence(out)[0]
        (out.sin().sum() + h_n.cos().sum()).backward()
        return [out.detach(), h_n.detach()] + [p.grad.clone() for p in model.parameters()]

    with recording(model) as tapes:
        expected = run("reference")
    with replaying(model, tapes):
        actual = run("function")
    _assert_close(actual, expected, "module GRU")


def test_module_lstm_multiplicative_uses_function_kernel(monkeypatch):
    """Auto kernel choice: LSTM with multiplicative noise goes through the Function kernel."""
    calls = []
    original = FUNCTION_KERNELS["LSTM"]
    monkeypatch.setitem(FUNCTION_KERNELS, "LSTM", lambda *a: calls.append(1) or original(*a))
    model = nrnn.register_noise(nn.LSTM(3, 4), NoiseConfig(multiplicative=0.1, seed=0)).train()
    model(torch.randn(5, 2, 3))[0].sum().backward()
    assert calls == [1]


def test_grid_is_exhaustive():
    """The grid covers every registered mode (a new mode must be added to the tests)."""
    assert set(FUNCTION_KERNELS) == set(MODES)
    assert len(list(itertools.product(MODES, LAYOUTS, NOISE_FORMS))) == 4 * 2 * 9
