"""The noisy layers' entry point into the compiled operators: the kernel signature in, the results out.

:func:`compiled_kernel` has the contract of every sequence kernel
(``kernel(mode, LayerPass) -> (out, h_n, c_n | None)``, :mod:`nrnn_plugin.layers.signature`); :func:`nrnn` that of
:func:`nrnn_plugin.layers.nrnn_reference.reference_unroll`. Counter-based noise of a built-in scheme
(:class:`~nrnn_plugin.counter_noise.CounterNoise`) is handed to the operator as its key, so the kernel generates
it in its loops and again in backward; any other noise (a plugin's sampler or scheme, replayed tensors, the
regularizer's mean probes) is handed over as coefficient tensors.

Where the operators do not apply (not the CPU, a dtype other than float32/float64, coefficients or a probe scale
that require grad, ``torch.func`` transforms, forward-mode AD) the Python kernels run instead
(:func:`~nrnn_plugin.layers.functions.function_kernel`, which hands over to the reference where it must).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nrnn_plugin.compiled import ops
from nrnn_plugin.compiled.recompute import SCHEME_CODES
from nrnn_plugin.counter_noise import CounterNoise, StateNoise, as_coefficients
from nrnn_plugin.layers.functions import coefficient_tensors, function_kernel, needs_reference
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.signature import MODES, LayerPass

__all__ = ["compiled_kernel", "applies", "nrnn", "nrnn_applies", "DTYPES"]

DTYPES = (torch.float32, torch.float64)
_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= (1 << 63) else value


def _usable(*tensors: Tensor | None) -> bool:
    first = next(t for t in tensors if t is not None)
    return (
        first.device.type == "cpu"
        and first.dtype in DTYPES
        and all(t is None or (t.device == first.device and t.dtype == first.dtype) for t in tensors)
    )


def applies(mode: str, p: LayerPass) -> bool:
    """True when the compiled operator can run this layer-direction (see the module docstring)."""
    w = p.weights
    if not _usable(p.x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, p.h0, p.c0):
        return False
    return not needs_reference(p.noise_h, p.noise_c if mode == "LSTM" else None)


def _scale(noise: CounterNoise) -> float | None:
    """The probe scale as a number, or ``None`` when it must stay a tensor (it requires grad, or is off the CPU)."""
    scale = noise.scale
    if not isinstance(scale, Tensor):
        return float(scale)
    if scale.requires_grad or scale.device.type != "cpu":
        return None
    return float(scale)


def _op_noise(
    states: list[tuple[StateNoise, int]], rows: int, like: Tensor
) -> tuple[tuple[object, ...], list[Tensor | None]]:
    """The operators' noise arguments ``(rng, scheme, sigma_add, sigma_mult, dt, shared, scale, keyed)`` and the
    coefficient tensors ``(gate, mult, add)`` of every state, from each state's noise and units."""
    keys = [[0, 0, 0, 0], [0, 0, 0, 0]]
    params: tuple[int, float, float, float, bool, float] | None = None
    keyed = 0
    coefs: list[Tensor | None] = []
    for i, (noise, units) in enumerate(states):
        if isinstance(noise, CounterNoise) and type(noise.diffusion) in SCHEME_CODES:
            d, scale = noise.diffusion, _scale(noise)
            mine = None if scale is None else (SCHEME_CODES[type(d)], d.sigma_add, d.sigma_mult, d.dt, d.shared, scale)
            if mine is not None and (params is None or params == mine):
                params = mine
                starts = [*noise.starts, 0, 0][:2]
                keys[i] = [_signed(noise.seed), _signed(noise.offset), *(_signed(s) for s in starts)]
                keyed |= 1 << i
                coefs += [None, None, None]
                continue
        gate, mult, add = coefficient_tensors(as_coefficients(noise, like), rows, units, like, "noise_" + "hc"[i])
        coefs += [None if c is None else c.contiguous() for c in (gate, mult, add)]
    code, sigma_add, sigma_mult, dt, shared, scale = params if params is not None else (0, 0.0, 0.0, 1.0, False, 1.0)
    rng = torch.tensor(keys, dtype=torch.long)
    return (rng, code, sigma_add, sigma_mult, dt, shared, scale, keyed), coefs


def compiled_kernel(mode: str, p: LayerPass) -> tuple[Tensor, Tensor, Tensor | None]:
    """One noisy layer-direction through the compiled operator; the contract of every sequence kernel."""
    if mode not in MODES:
        raise ValueError(f"compiled_kernel: mode must be one of {MODES}, got {mode!r}")
    if not applies(mode, p) or not ops.register():
        return function_kernel(mode, p)
    w, layout = p.weights, p.layout
    batch_sizes = layout.batch_sizes()
    x = p.x.contiguous()
    if mode == "LSTM":
        assert p.c0 is not None
        states = [(p.noise_h, w.state_size), (p.noise_c, w.hidden_size)]
        noise, coefs = _op_noise(states, layout.rows, x)
        out, h_n, c_n, *_ = torch.ops.nrnn.lstm_forward(
            x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, p.h0, p.c0, batch_sizes, p.reverse, *noise, *coefs
        )
        return out, h_n, c_n
    noise, coefs = _op_noise([(p.noise_h, w.state_size)], layout.rows, x)
    if mode == "GRU":
        out, h_n, *_ = torch.ops.nrnn.gru_forward(
            x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, p.h0, batch_sizes, p.reverse, *noise, *coefs
        )
    else:
        out, h_n, _ = torch.ops.nrnn.elman_forward(
            x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, p.h0, batch_sizes, p.reverse, mode == "RNN_RELU", *noise, *coefs
        )
    return out, h_n, None


def nrnn_applies(xw: Tensor, kernel: Tensor, step: Tensor | float) -> bool:
    """True when :func:`nrnn` can run (CPU, float32/float64, one dtype)."""
    return _usable(xw, kernel, step if isinstance(step, Tensor) else None)


def nrnn(
    xw: Tensor,
    layout: SequenceLayout,
    kernel: Tensor,
    step: Tensor | float,
    h0: Tensor,
    noise: StateNoise,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """The NRNN recursion of one layer and direction through the compiled operator (``nrnn_reference``'s
    contract; the caller checks :func:`nrnn_applies` and that the noise needs no reference)."""
    if not ops.register():
        raise RuntimeError("compiled NRNN kernel: the compiled kernels are not loaded")
    args, coefs = _op_noise([(noise, kernel.shape[1])], layout.rows, xw)
    tensor_step = step if isinstance(step, Tensor) else None
    value = 0.0 if tensor_step is not None else float(step)
    out, h_n, _, _ = torch.ops.nrnn.nrnn_forward(
        xw.contiguous(), kernel, tensor_step, value, h0, layout.batch_sizes(), reverse, *args, *coefs
    )
    return out, h_n
