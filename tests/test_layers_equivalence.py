"""Equivalence grid against PyTorch's own modules.

With the noise source replaced by zeros, the unrolled noisy training path must reproduce ``nn.RNN``,
``nn.LSTM`` and ``nn.GRU`` exactly: outputs, final states, and the gradients of every parameter, of the input
and of the initial state, for every option of ``nn.RNNBase``. Eval with noise registered must be the
original forward bit for bit. Computed in float64 so that a wrong gradient cannot hide in rounding.
``LSTM_PROJ`` is an ``nn.LSTM`` with ``proj_size=P`` (``h`` has ``P`` units, ``c`` has ``H``). Every case
also asserts which kernel ran, by the backward nodes of the output.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from nrnn_testing import ZeroNoise, compiled_backward, compiled_or_skip
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import nrnn_plugin as nrnn
from nrnn_plugin.layers import recurrent, use_kernel
from nrnn_plugin.runtime import runtime_of

DTYPE = torch.float64
I, H, P, T, B = 3, 4, 2, 5, 3
LENGTHS = torch.tensor([3, 5, 2])  # unsorted on purpose

MODULES = {
    "RNN_TANH": lambda **kw: nn.RNN(I, H, nonlinearity="tanh", **kw),
    "RNN_RELU": lambda **kw: nn.RNN(I, H, nonlinearity="relu", **kw),
    "LSTM": lambda **kw: nn.LSTM(I, H, **kw),
    "LSTM_PROJ": lambda **kw: nn.LSTM(I, H, proj_size=P, **kw),
    "GRU": lambda **kw: nn.GRU(I, H, **kw),
}
INPUTS = ("padded", "batch_first", "packed_sorted", "packed_unsorted", "unbatched")


def _make_input(kind: str, generator: torch.Generator) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
    x = torch.randn(T, B, I, dtype=DTYPE, generator=generator, requires_grad=True)
    if kind == "padded":
        return x, x
    if kind == "batch_first":
        return x.transpose(0, 1), x
    if kind == "packed_sorted":
        return pack_padded_sequence(x, LENGTHS.sort(descending=True).values, enforce_sorted=True), x
    if kind == "packed_unsorted":
        return pack_padded_sequence(x, LENGTHS, enforce_sorted=False), x
    return x[:, 0], x  # unbatched [T, I]


def _initial_state(module: nn.RNNBase, batched: bool, generator: torch.Generator):
    directions = 2 if module.bidirectional else 1

    def state(units: int) -> torch.Tensor:
        shape = (module.num_layers * directions, B, units) if batched else (module.num_layers * directions, units)
        return torch.randn(*shape, dtype=DTYPE, generator=generator, requires_grad=True)

    h = state(getattr(module, "proj_size", 0) or H)
    return (h, state(H)) if module.mode == "LSTM" else h


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


def _expected_kernel(module: nn.RNNBase, kernel: str) -> str:
    """The kernel that must run: the reference, the compiled operator, or (the Python back-end, ``fused``) the
    hand-written function or, for an additive LSTM without projection, the fused path."""
    if kernel in ("reference", "compiled"):
        return kernel
    return "fused" if module.mode == "LSTM" and not module.proj_size else "function"


def _kernel_ran(out: torch.Tensor, fused_calls: list[int]) -> str:
    """``function`` (its backward node is in the graph), ``fused`` (the fused helper was called) or ``reference``.

    The fused path cannot be told apart by its nodes in float64 (PyTorch's CPU LSTM then unrolls with autograd
    ops), hence the call counter ``fused_calls`` kept by :func:`_count_fused`.
    """
    if compiled_backward(out):
        return "compiled"
    if any(name.endswith("SequenceBackward") for name in _graph(out)):
        return "function"
    return "fused" if fused_calls else "reference"


def _count_fused(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = recurrent.lstm_additive_fused

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(recurrent, "lstm_additive_fused", counted)
    return calls


def _flatten(result) -> list[torch.Tensor]:
    out, state = result
    if isinstance(out, PackedSequence):
        out = pad_packed_sequence(out)[0]
    states = list(state) if isinstance(state, tuple) else [state]
    return [out, *states]


def _loss(tensors: list[torch.Tensor]) -> torch.Tensor:
    # distinct weights per tensor so that a gradient routed to the wrong place changes the result
    return sum((t * (k + 1)).sin().sum() for k, t in enumerate(tensors))


def _run(module: nn.Module, kind: str, given_state: bool, seed: int, expect=None) -> list[torch.Tensor]:
    """Results and gradients; ``expect``: ``(kernel name, fused call counter)`` that must have run."""
    generator = torch.Generator().manual_seed(seed)
    inp, leaf = _make_input(kind, generator)
    hx = _initial_state(module, kind != "unbatched", generator) if given_state else None
    results = _flatten(module(inp, hx))
    if expect is not None:
        assert _kernel_ran(results[0], expect[1]) == expect[0], sorted(_graph(results[0]))
    _loss(results).backward()
    leaves = [leaf] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    grads = [leaf.grad for leaf in leaves] + [p.grad for p in module.parameters()]
    return results + [g.clone() for g in grads]


GRID = list(
    itertools.product(
        MODULES, (1, 2), (False, True), (True, False), INPUTS, (False, True), ("reference", "fused", "compiled")
    )
)


@pytest.mark.parametrize("mode, layers, bidirectional, bias, kind, given_state, kernel", GRID)
def test_zero_noise_training_path_matches_torch(
    mode, layers, bidirectional, bias, kind, given_state, kernel, monkeypatch
):
    if kernel == "compiled":
        compiled_or_skip()
    fused_calls = _count_fused(monkeypatch)
    torch.manual_seed(0)
    plain = MODULES[mode](num_layers=layers, bidirectional=bidirectional, bias=bias, batch_first=kind == "batch_first")
    plain = plain.to(DTYPE)
    # LSTM on the Python back-end: additive noise only, which takes the exact fused fast path (no projection)
    multiplicative = 0.0 if kernel == "fused" and mode.startswith("LSTM") else 0.1
    noisy = nrnn.register_noise(copy.deepcopy(plain), nrnn.NoiseConfig(additive=0.1, multiplicative=multiplicative))
    runtime_of(noisy).source = ZeroNoise("zero")
    with use_kernel(kernel):
        got = _run(noisy, kind, given_state, seed=1, expect=(_expected_kernel(plain, kernel), fused_calls))
    expected = _run(plain, kind, given_state, seed=1)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", list(MODULES))
def test_inter_layer_dropout_is_applied_between_layers_only(mode):
    """dropout=p: the same as single-layer torch modules chained with F.dropout under the same seed."""
    torch.manual_seed(0)
    plain = MODULES[mode](num_layers=3, dropout=0.4).to(DTYPE)
    noisy = nrnn.register_noise(copy.deepcopy(plain), nrnn.NoiseConfig(additive=0.1))
    runtime_of(noisy).source = ZeroNoise("zero")
    x = torch.randn(T, B, I, dtype=DTYPE)
    singles = []
    for layer in range(3):
        kwargs = {"nonlinearity": plain.nonlinearity} if mode.startswith("RNN") else {}
        if mode == "LSTM_PROJ":
            kwargs = {"proj_size": P}
        single = type(plain)(I if layer == 0 else (P if mode == "LSTM_PROJ" else H), H, **kwargs).to(DTYPE)
        for name, _ in single.named_parameters():
            getattr(single, name).data.copy_(getattr(plain, name.replace("_l0", f"_l{layer}")))
        singles.append(single)
    torch.manual_seed(5)
    with use_kernel("reference"):
        out, _ = noisy(x)
    torch.manual_seed(5)
    layer_input = x
    for layer, single in enumerate(singles):
        layer_input, _ = single(layer_input)
        if layer < 2:
            layer_input = F.dropout(layer_input, 0.4, training=True)
    torch.testing.assert_close(out, layer_input, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", list(MODULES))
def test_eval_with_noise_registered_is_bit_identical(mode):
    torch.manual_seed(0)
    plain = MODULES[mode](num_layers=2, bidirectional=True).eval()
    noisy = nrnn.register_noise(copy.deepcopy(plain), nrnn.NoiseConfig(additive=0.5, multiplicative=0.5)).eval()
    x = torch.randn(T, B, I)
    for a, b in zip(_flatten(plain(x)), _flatten(noisy(x))):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "cell_cls",
    [nn.RNNCell, lambda i, h: nn.RNNCell(i, h, nonlinearity="relu"), nn.GRUCell, nn.LSTMCell],
)
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("target", ["h", "both"])
def test_cells_with_zero_noise_match_torch(cell_cls, batched, target):
    torch.manual_seed(0)
    plain = cell_cls(I, H).to(DTYPE)
    noisy = nrnn.register_noise(copy.deepcopy(plain), nrnn.NoiseConfig(additive=0.1, multiplicative=0.1, target=target))
    runtime_of(noisy).source = ZeroNoise("zero")
    x = torch.randn(B, I, dtype=DTYPE) if batched else torch.randn(I, dtype=DTYPE)
    state_shape = (B, H) if batched else (H,)
    hx = torch.randn(*state_shape, dtype=DTYPE)
    if isinstance(plain, nn.LSTMCell):
        hx = (hx, torch.randn(*state_shape, dtype=DTYPE))
    for state in (None, hx):
        got, expected = noisy(x, state), plain(x, state)
        got = list(got) if isinstance(got, tuple) else [got]
        expected = list(expected) if isinstance(expected, tuple) else [expected]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
