"""The compiled CPU kernels (``nrnn_plugin/compiled``) and the Python kernels against the autograd reference.

Every noisy layer (LSTM with every target and a projection, GRU, Elman tanh/relu, the NRNN) with every noise
form, multi-layer, bidirectional and packed, must give the reference's outputs and gradients on both back-ends
(the ``kernel_backend`` fixture) with the noise of the counter-based stream: the compiled kernels generate it in
their loops, the Python kernels from ``nrnn_plugin.philox``. Every comparison asserts which kernel ran.
In float64 with a loss that weighs every output differently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nrnn_testing import compiled_backward, compiled_or_skip
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import nrnn_plugin as nrnn
from nrnn_plugin import philox
from nrnn_plugin.compiled import build
from nrnn_plugin.compiled.kernels import compiled_kernel
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.counter_noise import CounterNoise
from nrnn_plugin.diffusion import BUILTIN_SCHEMES
from nrnn_plugin.layers import use_kernel
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.signature import LayerPass, LayerWeights
from nrnn_plugin.runtime import recording, replaying

DTYPE = torch.float64
NOISE = {
    "additive": dict(additive=0.3),
    "mult": dict(multiplicative=0.3),
    "add_mult": dict(additive=0.2, multiplicative=0.3),
    "shared_mult": dict(additive=0.2, multiplicative=0.3, shared_multiplicative=True),
    "milstein": dict(additive=0.2, multiplicative=0.3, scheme="milstein", dt=0.5),
    "reference": dict(additive=0.2, multiplicative=0.3, scheme="reference", dt=0.6),
    "reference_dt": dict(additive=0.2, scheme="reference", dt=0.6),
}
MODULES = {
    "LSTM": lambda: nn.LSTM(3, 5, num_layers=2, bidirectional=True),
    "LSTM_PROJ": lambda: nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=3),
    "GRU": lambda: nn.GRU(3, 5, num_layers=2, bidirectional=True),
    "RNN_TANH": lambda: nn.RNN(3, 5, num_layers=2, bidirectional=True),
    "RNN_RELU": lambda: nn.RNN(3, 5, num_layers=2, bidirectional=True, nonlinearity="relu"),
    "NRNN": lambda: nrnn.NRNN(3, 5, num_layers=2, bidirectional=True, learn_dt=True),
}


def _step(model: nn.Module, x, expect_compiled: bool | None) -> list[torch.Tensor]:
    model.zero_grad()
    out, state = model(x)
    data = out.data if isinstance(out, PackedSequence) else out
    if expect_compiled is not None:
        assert compiled_backward(data) == expect_compiled
    states = list(state) if isinstance(state, tuple) else [state]
    weights = torch.linspace(-1.0, 1.0, data.numel(), dtype=DTYPE).view(data.shape)
    ((data * weights).sum() + sum((s * s).sum() for s in states)).backward()
    return [data.detach(), *(s.detach() for s in states), *(p.grad.clone() for p in model.parameters())]


def _compare(mode: str, noise: dict, target: str, backend: str, packed: bool) -> None:
    torch.manual_seed(0)
    model = MODULES[mode]().to(DTYPE)
    nrnn.register_noise(model, NoiseConfig(seed=3, target=target, **noise)).train()
    x = torch.randn(6, 4, 3, dtype=DTYPE)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([6, 2, 5, 3]), enforce_sorted=False)
    with recording(model) as tapes:
        got = _step(model, x, expect_compiled=backend == "compiled")
    with replaying(model, tapes), use_kernel("reference"):
        expected = _step(model, x, expect_compiled=False)
    assert all(type(d).__name__ == "NoiseKey" for tape in tapes.values() for d in tape.draws)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("noise", list(NOISE))
@pytest.mark.parametrize("mode", list(MODULES))
def test_every_layer_and_noise_form_matches_the_reference(mode, noise, kernel_backend):
    _compare(mode, NOISE[noise], "h", kernel_backend, packed=noise in ("add_mult", "milstein"))


@pytest.mark.parametrize("target", ["c", "both"])
@pytest.mark.parametrize("mode", ["LSTM", "LSTM_PROJ"])
@pytest.mark.parametrize("noise", ["add_mult", "reference"])
def test_lstm_noise_on_the_cell_matches_the_reference(mode, target, noise, kernel_backend):
    _compare(mode, NOISE[noise], target, kernel_backend, packed=target == "both")


def test_the_compiled_generator_is_the_definition_bit_for_bit():
    compiled_or_skip()
    for seed, offset, start, count in (
        (0, 0, 0, 1_000_003),
        (123456789, 7, 3, 10_001),
        ((1 << 64) - 1, 1 << 40, 5, 999),
    ):
        fast, definition = build.gaussian(seed, offset, start, count), philox.gaussian(seed, offset, start, count)
        assert torch.equal(fast.view(torch.int32), definition.view(torch.int32))


def _pass(mode: str, dtype: torch.dtype, noise: dict, target: str = "h", proj: int = 0) -> tuple[LayerPass, list]:
    """A small layer-direction with counter-based noise of a packed layout and leaf tensors to differentiate."""
    gen = torch.Generator().manual_seed(1)
    gates = {"LSTM": 4, "GRU": 3}.get(mode, 1)
    hidden, units = 3, proj or 3
    layout = SequenceLayout((3, 3, 2, 1))

    def leaf(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=dtype) * 0.5).requires_grad_()

    x, w_ih, w_hh = leaf(layout.rows, 2), leaf(gates * hidden, 2), leaf(gates * hidden, units)
    b_ih, b_hh, h0, c0 = leaf(gates * hidden), leaf(gates * hidden), leaf(3, units), leaf(3, hidden)
    w_hr = leaf(units, hidden) if proj else None
    config = NoiseConfig(**noise)
    diffusion = BUILTIN_SCHEMES[config.scheme](config)

    def counter(units_: int, start: int) -> CounterNoise:
        planes = diffusion.planes(units_)
        starts = tuple(start + sum(planes[:k]) * layout.rows for k in range(len(planes)))
        return CounterNoise(11, 2, starts, planes, layout.rows, units_, diffusion, 1.0)

    noise_h = counter(units, 0) if target in ("h", "both") else None
    noise_c = counter(hidden, 1000) if target in ("c", "both") else None
    weights = LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr)
    pass_ = LayerPass(x, layout, weights, h0, c0 if mode == "LSTM" else None, noise_h, noise_c, reverse=True)
    leaves = [x, w_ih, w_hh, b_ih, b_hh, h0] + ([c0] if mode == "LSTM" else []) + ([w_hr] if proj else [])
    return pass_, leaves


GRADCHECK = [
    ("LSTM", dict(additive=0.2, multiplicative=0.2), "both", 0),
    ("LSTM", dict(additive=0.2, multiplicative=0.3, scheme="milstein", dt=0.5), "h", 2),
    ("LSTM", dict(additive=0.2, multiplicative=0.3, scheme="reference", dt=0.6), "c", 0),
    ("GRU", dict(additive=0.2, multiplicative=0.2, shared_multiplicative=True), "h", 0),
    ("RNN_TANH", dict(additive=0.2, multiplicative=0.2), "h", 0),
    ("RNN_RELU", dict(additive=0.2, multiplicative=0.2), "h", 0),
]


@pytest.mark.parametrize("mode, noise, target, proj", GRADCHECK)
def test_gradcheck_and_gradgradcheck_of_the_compiled_kernels(mode, noise, target, proj):
    """Backward against finite differences; double backward (recomputed through the reference) likewise."""
    compiled_or_skip()
    pass_, leaves = _pass(mode, DTYPE, noise, target, proj)

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, w_ih, w_hh, b_ih, b_hh, h0, *rest = tensors
        c0 = rest.pop(0) if mode == "LSTM" else None
        w_hr = rest.pop(0) if proj else None
        weights = LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr)
        p = LayerPass(x, pass_.layout, weights, h0, c0, pass_.noise_h, pass_.noise_c, reverse=True)
        out, h_n, c_n = compiled_kernel(mode, p)
        assert compiled_backward(out)
        return (out, h_n) if c_n is None else (out, h_n, c_n)

    assert torch.autograd.gradcheck(run, leaves)
    assert torch.autograd.gradgradcheck(run, leaves)


def test_gradcheck_of_the_compiled_nrnn_kernel():
    compiled_or_skip()
    model = nrnn.NRNN(2, 3, learn_dt=True).to(DTYPE)
    nrnn.register_noise(model, NoiseConfig(additive=0.2, multiplicative=0.2, seed=0)).train()
    x = torch.randn(4, 2, 2, dtype=DTYPE, requires_grad=True)
    with recording(model) as tapes:
        out, _ = model(x)
    assert compiled_backward(out)

    def run(inputs: torch.Tensor) -> torch.Tensor:
        with replaying(model, tapes):
            return model(inputs)[0]

    assert torch.autograd.gradcheck(run, (x,))
    assert torch.autograd.gradgradcheck(run, (x,))


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_opcheck_schemas_fakes_and_autograd_registration(mode, monkeypatch):
    """torch.library.opcheck (schema, fake implementation, autograd registration, AOT dispatch) on the arguments
    the layers pass."""
    compiled_or_skip()
    name = {"LSTM": "lstm_forward", "GRU": "gru_forward"}.get(mode, "elman_forward")
    op = getattr(torch.ops.nrnn, name)
    calls: list[tuple] = []
    monkeypatch.setattr(torch.ops.nrnn, name, lambda *args: calls.append(args) or op(*args))
    target = "both" if mode == "LSTM" else "h"
    compiled_kernel(mode, _pass(mode, torch.float32, dict(additive=0.2, multiplicative=0.2), target)[0])
    assert len(calls) == 1
    monkeypatch.undo()
    result = torch.library.opcheck(op.default, calls[0])
    assert all(v == "SUCCESS" for v in result.values()), result


def _python(code: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=tmp_path,
        timeout=300,
    )


TRAIN = """
import torch, nrnn_plugin as nrnn
from nrnn_plugin.compiled import build
lstm = nrnn.register_noise(torch.nn.GRU(3, 4), nrnn.NoiseConfig(additive=0.1, multiplicative=0.1, seed=0)).train()
for _ in range(2):
    out, _ = lstm(torch.randn(5, 2, 3))
    out.sum().backward()
print("backend", build.backend(), type(out.grad_fn.next_functions[0][0]).__name__)
"""


def test_without_a_compiler_the_python_kernels_run_and_one_line_says_how_to_enable(tmp_path):
    env = {"CXX": str(tmp_path / "no-such-compiler"), "NRNN_KERNELS_CACHE": str(tmp_path / "cache")}
    result = _python(TRAIN, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "backend python GRUSequenceBackward" in result.stdout
    notices = [line for line in result.stderr.splitlines() if "nrnn_plugin" in line]
    assert len(notices) == 1, result.stderr  # once, in one line, for two training steps
    assert "no C++ compiler" in notices[0] and "python -m nrnn_plugin.compiled" in notices[0]
    quiet = _python(TRAIN, {**env, "NRNN_KERNELS": "python"}, tmp_path)
    assert quiet.returncode == 0 and "backend python" in quiet.stdout and "nrnn_plugin" not in quiet.stderr
    strict = _python(TRAIN, {**env, "NRNN_KERNELS": "compiled"}, tmp_path)
    assert strict.returncode != 0 and "NRNN_KERNELS=compiled" in strict.stderr


def test_the_cache_key_covers_sources_flags_and_the_machine(monkeypatch):
    key = build._cache_key(("-O3",), "c++")
    assert build._cache_key(("-O3", "-march=native"), "c++") != key
    monkeypatch.setattr(build, "_cpu_flags", lambda: "another machine")
    assert build._cache_key(("-O3",), "c++") != key
    monkeypatch.setenv("NRNN_KERNELS_ISA", "native")
    assert build.isa_flags() == ("-march=native",)
