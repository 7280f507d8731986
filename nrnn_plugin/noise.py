"""The one seam for randomness: per-module noise streams that can be recorded and replayed.

Every noisy module owns a :class:`NoiseSource`. Its built-in stream is *counter-based*: a draw is a
:class:`NoiseKey` ``(seed, offset)``, the numbers of a key are defined once (:mod:`nrnn_plugin.philox`) and are
generated where they are used, inside the compiled kernels' loops or by the pure-PyTorch definition, never
stored for backward. ``seed`` comes from the config seed, the module's qualified name and the distributed rank;
``offset`` counts the draws. So

* runs are reproducible from the seed and the global RNG state is never read or advanced,
* two modules of one model draw independent noise, and so do two ranks of a distributed job,
* the state of a stream is two integers (:meth:`NoiseSource.state_dict`),
* a draw is recorded and replayed by its key (the regularizer's antithetic probes, tests), in any dtype and
  on any device.

A plugin can replace the numbers (quasi-random numbers, a fixed test pattern) with a *sampler*, a plain
callable given to the source when it is created (:func:`nrnn_plugin.register_noise` resolves it once through
the ``nrnn_sampler`` hook): its draws are tensors, which the layers use as given (materialised draws, the
kernels that take coefficient tensors). Model-wide recording and replaying live in :mod:`nrnn_plugin.runtime`.

This module imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = [
    "NoiseSource",
    "NoiseKey",
    "FixedNoise",
    "NoiseTape",
    "Sampler",
    "counter_stream",
    "gaussian_sampler",
    "derive_seed",
    "distributed_rank",
]


class Sampler(Protocol):
    """``sampler(source, shape, device, dtype) -> Tensor``: standard Gaussians of ``shape`` for ``source``.

    Implementations draw from ``source.generator(device)`` (never the global RNG) so that runs stay
    reproducible and replayable.
    """

    def __call__(
        self, source: NoiseSource, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor: ...


class _CounterStream:
    """The built-in sampler: draws are :class:`NoiseKey` s of the source's counter-based stream.

    It is a marker, not a tensor sampler: the numbers of a key are ``nrnn_plugin.philox.gaussian``'s, generated
    by whoever uses the draw. Calling it is an error.
    """

    def __call__(
        self, source: NoiseSource, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        raise TypeError(
            "counter_stream is the built-in keyed stream, not a tensor sampler: draw with source.draw(); a plugin "
            "sampler that wants torch.randn numbers can call nrnn_plugin.noise.gaussian_sampler"
        )

    def __reduce__(self) -> str:
        return "counter_stream"  # pickles (and copies) as the module attribute: one instance


#: The built-in sampler (the default of :class:`NoiseSource`).
counter_stream = _CounterStream()


def gaussian_sampler(
    source: NoiseSource, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A tensor sampler: ``torch.randn`` on the source's own generator (for plugins; not the built-in stream).

    On the ``meta`` device (shapes only, no data) the draw is an empty meta tensor and no generator is made.
    """
    if device.type == "meta":
        return torch.empty(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=source.generator(device), device=device, dtype=dtype)


def distributed_rank() -> int:
    """The global rank of this process: ``torch.distributed`` if initialised, else ``RANK``, else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(var)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def derive_seed(seed: int | None, name: str, rank: int) -> int:
    """A 63-bit stream seed from the config seed, a module's qualified name and the rank.

    ``seed=None`` takes ``torch.initial_seed()`` (which ``torch.manual_seed`` and Lightning's
    ``seed_everything`` set), read without advancing the global generator.
    """
    base = torch.initial_seed() if seed is None else seed
    digest = hashlib.blake2b(f"{base}|{name}|{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class NoiseKey:
    """One draw of a counter-based stream: the Gaussians of ``(seed, offset)`` laid out as ``shape``.

    ``planes`` splits the last dimension into column blocks (the planes of a scheme's draw, e.g. additive and
    multiplicative parts); element ``(i..., row, column)`` of plane ``p`` (width ``w``) is Gaussian number
    ``base_p + row * w + column`` of the stream, where the planes of every leading index are consecutive
    ``[rows, w]`` blocks (``base`` counts the elements of all earlier planes). So a kernel regenerates any row of
    any plane without the others, and the tensor form of a key is the same on every device.
    """

    seed: int
    offset: int
    shape: tuple[int, ...]
    planes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.shape or sum(self.planes) != self.shape[-1] or any(w <= 0 for w in self.planes):
            raise ValueError(f"NoiseKey: planes {self.planes} must be positive and sum to shape[-1] of {self.shape}")

    @property
    def rows(self) -> int:
        """Rows of one leading index (``shape[-2]``, 1 for a 1-D shape)."""
        return self.shape[-2] if len(self.shape) > 1 else 1

    def starts(self) -> list[list[int]]:
        """``starts()[i][p]``: the stream index of element ``(row 0, column 0)`` of plane ``p`` of leading index ``i``
        (leading indices: the product of ``shape[:-2]``, the directions of a layer)."""
        copies = 1
        for size in self.shape[:-2]:
            copies *= size
        result, base = [], 0
        for _ in range(copies):
            per_copy = []
            for width in self.planes:
                per_copy.append(base)
                base += self.rows * width
            result.append(per_copy)
        return result


Draw = torch.Tensor | NoiseKey


class NoiseTape:
    """Draws recorded from one source (keys or tensors), replayable in the same order."""

    def __init__(self) -> None:
        self.draws: list[Draw] = []
        self._cursor = 0

    def append(self, draw: Draw) -> None:
        self.draws.append(draw)

    def next(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Draw:
        """The next recorded draw, checked against the ``shape`` the forward asks for (tensors moved to
        ``device``/``dtype``)."""
        if self._cursor >= len(self.draws):
            raise RuntimeError(
                f"noise replay: the forward asked for draw #{self._cursor + 1} but only {len(self.draws)} "
                "were recorded; replay must repeat the recorded computation"
            )
        draw = self.draws[self._cursor]
        self._cursor += 1
        if tuple(draw.shape) != tuple(shape):
            raise RuntimeError(
                f"noise replay: draw #{self._cursor} was recorded with shape {tuple(draw.shape)}, "
                f"the forward asked for {tuple(shape)}"
            )
        return draw if isinstance(draw, NoiseKey) else draw.to(device=device, dtype=dtype)

    def rewind(self) -> None:
        self._cursor = 0


class NoiseSource:
    """The noise stream of one module.

    Args:
        name: qualified name of the module inside the model (part of the seed).
        seed: config seed, or ``None`` for ``torch.initial_seed()``.
        sampler: :data:`counter_stream` (default: draws are keys) or a plugin's tensor sampler.
        origin: who provided the sampler (``"plugin 'name'"``), named when it fails or returns a wrong draw.

    The stream seed is derived on first use, so the rank is read after a distributed process group exists.
    :meth:`state_dict` / :meth:`load_state_dict` capture and restore the stream (``offset``, plus the states of
    the generators a plugin sampler used) so a resumed run continues it.
    """

    def __init__(
        self,
        name: str,
        seed: int | None = None,
        sampler: Sampler = counter_stream,
        *,
        origin: str = "the built-in sampler",
    ) -> None:
        self.name = name
        self.seed = seed
        self.sampler = sampler
        self.origin = origin
        self.offset = 0
        self._lock = threading.Lock()  # DataParallel replicas share a source and draw from threads
        self._stream_seed: int | None = None
        self._generators: dict[str, torch.Generator] = {}
        self._rank: int | None = None
        self._record: NoiseTape | None = None
        self._replay: NoiseTape | None = None

    # ------------------------------------------------------------------ drawing
    @property
    def rank(self) -> int:
        if self._rank is None:
            self._rank = distributed_rank()
        return self._rank

    @property
    def stream_seed(self) -> int:
        """The Philox key of this stream: :func:`derive_seed` of the config seed, the name and the rank."""
        if self._stream_seed is None:
            self._stream_seed = derive_seed(self.seed, self.name, self.rank)
        return self._stream_seed

    @property
    def keyed(self) -> bool:
        """True when draws are keys of the counter-based stream: the built-in sampler, and ``_sample`` not
        overridden (a subclass that overrides ``_sample(shape, device, dtype)`` draws tensors)."""
        return self.sampler is counter_stream and type(self)._sample is NoiseSource._sample

    def generator(self, device: torch.device | str) -> torch.Generator:
        """A ``torch.Generator`` on ``device`` seeded with :attr:`stream_seed` (created on first use), for plugin
        samplers; the built-in stream does not use it."""
        device = torch.device(device)
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.stream_seed)
            self._generators[key] = gen
        return gen

    def draw(
        self,
        shape: Sequence[int],
        *,
        device: torch.device | str,
        dtype: torch.dtype,
        planes: Sequence[int] | None = None,
    ) -> Draw:
        """The next draw of ``shape``: a :class:`NoiseKey` (built-in stream; ``planes`` splits its last dimension,
        default one plane) or a tensor (plugin sampler, fixed or replayed tensor draws).

        Replays the recorded draw while replaying; records the draw while recording.
        """
        device = torch.device(device)
        shape = tuple(shape)
        if self._replay is not None:
            draw = self._replay.next(shape, device, dtype)
            if isinstance(draw, NoiseKey) and planes is not None and draw.planes != tuple(planes):
                raise RuntimeError(f"noise replay: a draw was recorded with planes {draw.planes}, now {tuple(planes)}")
        else:
            draw = (
                self.next_key(shape, tuple(planes) if planes is not None else (shape[-1],))
                if self.keyed
                else self._sample(shape, device, dtype)
            )
        if self._record is not None:
            self._record.append(draw)
        return draw

    def next_key(self, shape: tuple[int, ...], planes: tuple[int, ...]) -> NoiseKey:
        """A fresh key of the counter-based stream (advances :attr:`offset` by one)."""
        with self._lock:
            offset = self.offset
            self.offset += 1
        return NoiseKey(self.stream_seed, offset, shape, planes)

    def _sample(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A tensor draw from the plugin sampler, checked (the override point of tensor-drawing subclasses)."""
        try:
            draw = self.sampler(self, shape, device, dtype)
        except Exception as exc:
            raise RuntimeError(
                f"noise source {self.name!r}: the sampler of {self.origin} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(draw, torch.Tensor) or tuple(draw.shape) != shape or draw.dtype != dtype:
            got = (
                f"a {draw.dtype} tensor of shape {tuple(draw.shape)}"
                if isinstance(draw, torch.Tensor)
                else type(draw).__name__
            )
            raise RuntimeError(
                f"noise source {self.name!r}: the sampler of {self.origin} returned {got}, expected a {dtype} tensor "
                f"of shape {shape}"
            )
        return draw

    # ------------------------------------------------------------------ record / replay
    @contextlib.contextmanager
    def recording(self, tape: NoiseTape) -> Iterator[NoiseTape]:
        previous, self._record = self._record, tape
        try:
            yield tape
        finally:
            self._record = previous

    @contextlib.contextmanager
    def replaying(self, tape: NoiseTape) -> Iterator[NoiseTape]:
        tape.rewind()
        previous, self._replay = self._replay, tape
        try:
            yield tape
        finally:
            self._replay = previous

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``{"name", "seed", "offset", "generators"}``: the config seed, the draw counter and the states of the
        generators a plugin sampler used (empty for the built-in stream)."""
        return {
            "name": self.name,
            "seed": self.seed,
            "offset": self.offset,
            "generators": {key: gen.get_state() for key, gen in self._generators.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result (a missing ``offset``, as written before counter-based streams, is 0)."""
        self.seed = state["seed"]
        self._stream_seed = None
        self.offset = int(state.get("offset", 0))
        self._generators = {}
        for key, gen_state in state.get("generators", {}).items():
            gen = torch.Generator(device=torch.device(key))
            gen.set_state(gen_state)
            self._generators[key] = gen

    def __getstate__(self) -> dict[str, Any]:
        # Tapes and the lock are transient; generators are stored by state so that pickles are portable.
        return {
            "name": self.name,
            "seed": self.seed,
            "sampler": self.sampler,
            "origin": self.origin,
            "state": self.state_dict(),
        }

    def __setstate__(self, data: dict[str, Any]) -> None:
        NoiseSource.__init__(
            self,
            data["name"],
            data["seed"],
            data.get("sampler", counter_stream),
            origin=data.get("origin", "a sampler"),
        )
        self.load_state_dict(data["state"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, seed={self.seed!r}, offset={self.offset})"


class FixedNoise(NoiseSource):
    """A source that returns given tensors in order instead of sampling (tests, debugging).

    Each draw must have the shape the layer asks for: ``[directions, rows, width]`` for sequence layers
    (rows = time steps x batch in packed order) and ``[batch, width]`` for cells.
    """

    def __init__(self, draws: Sequence[torch.Tensor], name: str = "fixed") -> None:
        super().__init__(name, seed=0)
        self._fixed = NoiseTape()
        for draw in draws:
            self._fixed.append(draw)

    def _sample(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        draw = self._fixed.next(shape, device, dtype)
        assert isinstance(draw, torch.Tensor)  # only tensors are appended
        return draw
