"""Input and output handling shared by the noisy sequence layers (``nn.RNN``-style interfaces).

A layer's ``forward(input, hx)`` accepts a padded batch ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``), an
unbatched sequence ``[T, I]`` or a :class:`~torch.nn.utils.rnn.PackedSequence` (sorted or not). Every kernel
works on the packed, time-major rows of :mod:`.layout`. :func:`flatten_input` turns any of the three into rows
``[N, I]`` and a :class:`FlatInput` that remembers how; :func:`restore_output` and :func:`restore_state` turn
the kernels' results back into what the caller gave, :func:`prepare_state` brings a given initial state into
the rows' sample order.

States are tensors ``[L * D, B, H]`` or tuples of them (an LSTM's ``(h, c)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from nrnn_plugin.layers.layout import SequenceLayout

__all__ = [
    "FlatInput",
    "flatten_input",
    "restore_output",
    "batched_state",
    "prepare_state",
    "restore_state",
    "zero_state",
]

State = TypeVar("State", Tensor, tuple[Tensor, ...])


@dataclass(frozen=True)
class FlatInput:
    """A batch of sequences as packed rows, and what is needed to give results back in the caller's form.

    Attributes:
        data: the rows ``[N, I]``.
        layout: the row layout (``layout.batch`` samples, ``layout.steps`` steps).
        packed: the caller's ``PackedSequence`` (``None`` for a tensor input).
        batched: ``False`` for an unbatched ``[T, I]`` input.
        batch_first: the layer's ``batch_first`` (for a padded input).
    """

    data: Tensor
    layout: SequenceLayout
    packed: PackedSequence | None
    batched: bool
    batch_first: bool


def flatten_input(input: Tensor | PackedSequence, *, batch_first: bool, owner: str) -> FlatInput:  # noqa: A002
    """The rows ``[N, I]`` of ``input`` and their layout; ``owner`` names the layer in error messages.

    Raises:
        ValueError: a tensor input that is neither 2-D nor 3-D.
    """
    if isinstance(input, PackedSequence):
        return FlatInput(input.data, SequenceLayout.from_batch_sizes(input.batch_sizes), input, True, batch_first)
    if not isinstance(input, Tensor) or input.dim() not in (2, 3):
        got = f"shape {tuple(input.shape)}" if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"{owner}: input must be a 2-D (unbatched) or 3-D tensor or a PackedSequence, got {got}")
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(1)
    if batched and batch_first:
        x = x.transpose(0, 1)
    steps, batch = x.shape[0], x.shape[1]
    data = x.reshape(steps * batch, x.shape[2])
    return FlatInput(data, SequenceLayout.padded(steps, batch), None, batched, batch_first)


def restore_output(flat: FlatInput, output: Tensor) -> Tensor | PackedSequence:
    """The kernels' per-row output ``[N, F]`` in the caller's form (padded, unbatched or packed)."""
    if flat.packed is not None:
        return PackedSequence(output, flat.packed.batch_sizes, flat.packed.sorted_indices, flat.packed.unsorted_indices)
    layout = flat.layout
    output = output.view(layout.steps, layout.batch, output.shape[1])
    if not flat.batched:
        return output.squeeze(1)
    if flat.batch_first:
        output = output.transpose(0, 1).contiguous()
    return output


def _each(state: State, fn: Callable[[Tensor], Tensor]) -> State:
    if isinstance(state, Tensor):
        return fn(state)
    return tuple(fn(s) for s in state)


def batched_state(flat: FlatInput, state: State) -> State:
    """A given initial state of an unbatched input, with its batch dimension (``[L * D, H] -> [L * D, 1, H]``)."""
    return state if flat.batched else _each(state, lambda s: s.unsqueeze(1))


def prepare_state(flat: FlatInput, state: State) -> State:
    """A batched initial state in the rows' sample order (sorted by length for an unsorted packed input)."""
    indices = flat.packed.sorted_indices if flat.packed is not None else None
    return state if indices is None else _each(state, lambda s: s.index_select(1, indices))


def restore_state(flat: FlatInput, state: State) -> State:
    """A final state ``[L * D, B, H]`` in the caller's sample order and form (unbatched: ``[L * D, H]``)."""
    indices = flat.packed.unsorted_indices if flat.packed is not None else None
    if indices is not None:
        state = _each(state, lambda s: s.index_select(1, indices))
    return state if flat.batched else _each(state, lambda s: s.squeeze(1))


def zero_state(flat: FlatInput, layers: int, hidden: int, like: Tensor) -> Tensor:
    """Zeros ``[layers, B, hidden]`` in ``like``'s dtype and device."""
    return like.new_zeros(layers, flat.layout.batch, hidden)
