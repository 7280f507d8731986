"""The packed, time-major row layout shared by every noisy sequence kernel.

A batch of sequences is stored as a 2-D tensor ``[N, F]`` of rows: the rows of time step ``t`` are
``offsets[t] : offsets[t] + sizes[t]`` and hold the samples still active at ``t`` (samples sorted by length,
longest first, as in :class:`torch.nn.utils.rnn.PackedSequence`). A padded ``[T, B, F]`` batch is the special
case ``sizes = [B] * T``, reshaped without a copy. One layout therefore serves packed and padded input.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["SequenceLayout"]


class SequenceLayout:
    """Row layout of one batch of sequences.

    Attributes:
        sizes: active samples per time step (non-increasing), Python ints.
        offsets: first row of each time step.
        steps: number of time steps ``T``; ``batch``: number of samples ``B``; ``rows``: ``N = sum(sizes)``.
        uniform: True when every sample has all ``T`` steps (padded input).
    """

    def __init__(self, sizes: tuple[int, ...]) -> None:
        if not sizes or any(b <= 0 for b in sizes) or any(a < b for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"batch sizes must be positive and non-increasing, got {list(sizes)}")
        self.sizes = list(sizes)
        self.offsets = [0] * len(sizes)
        total = 0
        for t, size in enumerate(sizes):
            self.offsets[t] = total
            total += size
        self.rows = total
        self.steps = len(sizes)
        self.batch = sizes[0]
        self.uniform = sizes[0] == sizes[-1]
        self._index_cache: dict[tuple[str, str], Tensor] = {}

    @classmethod
    def padded(cls, steps: int, batch: int) -> SequenceLayout:
        return _cached_layout((batch,) * steps)

    @classmethod
    def from_batch_sizes(cls, batch_sizes: Tensor) -> SequenceLayout:
        return _cached_layout(tuple(int(b) for b in batch_sizes.tolist()))

    def __repr__(self) -> str:
        return f"SequenceLayout(steps={self.steps}, batch={self.batch}, rows={self.rows}, uniform={self.uniform})"

    # ------------------------------------------------------------------ iteration
    def order(self, reverse: bool) -> range:
        """Time steps in processing order."""
        return range(self.steps - 1, -1, -1) if reverse else range(self.steps)

    def carried_rows(self, reverse: bool) -> list[int]:
        """For each time step: how many of its rows continue a sample processed at the previous step.

        The remaining ``sizes[t] - carried[t]`` rows start from the initial state. Forward: all rows but at
        the first step; reverse: a sample starts at its own last step.
        """
        carried = [0] * self.steps
        previous = None
        for t in self.order(reverse):
            carried[t] = 0 if previous is None else min(self.sizes[t], self.sizes[previous])
            previous = t
        return carried

    # ------------------------------------------------------------------ index tensors (cached per device)
    def last_rows(self, device: torch.device) -> Tensor:
        """Row of each sample's last time step (where a forward direction ends): ``LongTensor[B]``."""
        return self._index("last", device, self._build_last_rows)

    def batch_sizes(self) -> Tensor:
        """``sizes`` as a CPU ``LongTensor[T]`` (a ``PackedSequence``'s ``batch_sizes``; compiled kernels' input)."""
        return self._index("batch_sizes", torch.device("cpu"), lambda: torch.tensor(self.sizes, dtype=torch.long))

    def previous_rows(self, reverse: bool, device: torch.device) -> Tensor:
        """For every row, the row of the same sample at the previous processed step, or ``-1`` at its start.

        Used to shift per-step noise by one step (the LSTM fused fast path): ``LongTensor[N]``.
        """
        key = "previous_reverse" if reverse else "previous_forward"
        return self._index(key, device, lambda: self._build_previous_rows(reverse))

    def _index(self, key: str, device: torch.device, build: Callable[[], Tensor]) -> Tensor:
        cache_key = (key, str(device))
        index = self._index_cache.get(cache_key)
        if index is None:
            index = build().to(device)
            self._index_cache[cache_key] = index
        return index

    def _build_last_rows(self) -> Tensor:
        last = torch.empty(self.batch, dtype=torch.long)
        for t, size in enumerate(self.sizes):
            last[:size] = torch.arange(self.offsets[t], self.offsets[t] + size)
        return last

    def _build_previous_rows(self, reverse: bool) -> Tensor:
        previous = torch.full((self.rows,), -1, dtype=torch.long)
        carried = self.carried_rows(reverse)
        prev_t = None
        for t in self.order(reverse):
            if prev_t is not None and carried[t]:
                previous[self.offsets[t] : self.offsets[t] + carried[t]] = torch.arange(
                    self.offsets[prev_t], self.offsets[prev_t] + carried[t]
                )
            prev_t = t
        return previous

    # ------------------------------------------------------------------ states
    def final_rows(self, outputs: Tensor, reverse: bool) -> Tensor:
        """Final state of every sample from the per-row outputs ``[N, H]`` of one direction: ``[B, H]``."""
        if reverse:
            return outputs[: self.batch]
        if self.uniform:
            return outputs[self.offsets[-1] :]
        return outputs.index_select(0, self.last_rows(outputs.device))


@lru_cache(maxsize=64)
def _cached_layout(sizes: tuple[int, ...]) -> SequenceLayout:
    return SequenceLayout(sizes)
