"""Noisy drop-in versions of ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``.

The classes add no parameters: :func:`nrnn_plugin.register_noise` switches an existing module to them by
class reassignment. In eval mode (or whenever the module's runtime says no noise) ``forward`` is the original
fused forward, unchanged. In training the layer is unrolled with noise injected into the hidden state(s)
after every step; every ``nn.RNNBase`` option is supported: layers, inter-layer dropout, bidirectional,
``batch_first``, ``bias``, packed sequences (sorted and unsorted), unbatched input, given or zero initial
state, and an LSTM's ``proj_size`` (noise on the projected ``h`` of ``proj_size`` units and on the cell ``c``
of ``hidden_size`` units). The kernel each layer runs is chosen by :mod:`.kernels`.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.counter_noise import StateNoise, as_coefficients
from nrnn_plugin.layers.fused_lstm import lstm_additive_fused
from nrnn_plugin.layers.kernels import compiled_applies, fused_allowed, sequence_kernel
from nrnn_plugin.layers.layout import SequenceLayout
from nrnn_plugin.layers.precision import autocast_disabled, autocast_dtype
from nrnn_plugin.layers.sequence_io import (
    FlatInput,
    batched_state,
    flatten_input,
    prepare_state,
    restore_output,
    restore_state,
    zero_state,
)
from nrnn_plugin.layers.signature import LayerPass, layer_weights
from nrnn_plugin.runtime import NoiseRuntime, refuse_scripting, runtime_of

__all__ = ["NoisyRNN", "NoisyLSTM", "NoisyGRU", "NoisyRecurrentMixin", "noisy_sequence_forward"]


class NoisyRecurrentMixin:
    """Noise injection for ``nn.RNNBase`` subclasses; placed before the torch class in the MRO."""

    #: the class :func:`remove_noise` restores.
    nrnn_original_class: ClassVar[type[nn.Module]]

    @classmethod
    def nrnn_validate(cls, module: nn.Module, config: NoiseConfig) -> None:
        """Raise ``ValueError`` if ``module``'s options cannot be made noisy with ``config``."""
        name = type(module).__name__
        if config.target == "c" and getattr(module, "mode", "") != "LSTM":
            raise ValueError(f"NoiseConfig.target: expected 'h' or 'both' for {name} (it has no cell state), got 'c'")

    def __prepare_scriptable__(self) -> NoReturn:
        refuse_scripting(self)  # torch.jit.script of a noisy module: an error that says what to do

    # torch.compile: a graph break here, as Dynamo makes for a plain nn.RNN/LSTM/GRU; the noisy forward (and the
    # eval forward) run eagerly, with the noise stream advancing exactly as without compile
    @torch.compiler.disable
    def forward(self, input: Tensor | PackedSequence, hx: Any = None) -> Any:  # noqa: A002 (torch's name)
        assert isinstance(self, nn.RNNBase)
        runtime = runtime_of(self)
        if runtime is None or not runtime.injecting(self.training) or _is_empty(input, self.batch_first):
            return super().forward(input, hx)  # type: ignore[misc]
        return noisy_sequence_forward(self, input, hx, runtime)


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


def _is_empty(input: Tensor | PackedSequence, batch_first: bool) -> bool:  # noqa: A002
    """True for a padded batch with no samples or no steps: no state is updated, so there is no noise to add."""
    if isinstance(input, PackedSequence) or not isinstance(input, Tensor) or input.dim() != 3:
        return False
    return input.shape[0] == 0 or input.shape[1] == 0


def noisy_sequence_forward(module: nn.RNNBase, input: Tensor | PackedSequence, hx: Any, runtime: NoiseRuntime) -> Any:  # noqa: A002
    """Training forward of a noisy ``nn.RNNBase`` module; same signature and results as ``module.forward``."""
    is_lstm = module.mode == "LSTM"
    directions = 2 if module.bidirectional else 1
    flat = flatten_input(input, batch_first=module.batch_first, owner=type(module).__name__)
    if hx is not None:
        hx = batched_state(flat, tuple(hx) if is_lstm else hx)
        if flat.packed is not None:
            module.check_forward_args(flat.data, hx, flat.packed.batch_sizes)
        else:
            assert isinstance(input, Tensor)
            batched = input if flat.batched else input.unsqueeze(0 if module.batch_first else 1)
            module.check_forward_args(batched, hx, None)
        hx = prepare_state(flat, hx)
    elif flat.data.shape[1] != module.input_size:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {module.input_size}, got {flat.data.shape[1]}"
        )
    if hx is None:
        layers = module.num_layers * directions
        h0 = zero_state(flat, layers, _state_size(module), flat.data)
        c0 = zero_state(flat, layers, module.hidden_size, flat.data) if is_lstm else None
    elif is_lstm:
        h0, c0 = hx
    else:
        h0, c0 = hx, None

    device_type = flat.data.device.type
    dtype = autocast_dtype(device_type) or flat.data.dtype
    with autocast_disabled(device_type):
        output, h_n, c_n = _run_layers(
            module, runtime, flat, flat.data.to(dtype), h0.to(dtype), None if c0 is None else c0.to(dtype)
        )
    state: Any = (h_n, c_n) if is_lstm else h_n
    return restore_output(flat, output), restore_state(flat, state)


def _state_size(module: nn.RNNBase) -> int:
    """The units of ``h``: ``proj_size`` for an LSTM with a projection, else ``hidden_size``."""
    return module.proj_size or module.hidden_size


def _fused_applies(module: nn.RNNBase, runtime: NoiseRuntime, targets: tuple[str, ...], data: Tensor) -> bool:
    """The exact fused LSTM path: LSTM without projection, noise on ``h`` only, additive, no mean-noise probe,
    kernel allowed, and no compiled kernel for these inputs (it is faster on the CPU)."""
    return (
        module.mode == "LSTM"
        and not compiled_applies(data)
        and not module.proj_size
        and fused_allowed()
        and targets == ("h",)
        and runtime.diffusion().is_additive
        and not runtime.uses_mean
    )


def _additive_tensors(noise: list[dict[str, StateNoise]], like: Tensor) -> list[Tensor]:
    """The additive coefficient tensors of ``h`` per direction (the fused path's input); fewer when absent."""
    result = []
    for per_direction in noise:
        coefficients = as_coefficients(per_direction["h"], like)
        if coefficients is not None and isinstance(coefficients.add, Tensor):
            result.append(coefficients.add)
    return result


def _run_layers(
    module: nn.RNNBase, runtime: NoiseRuntime, flat: FlatInput, data: Tensor, h0: Tensor, c0: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Every layer and direction of the noisy recurrence on the rows ``data [N, I]``.

    ``h0 [L * D, B, P]``, ``c0 [L * D, B, H]`` (``P``: :func:`_state_size`).
    """
    layout: SequenceLayout = flat.layout
    directions = 2 if module.bidirectional else 1
    targets = runtime.targets(has_cell_state=module.mode == "LSTM")
    fused = _fused_applies(module, runtime, targets, data)
    kernel = sequence_kernel(data)
    batch_sizes = flat.packed.batch_sizes if flat.packed is not None else None
    dtype = data.dtype
    sizes = {"h": _state_size(module), "c": module.hidden_size}

    layer_input = data
    h_finals: list[Tensor] = []
    c_finals: list[Tensor] = []
    for layer in range(module.num_layers):
        weights = [layer_weights(module, layer, d).to(dtype) for d in range(directions)]
        rows = slice(layer * directions, (layer + 1) * directions)
        noise = runtime.draw_lazy(layout.rows, sizes, targets, directions=directions, device=data.device, dtype=dtype)
        additive = [] if not fused else _additive_tensors(noise, data)
        if fused and c0 is not None and len(additive) == directions:
            out, h_fused, c_fused = lstm_additive_fused(
                layer_input, layout, batch_sizes, weights, h0[rows], c0[rows], additive, module.training
            )
            h_finals.extend(h_fused.unbind(0))
            c_finals.extend(c_fused.unbind(0))
        else:
            outs = []
            for d in range(directions):
                index = layer * directions + d
                out_d, h_d, c_d = kernel(
                    module.mode,
                    LayerPass(
                        x=layer_input,
                        layout=layout,
                        weights=weights[d],
                        h0=h0[index],
                        c0=None if c0 is None else c0[index],
                        noise_h=noise[d].get("h"),
                        noise_c=noise[d].get("c"),
                        reverse=d == 1,
                    ),
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
    c_n = torch.stack(c_finals) if c_finals else None
    return layer_input, h_n, c_n
