"""Counter-based noise at the place it is used: materialised draws and the lazy noise of one state.

A :class:`~nrnn_plugin.noise.NoiseKey` only names Gaussians (:mod:`nrnn_plugin.philox` defines them). This
module turns keys into numbers where a tensor is needed:

* :func:`gaussians` - a range of a stream, from the compiled generator when the compiled kernels are loaded
  (CPU), else from the pure-PyTorch definition; both give the same bits;
* :func:`key_tensor` - the tensor form of a whole key (``key.shape``, float32);
* :class:`CounterNoise` - the noise of one state (``h`` or ``c``) of one layer-direction, *not yet generated*:
  the compiled kernels generate it inside their loops (and again in backward, so nothing ``[T, B, H]``-sized is
  stored), every other kernel asks it for its coefficient tensors (:meth:`CounterNoise.coefficients`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nrnn_plugin import philox
from nrnn_plugin.compiled import build
from nrnn_plugin.diffusion import AffineNoise, Diffusion
from nrnn_plugin.noise import NoiseKey

__all__ = ["gaussians", "key_tensor", "CounterNoise", "StateNoise", "as_coefficients"]


def gaussians(seed: int, offset: int, start: int, count: int, device: torch.device | str) -> Tensor:
    """Elements ``start .. start + count - 1`` of stream ``(seed, offset)`` as float32 ``[count]`` on ``device``."""
    device = torch.device(device)
    if device.type == "cpu" and build.loaded():
        return build.gaussian(seed, offset, start, count)
    return philox.gaussian(seed, offset, start, count, device=device)


def _plane_block(seed: int, offset: int, start: int, rows: int, width: int, device: torch.device) -> Tensor:
    return gaussians(seed, offset, start, rows * width, device).view(rows, width)


def key_tensor(key: NoiseKey, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """The draw named by ``key`` as a tensor of ``key.shape`` (planes side by side, see :class:`NoiseKey`)."""
    device = torch.device(device)
    rows = key.rows
    copies = []
    for starts in key.starts():
        blocks = [_plane_block(key.seed, key.offset, s, rows, w, device) for s, w in zip(starts, key.planes)]
        copies.append(blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1))
    return torch.stack(copies).view(key.shape).to(dtype)


@dataclass(frozen=True)
class CounterNoise:
    """The noise of one state over the ``rows`` rows of one layer-direction, generated from its key on demand.

    Attributes:
        seed, offset: the key of the stream.
        starts: the stream index of the first element of each plane of this state (see :class:`NoiseKey`).
        planes: the widths of those planes (``diffusion.planes(units)``).
        rows: rows of the layer-direction (``N``); units: the state's size.
        diffusion: the scheme that turns the draws into coefficients (``diffusion.coefficients``).
        scale: the probe factor around the noise-free step (:meth:`AffineNoise.scaled`).
    """

    seed: int
    offset: int
    starts: tuple[int, ...]
    planes: tuple[int, ...]
    rows: int
    units: int
    diffusion: Diffusion
    scale: float | Tensor = 1.0

    def draws(self, device: torch.device | str, dtype: torch.dtype) -> Tensor:
        """The state's draws ``[rows, sum(planes)]`` (float32 numbers converted to ``dtype``)."""
        device = torch.device(device)
        blocks = [
            _plane_block(self.seed, self.offset, s, self.rows, w, device) for s, w in zip(self.starts, self.planes)
        ]
        return (blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)).to(dtype)

    def coefficients(self, device: torch.device | str, dtype: torch.dtype) -> AffineNoise:
        """The coefficient tensors this noise stands for: what :meth:`NoiseRuntime.draw` would give materialised."""
        return self.diffusion.coefficients(self.draws(device, dtype), self.units).scaled(self.scale)


#: The noise of one state as a kernel receives it: coefficient tensors, counter-based noise, or none.
StateNoise = AffineNoise | CounterNoise | None


def as_coefficients(noise: StateNoise, like: Tensor) -> AffineNoise | None:
    """``noise`` as coefficients on ``like``'s device and dtype (counter-based noise is generated here)."""
    if isinstance(noise, CounterNoise):
        return noise.coefficients(like.device, like.dtype)
    return noise
