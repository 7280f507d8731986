"""Works wherever the user's model already works: torch.compile, torch.export, TorchScript, ONNX.

* ``torch.compile(model)`` (default backend, inductor) trains every kernel family with noise live and gradients
  equal to eager: the noisy forward runs eagerly inside the compiled model (a graph break, as Dynamo makes for a
  plain ``nn.LSTM``), the draws advance the stream as in eager;
* the compiled operators are ``torch.library`` ops with fake implementations: they compile with
  ``fullgraph=True`` and export;
* ``torch.jit.script`` of a noisy model and ``torch.jit.trace`` / ``torch.export`` while noise is injected give an
  error that says what to do; the eval model traces, exports and converts to ONNX as the plain model does.

Compilation is slow: one small model per kernel family, two training steps.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from nrnn_testing import compiled_backward, compiled_or_skip
from torch import nn
from torch._dynamo.utils import counters

import nrnn_plugin as nrnn
from nrnn_plugin.compiled.kernels import compiled_kernel
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.counter_noise import CounterNoise
from nrnn_plugin.diffusion import EulerMaruyama
from nrnn_plugin.layers import NRNNCell, use_kernel
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.signature import LayerPass, LayerWeights
from nrnn_plugin.runtime import noise_control

NOISE = dict(additive=0.1, multiplicative=0.1, seed=0)


class Model(nn.Module):
    """Linear -> noisy recurrent layer (or a cell unrolled in Python) -> Linear -> mean square."""

    def __init__(self, rnn: nn.Module, cell: bool = False) -> None:
        super().__init__()
        self.inp, self.rnn, self.out, self.cell = nn.Linear(3, 4), rnn, nn.Linear(5, 1), cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inp(x)
        if self.cell:
            h, outs = None, []
            for t in range(z.shape[0]):
                h = self.rnn(z[t], h)
                outs.append(h[0] if isinstance(h, tuple) else h)
            return self.out(torch.stack(outs)).square().mean()
        return self.out(self.rnn(z)[0]).square().mean()


CASES = {  # kind: (module, noise, kernel choice)
    "lstm_compiled": (lambda: nn.LSTM(4, 5), NOISE, "compiled"),
    "lstm_fused": (lambda: nn.LSTM(4, 5), dict(additive=0.1, seed=0), "fused"),
    "lstm_function": (lambda: nn.LSTM(4, 5), NOISE, "function"),
    "gru_compiled": (lambda: nn.GRU(4, 5), NOISE, "compiled"),
    "rnn_function": (lambda: nn.RNN(4, 5), NOISE, "function"),
    "nrnn_compiled": (lambda: nrnn.NRNN(4, 5), NOISE, "compiled"),
    "nrnn_function": (lambda: nrnn.NRNN(4, 5), NOISE, "function"),
    "lstm_cell": (lambda: nn.LSTMCell(4, 5), NOISE, "auto"),
    "nrnn_cell": (lambda: NRNNCell(4, 5), NOISE, "auto"),
}


@pytest.mark.parametrize("allow_rnn", [False, True], ids=["default", "allow_rnn"])
@pytest.mark.parametrize("kind", list(CASES))
def test_torch_compile_trains_with_live_noise_and_the_eager_gradients(kind, allow_rnn):
    """By default Dynamo runs a frame that calls a recurrent module eagerly (as for a plain nn.LSTM); with
    ``allow_rnn`` it compiles the model around the noisy layer, which still runs eagerly."""
    make, noise, kernel = CASES[kind]
    if kernel == "compiled":
        compiled_or_skip()
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    base = nrnn.register_noise(Model(make(), cell=kind.endswith("cell")), NoiseConfig(**noise))
    eager, compiled = copy.deepcopy(base), copy.deepcopy(base)
    step = torch.compile(compiled)  # the default backend (inductor)
    x = torch.randn(6, 2, 3)
    losses = []
    with use_kernel(kernel), torch._dynamo.config.patch(allow_rnn=allow_rnn):
        for _ in range(2):
            expected, got = eager(x), step(x)
            expected.backward()
            got.backward()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
            for a, b in zip(eager.parameters(), compiled.parameters()):
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)
                a.grad = b.grad = None
            losses.append(got.item())
        with noise_control(compiled, inject=False):
            clean = step(x).item()
    assert losses[0] != losses[1] and clean not in losses  # noise is live and the stream advances
    if allow_rnn:  # the model around the noisy layer was compiled
        assert counters["stats"]["unique_graphs"] >= 1


_GEN = torch.Generator().manual_seed(0)
_WEIGHTS = LayerWeights(*(torch.randn(*s, generator=_GEN) * 0.5 for s in ((9, 3), (9, 3), (9,), (9,))))
_LAYOUT = SequenceLayout.padded(4, 2)
_NOISE = CounterNoise(7, 0, (0, 24), (3, 3), 8, 3, EulerMaruyama(NoiseConfig(additive=0.1, multiplicative=0.1)))


def _layer_pass(x: torch.Tensor) -> LayerPass:
    """A GRU layer-direction over 4 steps of 2 samples with counter-based noise (built outside compiled code)."""
    return LayerPass(x, _LAYOUT, _WEIGHTS, torch.zeros(2, 3), None, _NOISE, None)


def test_the_compiled_operators_compile_with_fullgraph_and_export():
    compiled_or_skip()
    x = torch.randn(8, 3, requires_grad=True)

    def run(inputs: torch.Tensor) -> torch.Tensor:
        out, h_n, _ = compiled_kernel("GRU", _layer_pass(inputs))
        return out.sum() + h_n.square().sum()

    expected = run(x)
    (grad,) = torch.autograd.grad(expected, x)
    got = torch.compile(run, fullgraph=True)(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], grad)

    class Layer(nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return compiled_kernel("GRU", _layer_pass(inputs))[0]

    exported = torch.export.export(Layer(), (x.detach(),))
    assert "nrnn.gru_forward" in str(exported.graph)
    torch.testing.assert_close(exported.module()(x.detach()), Layer()(x.detach()))


MODULES = {"lstm": lambda: nn.LSTM(3, 4), "gru": lambda: nn.GRU(3, 4), "nrnn": lambda: nrnn.NRNN(3, 4)}


class Head(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("kind", list(MODULES))
def test_script_trace_and_export_say_what_to_do_and_the_eval_model_exports(kind):
    torch.manual_seed(0)
    model = nrnn.register_noise(Head(MODULES[kind]()), NoiseConfig(**NOISE))
    x = torch.randn(5, 2, 3)
    with pytest.raises(RuntimeError, match=r"torch.jit.script.*remove_noise"):
        torch.jit.script(model)
    assert nrnn.is_noisy(model)  # scripting did not strip the noise
    model.train()
    with pytest.raises(RuntimeError, match=r"torch.jit.trace .*freeze one noise draw.*model.eval\(\)"):
        torch.jit.trace(model, (x,))
    with pytest.raises(Exception, match=r"freeze one noise draw"):
        torch.export.export(model, (x,))
    model.eval()
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.jit.trace(model, (x,))(x), expected)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected)
    if kind != "nrnn":  # the NRNN classes are not scriptable even without noise (as documented)
        plain = nrnn.remove_noise(copy.deepcopy(model))
        torch.testing.assert_close(torch.jit.script(plain)(x), expected)


def test_onnx_export_of_the_eval_model():
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = nrnn.register_noise(Head(nn.LSTM(3, 4)), NoiseConfig(**NOISE)).eval()
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), rtol=1e-5, atol=1e-6)


def test_the_compiled_kernel_ran_in_the_compile_test_setup():
    """The "compiled" cases above really ran the compiled operators (not a silent fallback)."""
    compiled_or_skip()
    model = nrnn.register_noise(nn.GRU(4, 5), NoiseConfig(**NOISE)).train()
    with use_kernel("compiled"):
        out, _ = model(torch.randn(3, 2, 4))
    assert compiled_backward(out)
