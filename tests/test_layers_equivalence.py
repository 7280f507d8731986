"""Equivalence grid against PyTorch's own modules.

With the noise source replaced by zeros, the unrolled noisy training path must reproduce ``nn.RNN``,
``nn.LSTM`` and ``nn.GRU`` exactly: outputs, final states, and the gradients of every parameter, of the input
and of the initial state, for every option of ``nn.RNNBase``. Eval with noise registered must be the
original forward bit for bit. Computed in float64 so that a wrong gradient cannot hide in rounding.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from nrnn_testing import ZeroNoise
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import nrnn_plugin as nrnn
from nrnn_plugin.layers import use_kernel
from nrnn_plugin.runtime import runtime_of

DTYPE = torch.float64
I, H, T, B = 3, 4, 5, 3
LENGTHS = torch.tensor([3, 5, 2])  # unsorted on purpose

MODULES = {
    "RNN_TANH": lambda **kw: nn.RNN(I, H, nonlinearity="tanh", **kw),
    "RNN_RELU": lambda **kw: nn.RNN(I, H, nonlinearity="relu", **kw),
    "LSTM": lambda **kw: nn.LSTM(I, H, **kw),
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


def _initial_state(mode: str, layers: int, directions: int, batched: bool, generator: torch.Generator):
    shape = (layers * directions, B, H) if batched else (layers * directions, H)
    h = torch.randn(*shape, dtype=DTYPE, generator=generator, requires_grad=True)
    if mode != "LSTM":
        return h
    c = torch.randn(*shape, dtype=DTYPE, generator=generator, requires_grad=True)
    return (h, c)


def _flatten(result) -> list[torch.Tensor]:
    out, state = result
    if isinstance(out, PackedSequence):
        out = pad_packed_sequence(out)[0]
    states = list(state) if isinstance(state, tuple) else [state]
    return [out, *states]


def _loss(tensors: list[torch.Tensor]) -> torch.Tensor:
    # distinct weights per tensor so that a gradient routed to the wrong place changes the result
    return sum((t * (k + 1)).sin().sum() for k, t in enumerate(tensors))


def _run(module: nn.Module, kind: str, given_state: bool, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inp, leaf = _make_input(kind, generator)
    directions = 2 if module.bidirectional else 1
    hx = (
        _initial_state(module.mode, module.num_layers, directions, kind != "unbatched", generator)
        if given_state
        else None
    )
    results = _flatten(module(inp, hx))
    _loss(results).backward()
    leaves = [leaf] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    grads = [leaf.grad for leaf in leaves] + [p.grad for p in module.parameters()]
    return results + [g.clone() for g in grads]


GRID = list(
    itertools.product(MODULES, (1, 2), (False, True), (True, False), INPUTS, (False, True), ("reference", "auto"))
)


@pytest.mark.parametrize("mode, layers, bidirectional, bias, kind, given_state, kernel", GRID)
def test_zero_noise_training_path_matches_torch(mode, layers, bidirectional, bias, kind, given_state, kernel):
    torch.manual_seed(0)
    plain = MODULES[mode](num_layers=layers, bidirectional=bidirectional, bias=bias, batch_first=kind == "batch_first")
    plain = plain.to(DTYPE)
    noisy = nrnn.register_noise(copy.deepcopy(plain), nrnn.NoiseConfig(additive=0.1, multiplicative=0.1))
    runtime_of(noisy).source = ZeroNoise("zero")
    if kernel == "auto" and mode == "LSTM":  # exercise the exact fused fast path too
        runtime_of(noisy).config = runtime_of(noisy).config.replace(multiplicative=0.0)
        runtime_of(noisy)._diffusion = None
    with use_kernel(kernel):
        got = _run(noisy, kind, given_state, seed=1)
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
        single = type(plain)(I if layer == 0 else H, H, **kwargs).to(DTYPE)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(single, f"{name}_l0").data.copy_(getattr(plain, f"{name}_l{layer}"))
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
