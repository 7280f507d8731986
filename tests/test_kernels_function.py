"""The hand-written sequence kernels (``nrnn_plugin.layers.functions``) against the autograd reference.

Every kernel must reproduce :func:`reference_unroll` exactly: outputs, final states and the gradients of the
input, the initial states, the weights and the biases, over modes x bias x direction x layout x noise form.
``function_kernel`` hands over to the reference where it must (a coefficient that requires grad, ``torch.func``),
so every comparison also asserts which kernel ran: the hand-written ``autograd.Function`` (its backward node)
or the reference (no such node).
Computed in float64 with a loss that weighs every output differently, so a wrong or misrouted gradient
cannot hide in rounding. ``gradcheck`` checks the backward against finite differences independently of the
reference.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from nrnn_testing import compiled_backward
from torch import nn

import nrnn_plugin as nrnn
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.diffusion import AffineNoise, Milstein, ReferenceScheme
from nrnn_plugin.layers import functions, use_kernel
from nrnn_plugin.layers.functions import function_kernel
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.reference import GATE_COUNT, reference_unroll
from nrnn_plugin.layers.signature import LayerPass, LayerWeights
from nrnn_plugin.runtime import noise_control, recording, replaying

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


def _noise(form: str, rows: int, generator: torch.Generator, units: int = H) -> AffineNoise | None:
    """One of the coefficient forms the schemes produce (see nrnn_plugin.diffusion), for a state of ``units``."""
    H = units  # noqa: N806 (the state's width, the module constant by default)

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


def _case(mode: str, layout: SequenceLayout, bias: bool, seed: int, proj: int = 0):
    """Leaves of one case; ``proj > 0``: an LSTM with a projection ``w_hr [proj, H]`` (``h`` has ``proj`` units)."""
    generator = torch.Generator().manual_seed(seed)
    gates = GATE_COUNT[mode] * H
    state = proj or H

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, dtype=DTYPE, generator=generator) * scale).requires_grad_()

    x = leaf(layout.rows, I)
    weights = [leaf(gates, I, scale=0.5), leaf(gates, state, scale=0.5)]
    weights += [leaf(gates, scale=0.5), leaf(gates, scale=0.5)] if bias else [None, None]
    if proj:
        weights.append(leaf(proj, H, scale=0.7))
    h0 = leaf(layout.batch, state)
    c0 = leaf(layout.batch, H) if mode == "LSTM" else None
    return generator, x, weights, h0, c0


#: The backward node of each mode's hand-written kernel.
BACKWARD = {
    "LSTM": "LSTMSequenceBackward",
    "GRU": "GRUSequenceBackward",
    "RNN_TANH": "ElmanSequenceBackward",
    "RNN_RELU": "ElmanSequenceBackward",
}


def _graph(tensor: torch.Tensor) -> set[str]:
    """Class names of every node in the autograd graph behind ``tensor``."""
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def _pass(layout, inputs, noise_h, noise_c, reverse) -> LayerPass:
    x, weights, h0, c0 = inputs
    return LayerPass(x, layout, LayerWeights(*weights), h0, c0, noise_h, noise_c, reverse)


def _results_and_grads(kernel, mode, inputs, noise_h, noise_c, reverse, layout, generator_seed: int, *, expect=None):
    """Results and gradients of ``kernel``; ``expect``: ``"function"`` or ``"reference"``, the kernel that must run."""
    x, weights, h0, c0 = inputs
    out, h_n, c_n = kernel(mode, _pass(layout, inputs, noise_h, noise_c, reverse))
    if expect is not None:
        ran = "function" if BACKWARD[mode] in _graph(out) else "reference"
        assert ran == expect, f"{mode}: the {ran} kernel ran, expected the {expect} kernel"
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


def _compare(
    mode: str, layout_name: str, bias: bool, reverse: bool, form_h: str, form_c: str, seed: int, proj: int = 0
) -> None:
    layout = LAYOUTS[layout_name]
    generator, x, weights, h0, c0 = _case(mode, layout, bias, seed, proj)
    noise_h = _noise(form_h, layout.rows, generator, proj or H)
    noise_c = _noise(form_c, layout.rows, generator) if mode == "LSTM" else None
    inputs = (x, weights, h0, c0)
    expected = _results_and_grads(reference_unroll, mode, inputs, noise_h, noise_c, reverse, layout, seed + 1)
    actual = _results_and_grads(
        function_kernel, mode, inputs, noise_h, noise_c, reverse, layout, seed + 1, expect="function"
    )
    what = f"{mode} {layout_name} bias={bias} reverse={reverse} proj={proj} noise_h={form_h} noise_c={form_c}"
    _assert_close(actual[0], expected[0], what + " results")
    _assert_close(actual[1], expected[1], what + " grads")


def test_unknown_mode_is_an_error_naming_the_modes():
    layout = LAYOUTS["uniform"]
    _, x, weights, h0, _ = _case("GRU", layout, True, 1)
    with pytest.raises(ValueError, match=r"mode must be one of \('LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU'\), got 'LSTMP'"):
        function_kernel("LSTMP", _pass(layout, (x, weights, h0, None), None, None, False))


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


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("proj", [2, 6], ids=["proj<H", "proj>H"])
def test_lstm_projection(layout_name, reverse, bias, proj):
    """``nn.LSTM(proj_size=P)``: noise on the projected ``h`` (P units) and on ``c`` (H units), every form."""
    for k, form in enumerate(NOISE_FORMS):
        _compare("LSTM", layout_name, bias, reverse, form, "none", seed=17 * k + 1, proj=proj)
        _compare("LSTM", layout_name, bias, reverse, "none", form, seed=17 * k + 2, proj=proj)
        _compare("LSTM", layout_name, bias, reverse, form, NOISE_FORMS[-1 - k], seed=17 * k + 3, proj=proj)


def test_projection_shapes_are_checked():
    layout = LAYOUTS["uniform"]
    _, x, weights, h0, c0 = _case("LSTM", layout, True, 1, proj=2)
    with pytest.raises(ValueError, match=r"h0 must have shape \[3, 2\], got \[3, 4\]"):
        function_kernel("LSTM", _pass(layout, (x, weights, c0, c0), None, None, False))
    with pytest.raises(ValueError, match=r"c0 must have shape \[3, 4\], got \[3, 2\]"):
        function_kernel("LSTM", _pass(layout, (x, weights, h0, h0), None, None, False))
    _, x, weights, h0, _ = _case("GRU", layout, True, 1)
    with pytest.raises(ValueError, match="w_hr .* exists for LSTM only, got one for GRU"):
        function_kernel(
            "GRU", _pass(layout, (x, [*weights, torch.zeros(2, H, dtype=DTYPE)], h0, None), None, None, False)
        )


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
        expected = _results_and_grads(reference_unroll, mode, inputs, noise_h, None, False, layout, 3)
        actual = _results_and_grads(function_kernel, mode, inputs, noise_h, None, False, layout, 3, expect="function")
        _assert_close(actual[0] + actual[1], expected[0] + expected[1], f"{mode} only {present}")


def test_backward_twice_with_retained_graph():
    """The backward does not modify what it saved: a second backward (retain_graph) gives the same grads."""
    layout = LAYOUTS["packed"]
    for mode in MODES:
        generator, x, weights, h0, c0 = _case(mode, layout, True, 37)
        noise = _noise("reference_tensor", layout.rows, generator)
        p = _pass(layout, (x, weights, h0, c0), noise, noise if c0 is not None else None, True)
        out, h_n, c_n = function_kernel(mode, p)
        assert BACKWARD[mode] in _graph(out)
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
        for kernel in (reference_unroll, function_kernel):
            out, h_n, c_n = kernel(mode, _pass(layout, (x, weights, h0, c0), noise, None, False))
            assert (BACKWARD[mode] in _graph(h_n)) == (kernel is function_kernel)
            loss = h_n.sin().sum() + (0.0 if c_n is None else c_n.cos().sum())
            grads.append(torch.autograd.grad(loss, [t for t in (x, *weights, h0, c0) if t is not None]))
        _assert_close(list(grads[1]), list(grads[0]), f"{mode} final-state-only grads")


@pytest.mark.parametrize(
    "mode,layout_name,reverse,form_h,form_c,proj",
    [
        ("LSTM", "packed", True, "shared_mult", "reference_tensor", 0),
        ("LSTM", "uniform", False, "milstein", "none", 0),
        ("LSTM", "packed", True, "reference_tensor", "add_mult", 2),
        ("LSTM", "uniform", False, "scalar_tensors", "milstein", 3),
        ("GRU", "packed", True, "reference_tensor", "none", 0),
        ("GRU", "uniform", False, "shared_mult", "none", 0),
        ("RNN_TANH", "packed", True, "reference_tensor", "none", 0),
        ("RNN_RELU", "packed", False, "add_mult", "none", 0),
    ],
)
def test_gradcheck(mode, layout_name, reverse, form_h, form_c, proj):
    layout = LAYOUTS[layout_name]
    generator, x, weights, h0, c0 = _case(mode, layout, True, 3, proj)
    if mode == "RNN_RELU":  # keep pre-activations away from the kink of relu
        weights[2].data.add_(1.0)
    noise_h = _noise(form_h, layout.rows, generator, proj or H)
    noise_c = _noise(form_c, layout.rows, generator) if mode == "LSTM" else None
    leaves = [t for t in (x, *weights, h0, c0) if t is not None]

    def function(*tensors):
        x_, w_ih, w_hh, b_ih, b_hh, *rest = tensors
        w_hr = rest.pop(0) if proj else None
        p = LayerPass(
            x_,
            layout,
            LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr),
            rest[0],
            rest[1] if len(rest) > 1 else None,
            noise_h,
            noise_c,
            reverse,
        )
        out, h_n, c_n = function_kernel(mode, p)
        assert BACKWARD[mode] in _graph(out)
        return (out, h_n) if c_n is None else (out, h_n, c_n)

    assert torch.autograd.gradcheck(function, leaves, eps=1e-6, atol=1e-7)


def test_falls_back_when_coefficient_requires_grad():
    layout = LAYOUTS["uniform"]
    generator, x, weights, h0, c0 = _case("GRU", layout, True, 13)
    mult = (torch.randn(layout.rows, H, dtype=DTYPE, generator=generator) * 0.3).requires_grad_()
    noise = AffineNoise(mult=mult)
    assert functions.needs_reference(noise)
    out, h_n, _ = function_kernel("GRU", _pass(layout, (x, weights, h0, None), noise, None, False))
    assert BACKWARD["GRU"] not in _graph(out)  # the reference ran
    (grad,) = torch.autograd.grad(out.sum() + h_n.sum(), [mult])
    ref_out, ref_h_n, _ = reference_unroll("GRU", _pass(layout, (x, weights, h0, None), noise, None, False))
    (ref_grad,) = torch.autograd.grad(ref_out.sum() + ref_h_n.sum(), [mult])
    _assert_close([out, grad], [ref_out, ref_grad], "fallback")


def test_falls_back_under_torch_func():
    layout = LAYOUTS["packed"]
    generator, x, weights, h0, c0 = _case("LSTM", layout, True, 17)
    noise = _noise("add_mult", layout.rows, generator)
    w_hh = weights[1].detach()
    ran = []

    def loss(w):
        p = LayerPass(x.detach(), layout, LayerWeights(weights[0].detach(), w), h0.detach(), c0.detach(), noise)
        ran.append(functions.needs_reference(noise))
        out, _, _ = function_kernel("LSTM", p)
        return out.sum()

    grad = torch.func.grad(loss)(w_hh)
    assert ran == [True]  # torch.func is active: the kernel hands over to the reference
    w = w_hh.clone().requires_grad_()
    out, _, _ = reference_unroll(
        "LSTM", LayerPass(x.detach(), layout, LayerWeights(weights[0].detach(), w), h0.detach(), c0.detach(), noise)
    )
    (expected,) = torch.autograd.grad(out.sum(), [w])
    _assert_close([grad], [expected], "torch.func fallback")


@pytest.mark.parametrize("mode", MODES)
def test_double_backward_equals_the_reference(mode):
    """create_graph=True: the kernel recomputes through the reference, so second derivatives match it."""
    layout = LAYOUTS["packed"]

    def second(kernel):
        generator, x, weights, h0, c0 = _case(mode, layout, True, 19)
        p = _pass(layout, (x, weights, h0, c0), _noise("add_mult", layout.rows, generator), None, True)
        out, h_n, _ = kernel(mode, p)
        (grad,) = torch.autograd.grad(out.pow(2).sum() + h_n.sum(), [x], create_graph=True)
        return [grad.detach(), *torch.autograd.grad(grad.sin().sum(), [x, weights[1], weights[2], h0])]

    _assert_close(second(function_kernel), second(reference_unroll), f"{mode} double backward")


def test_bad_coefficient_shape():
    layout = LAYOUTS["uniform"]
    _, x, weights, h0, _ = _case("GRU", layout, True, 23)
    with pytest.raises(ValueError, match="noise_h.add"):
        function_kernel(
            "GRU", _pass(layout, (x, weights, h0, None), AffineNoise(add=torch.zeros(2, H, dtype=DTYPE)), None, False)
        )


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_smoke(mode):
    """bfloat16 runs and stays within bfloat16 rounding of the float64 result."""
    layout = LAYOUTS["packed"]
    generator, x, weights, h0, c0 = _case(mode, layout, True, 29)
    noise = _noise("add_mult", layout.rows, generator)
    expected, _ = _results_and_grads(reference_unroll, mode, (x, weights, h0, c0), noise, None, True, layout, 1)

    def bf16(t):
        return None if t is None else t.detach().to(torch.bfloat16).requires_grad_()

    low = [bf16(x), [bf16(w) for w in weights], bf16(h0), bf16(c0)]
    noise_low = AffineNoise(None, noise.mult.to(torch.bfloat16), noise.add.to(torch.bfloat16))
    out, h_n, c_n = function_kernel(mode, _pass(layout, tuple(low), noise_low, None, True))
    assert out.dtype == torch.bfloat16 and BACKWARD[mode] in _graph(out)
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
        assert (BACKWARD["GRU"] in _graph(h_n)) == (kind == "function")
        if packed:
            out = nn.utils.rnn.pad_packed_sequence(out)[0]
        (out.sin().sum() + h_n.cos().sum()).backward()
        return [out.detach(), h_n.detach()] + [p.grad.clone() for p in model.parameters()]

    with recording(model) as tapes:
        expected = run("reference")
    with replaying(model, tapes):
        actual = run("function")
    _assert_close(actual, expected, "module GRU")


@pytest.mark.parametrize(
    "config, backward",
    [
        (NoiseConfig(multiplicative=0.1, seed=0), "LSTMSequenceBackward"),
        (NoiseConfig(additive=0.1, target="c", seed=0), "LSTMSequenceBackward"),
        (NoiseConfig(additive=0.1, seed=0), "MkldnnRnnLayerBackward0"),
    ],
    ids=["multiplicative", "cell", "additive-fused"],
)
def test_module_lstm_auto_kernel_choice(config, backward, kernel_backend):
    """Kernel choice: the compiled operator for every form (compiled back-end); on the Python back-end the fused
    path for additive noise on h, the Function kernel otherwise."""
    model = nrnn.register_noise(nn.LSTM(3, 4), config).train()
    out, _ = model(torch.randn(5, 2, 3))
    graph = _graph(out)
    if kernel_backend == "compiled":
        assert compiled_backward(out) and "LSTMSequenceBackward" not in graph, sorted(graph)
        return
    assert backward in graph, sorted(graph)
    assert ("LSTMSequenceBackward" in graph) == (backward == "LSTMSequenceBackward")


@pytest.mark.parametrize("target", ["h", "c", "both"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_module_projected_lstm_function_kernel_matches_reference(target, packed):
    """A registered nn.LSTM(proj_size=2), 2 layers, bidirectional: same outputs and grads on both kernels; without
    the compiled kernels additive noise on h takes the function kernel (the fused path has no projection)."""
    torch.manual_seed(0)
    model = nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2).double()
    nrnn.register_noise(model, NoiseConfig(additive=0.1, target=target, seed=1))
    model.train()
    x = torch.randn(6, 4, 3, dtype=DTYPE)
    if packed:
        x = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 2, 5, 3]), enforce_sorted=False)

    def run(kind: str, inject: bool = True):
        model.zero_grad()
        with use_kernel(kind), noise_control(model, inject=inject):
            out, (h_n, c_n) = model(x)
        assert h_n.shape == (4, 4, 2) and c_n.shape == (4, 4, 5)
        assert (BACKWARD["LSTM"] in _graph(h_n)) == (inject and kind != "reference")
        if packed:
            out = nn.utils.rnn.pad_packed_sequence(out)[0]
        (out.sin().sum() + h_n.cos().sum() + c_n.sum()).backward()
        return [out.detach(), h_n.detach(), c_n.detach()] + [p.grad.clone() for p in model.parameters()]

    with recording(model) as tapes:
        expected = run("reference")
    with replaying(model, tapes):
        actual = run("fused")
    _assert_close(actual, expected, f"module projected LSTM target={target}")
    clean = run("fused", inject=False)  # the noise really entered: without it the results differ
    assert not torch.allclose(clean[0], expected[0])
