"""Noisy drop-in versions of ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``.

The classes add no parameters: :func:`nrnn_plugin.register_noise` switches an existing module to them by
class reassignment. In eval mode (or whenever the module's runtime says no noise) ``forward`` is the original
fused forward, unchanged. In training the layer is unrolled with noise injected into the hidden state(s)
after every step; every ``nn.RNNBase`` option is supported except ``proj_size``: layers, inter-layer dropout,
bidirectional, ``batch_first``, ``bias``, packed sequences (sorted and unsorted), unbatched input, given or
zero initial state.

Kernels (chosen per layer, see :func:`use_kernel`):

* ``fused``: LSTM with additive noise on ``h`` only runs PyTorch's fused kernel on an augmented input
  (:mod:`.fused_lstm`, exact);
* ``function``: hand-written forward/backward over the whole sequence (:mod:`.functions`), the fast path
  for all other cases;
* ``reference``: plain autograd unroll (:mod:`.reference`), supports higher-order derivatives.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.layers.fused_lstm import lstm_additive_fused
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.reference import reference_unroll
from nrnn_plugin.runtime import NoiseRuntime

__all__ = [
    "NoisyRNN",
    "NoisyLSTM",
    "NoisyGRU",
    "NoisyRecurrentMixin",
    "use_kernel",
    "current_kernel",
    "KERNELS",
    "autocast_dtype",
]

KERNELS = ("auto", "fused", "function", "reference")
_kernel_choice: contextvars.ContextVar[str] = contextvars.ContextVar("nrnn_kernel", default="auto")

#: Sequence kernels with a hand-written backward, by ``nn.RNNBase.mode``; filled by :mod:`.functions`.
FUNCTION_KERNELS: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor | None]]] = {}


@contextlib.contextmanager
def use_kernel(kind: str) -> Iterator[None]:
    """Choose the kernel of noisy sequence layers inside the block.

    ``"auto"`` (default): ``fused`` where it is exact, else ``function``. ``"reference"``: autograd unroll
    everywhere (needed for higher-order derivatives and ``torch.func`` transforms). ``"function"``: never the
    fused LSTM path. ``"fused"``: like auto (the fused path only applies where it is exact).
    """
    if kind not in KERNELS:
        raise ValueError(f"use_kernel: kind must be one of {KERNELS}, got {kind!r}")
    token = _kernel_choice.set(kind)
    try:
        yield
    finally:
        _kernel_choice.reset(token)


def current_kernel() -> str:
    """The kernel choice in effect (``"auto"`` unless inside :func:`use_kernel`)."""
    return _kernel_choice.get()


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast compute dtype active for ``device_type``, or ``None`` outside autocast."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


class NoisyRecurrentMixin:
    """Noise injection for ``nn.RNNBase`` subclasses; placed before the torch class in the MRO."""

    #: the class :func:`remove_noise` restores.
    nrnn_original_class: ClassVar[type[nn.Module]]
    _nrnn_runtime: NoiseRuntime

    @classmethod
    def nrnn_validate(cls, module: nn.Module, config: NoiseConfig) -> None:
        """Raise ``ValueError`` if ``module``'s options cannot be made noisy with ``config``."""
        name = type(module).__name__
        if getattr(module, "proj_size", 0):
            raise ValueError(
                f"{name} with proj_size={module.proj_size} is not supported by nrnn-plugin: noise is defined "
                "on the full hidden state; use proj_size=0 or exclude this module (NoiseConfig.exclude)"
            )
        if config.target == "c" and module.mode != "LSTM":
            raise ValueError(
                f"NoiseConfig.target: expected 'h' or 'both' for {name} (it has no cell state), got 'c'"
            )

    def forward(self, input: Tensor | PackedSequence, hx: Any = None) -> Any:  # noqa: A002 (torch's name)
        runtime = getattr(self, "_nrnn_runtime", None)
        if runtime is None or not runtime.injecting(self.training):  # type: ignore[attr-defined]
            return super().forward(input, hx)  # type: ignore[misc]
        return noisy_sequence_forward(self, input, hx, runtime)  # type: ignore[arg-type]


class NoisyRNN(NoisyRecurrentMixin, nn.RNN):
    """``nn.RNN`` (tanh or relu) with SDE noise on the hidden state during training."""

    nrnn_original_class = nn.RNN


class NoisyLSTM(NoisyRecurrentMixin, nn.LSTM):
    """``nn.LSTM`` with SDE noise on ``h``, ``c`` or both during training."""

    nrnn_original_class = nn.LSTM


class NoisyGRU(NoisyRecurrentMixin, nn.GRU):
    """``nn.GRU`` with SDE noise on the hidden state during training."""

    nrnn_original_class = nn.GRU


# ---------------------------------------------------------------------------------------------- forward


def _layer_weights(module: nn.RNNBase, layer: int, direction: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    w_ih = getattr(module, "weight_ih" + suffix)
    w_hh = getattr(module, "weight_hh" + suffix)
    if not module.bias:
        return w_ih, w_hh, None, None
    return w_ih, w_hh, getattr(module, "bias_ih" + suffix), getattr(module, "bias_hh" + suffix)


def _cast(weights: tuple[Tensor | None, ...], dtype: torch.dtype) -> tuple[Any, ...]:
    return tuple(None if w is None else w.to(dtype) for w in weights)


def noisy_sequence_forward(module: nn.RNNBase, input: Tensor | PackedSequence, hx: Any, runtime: NoiseRuntime) -> Any:  # noqa: A002
    """Training forward of a noisy ``nn.RNNBase`` module; same signature and results as ``module.forward``."""
    is_lstm = module.mode == "LSTM"
    directions = 2 if module.bidirectional else 1
    hidden = module.hidden_size
    module_name = type(module).__name__

    # ---- normalise the input to the packed row layout [N, I]
    if isinstance(input, PackedSequence):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        layout = SequenceLayout.from_batch_sizes(batch_sizes)
        batched, batch_dim = True, 1
        if hx is not None:
            module.check_forward_args(data, hx, batch_sizes)
            hx = module.permute_hidden(hx, sorted_indices)
    else:
        if input.dim() not in (2, 3):
            raise ValueError(f"{module_name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        batch_dim = 0 if module.batch_first else 1
        x = input if batched else input.unsqueeze(batch_dim)
        batch_sizes = sorted_indices = unsorted_indices = None
        if hx is not None:
            if not batched:
                hx = tuple(h.unsqueeze(1) for h in hx) if is_lstm else hx.unsqueeze(1)
            module.check_forward_args(x, hx, None)
        if module.batch_first:
            x = x.transpose(0, 1)
        steps, batch = x.shape[0], x.shape[1]
        layout = SequenceLayout.padded(steps, batch)
        data = x.reshape(steps * batch, x.shape[2])
        if hx is None and x.shape[2] != module.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {module.input_size}, got {x.shape[2]}")

    if hx is None:
        zeros = data.new_zeros(module.num_layers * directions, layout.batch, hidden)
        h0, c0 = zeros, (zeros if is_lstm else None)
    elif is_lstm:
        h0, c0 = hx
    else:
        h0, c0 = hx, None

    # ---- compute dtype (autocast) and device
    compute_dtype = autocast_dtype(data.device.type) or data.dtype
    with torch.autocast(data.device.type, enabled=False):
        data = data.to(compute_dtype)
        h0 = h0.to(compute_dtype)
        c0 = c0.to(compute_dtype) if c0 is not None else None
        output, h_n, c_n = _run_layers(module, runtime, data, layout, batch_sizes, h0, c0, compute_dtype)

    # ---- restore the caller's shapes and order
    if isinstance(input, PackedSequence):
        output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
    else:
        output = output.view(layout.steps, layout.batch, output.shape[1])
        if module.batch_first:
            output = output.transpose(0, 1).contiguous()
        if not batched:
            output = output.squeeze(batch_dim)
    if is_lstm:
        state: Any = module.permute_hidden((h_n, c_n), unsorted_indices)
        if not batched:
            state = (state[0].squeeze(1), state[1].squeeze(1))
    else:
        state = module.permute_hidden(h_n, unsorted_indices)
        if not batched:
            state = state.squeeze(1)
    return output, state


def _run_layers(
    module: nn.RNNBase,
    runtime: NoiseRuntime,
    data: Tensor,
    layout: SequenceLayout,
    batch_sizes: Tensor | None,
    h0: Tensor,
    c0: Tensor | None,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor | None]:
    mode = module.mode
    is_lstm = mode == "LSTM"
    directions = 2 if module.bidirectional else 1
    hidden = module.hidden_size
    targets = runtime.targets(has_cell_state=is_lstm)
    diffusion = runtime.diffusion()
    choice = current_kernel()
    fused = (
        is_lstm
        and choice in ("auto", "fused")
        and targets == ("h",)
        and diffusion.is_additive
        and not runtime.use_mean
    )
    function_kernel = FUNCTION_KERNELS.get(mode) if choice in ("auto", "fused", "function") else None

    layer_input = data
    h_finals: list[Tensor] = []
    c_finals: list[Tensor] = []
    for layer in range(module.num_layers):
        weights = [_cast(_layer_weights(module, layer, d), dtype) for d in range(directions)]
        rows = slice(layer * directions, (layer + 1) * directions)
        noise = runtime.draw(
            layout.rows, hidden, targets, directions=directions, device=data.device, dtype=dtype
        )
        if fused and all(n["h"].add is not None for n in noise):
            assert c0 is not None
            out, h_n, c_n = lstm_additive_fused(
                layer_input, layout, batch_sizes, weights, h0[rows], c0[rows], [n["h"].add for n in noise], module.training
            )
            h_finals.extend(h_n.unbind(0))
            c_finals.extend(c_n.unbind(0))
        else:
            kernel = function_kernel or functools.partial(reference_unroll, mode)
            outs = []
            for d in range(directions):
                out_d, h_d, c_d = kernel(
                    layer_input,
                    layout,
                    *weights[d],
                    h0[layer * directions + d],
                    None if c0 is None else c0[layer * directions + d],
                    noise[d].get("h"),
                    noise[d].get("c"),
                    d == 1,
                )
                outs.append(out_d)
                h_finals.append(h_d)
                if c_d is not None:
                    c_finals.append(c_d)
            out = outs[0] if directions == 1 else torch.cat(outs, dim=1)
        last = layer == module.num_layers - 1
        if not last and module.dropout > 0.0 and module.training:
            layer_input = F.dropout(out, module.dropout, training=True)
        else:
            layer_input = out
    h_n = torch.stack(h_finals)
    c_n = torch.stack(c_finals) if is_lstm else None
    return layer_input, h_n, c_n
