"""The one seam for randomness: per-module Gaussian noise streams that can be recorded and replayed.

Every noisy module owns a :class:`NoiseSource`. It draws standard Gaussians from its own
``torch.Generator`` (one per device), seeded from the config seed, the module's qualified name and the
distributed rank, so that

* runs are reproducible from the seed and the global RNG state is never read or advanced,
* two modules of one model draw independent noise, and so do two ranks of a distributed job,
* a draw can be recorded and replayed exactly (the regularizer's antithetic probes, tests).

The sampler that turns a source into Gaussians is a plain callable given to the source when it is created
(:func:`nrnn_plugin.register_noise` resolves it once, through the ``nrnn_sampler`` hook), so a plugin can
replace it (quasi-random numbers, a fixed test pattern) without touching the layers, and a draw never consults
the plugin manager. Model-wide recording and replaying live in :mod:`nrnn_plugin.runtime`.

This module imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch

__all__ = ["NoiseSource", "FixedNoise", "NoiseTape", "Sampler", "gaussian_sampler", "derive_seed", "distributed_rank"]


class Sampler(Protocol):
    """``sampler(source, shape, device, dtype) -> Tensor``: standard Gaussians of ``shape`` for ``source``.

    Implementations draw from ``source.generator(device)`` (never the global RNG) so that runs stay
    reproducible and replayable.
    """

    def __call__(
        self, source: NoiseSource, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor: ...


def gaussian_sampler(
    source: NoiseSource, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The built-in sampler: ``torch.randn`` on the source's own generator (one call per draw).

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
    """A 63-bit generator seed from the config seed, a module's qualified name and the rank.

    ``seed=None`` takes ``torch.initial_seed()`` (which ``torch.manual_seed`` and Lightning's
    ``seed_everything`` set), read without advancing the global generator.
    """
    base = torch.initial_seed() if seed is None else seed
    digest = hashlib.blake2b(f"{base}|{name}|{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class NoiseTape:
    """Draws recorded from one source, replayable in the same order."""

    def __init__(self) -> None:
        self.draws: list[torch.Tensor] = []
        self._cursor = 0

    def append(self, draw: torch.Tensor) -> None:
        self.draws.append(draw)

    def next(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
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
        return draw.to(device=device, dtype=dtype)

    def rewind(self) -> None:
        self._cursor = 0


class NoiseSource:
    """Gaussian noise stream of one module.

    Args:
        name: qualified name of the module inside the model (part of the seed).
        seed: config seed, or ``None`` for ``torch.initial_seed()``.
        sampler: turns the source into standard Gaussians (default :func:`gaussian_sampler`).
        origin: who provided the sampler (``"plugin 'name'"``), named when it fails or returns a wrong draw.

    Generators are created lazily on first use per device, so the rank is read after a distributed
    process group exists. :meth:`state_dict` / :meth:`load_state_dict` capture and restore the stream so a
    resumed run continues it.
    """

    def __init__(
        self,
        name: str,
        seed: int | None = None,
        sampler: Sampler = gaussian_sampler,
        *,
        origin: str = "the built-in sampler",
    ) -> None:
        self.name = name
        self.seed = seed
        self.sampler = sampler
        self.origin = origin
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

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This source's generator on ``device`` (created and seeded on first use)."""
        device = torch.device(device)
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(derive_seed(self.seed, self.name, self.rank))
            self._generators[key] = gen
        return gen

    def normal(self, shape: Sequence[int], *, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        """Standard Gaussians of ``shape`` on ``device`` in ``dtype``: one RNG call.

        Replays the recorded draw while replaying; records the draw while recording.
        """
        device = torch.device(device)
        if self._replay is not None:
            draw = self._replay.next(shape, device, dtype)
        else:
            draw = self._sample(tuple(shape), device, dtype)
        if self._record is not None:
            self._record.append(draw)
        return draw

    def _sample(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
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
        return {
            "name": self.name,
            "seed": self.seed,
            "generators": {key: gen.get_state() for key, gen in self._generators.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state["seed"]
        self._generators = {}
        for key, gen_state in state["generators"].items():
            gen = torch.Generator(device=torch.device(key))
            gen.set_state(gen_state)
            self._generators[key] = gen

    def __getstate__(self) -> dict[str, Any]:
        # Tapes are transient; generators are stored by state so that pickles are portable.
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
            data.get("sampler", gaussian_sampler),
            origin=data.get("origin", "a sampler"),
        )
        self.load_state_dict(data["state"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, seed={self.seed!r})"


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
        return self._fixed.next(shape, device, dtype)
