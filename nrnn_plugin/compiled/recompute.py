"""The compiled operators' arguments back as the autograd reference, for double backward and for other devices.

A compiled operator's backward is itself not differentiable. When autograd asks for a differentiable gradient
(``create_graph=True``: gradient penalties, pytorch-forecasting's monotone constraints, the regularizer's
``jet``) or the tensors are not on the CPU, the backward instead recomputes the layer through the differentiable
reference (:mod:`nrnn_plugin.layers.reference`, :mod:`nrnn_plugin.layers.nrnn_reference`) with the SAME noise
(the key regenerates it) and returns ``torch.autograd.grad(..., create_graph=True)`` of that recomputation.

The noise arguments of every operator (``rng, scheme, sigma_add, sigma_mult, dt, shared, scale, keyed`` and the
coefficient tensors) are read back here into what the reference takes.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.counter_noise import CounterNoise
from nrnn_plugin.diffusion import AffineNoise, Diffusion, EulerMaruyama, Milstein, ReferenceScheme
from nrnn_plugin.layers.layout import SequenceLayout

__all__ = ["SCHEME_CODES", "NoiseArgs", "diffusion_of", "state_noise", "layout_of"]

#: The schemes the compiled kernels implement, by class (a subclass may change the maths: not listed).
SCHEME_CODES: dict[type[Diffusion], int] = {EulerMaruyama: 1, Milstein: 2, ReferenceScheme: 3}
_CLASSES = {code: cls for cls, code in SCHEME_CODES.items()}

# rng, scheme, sigma_add, sigma_mult, dt, shared, scale, keyed
NoiseArgs = tuple[Tensor, int, float, float, float, bool, float, int]


def diffusion_of(scheme: int, sigma_add: float, sigma_mult: float, dt: float, shared: bool) -> Diffusion:
    """The built-in scheme with these parameters (the levels already include any schedule factor)."""
    cls = _CLASSES[scheme]
    diffusion = cls(NoiseConfig(scheme=cls.name, dt=dt, shared_multiplicative=shared))
    diffusion.sigma_add, diffusion.sigma_mult = sigma_add, sigma_mult
    return diffusion


def _coefficient(c: Tensor | None, rows: int) -> Tensor | None:
    """A kernel coefficient ``[N, H]``, ``[N, 1]`` or ``[1, 1]`` as the reference takes it (``[1, 1]`` -> 0-dim)."""
    if c is None:
        return None
    return c.reshape(()) if c.shape[0] == 1 and rows != 1 else c


def state_noise(
    noise: NoiseArgs, coefs: Sequence[Tensor | None], state: int, rows: int, units: int, like: Tensor
) -> AffineNoise | None:
    """The noise of state ``state`` (0: ``h``, 1: ``c``) as coefficients on ``like``'s device and dtype.

    ``coefs`` are that state's ``(gate, mult, add)`` tensors (used when the state is not keyed).
    """
    rng, scheme, sigma_add, sigma_mult, dt, shared, scale, keyed = noise
    if (keyed >> state) & 1:
        diffusion = diffusion_of(scheme, sigma_add, sigma_mult, dt, shared)
        planes = diffusion.planes(units)
        seed, offset, *starts = (int(v) & ((1 << 64) - 1) for v in rng[state].tolist())
        lazy = CounterNoise(seed, offset, tuple(starts[: len(planes)]), planes, rows, units, diffusion, scale)
        return lazy.coefficients(like.device, like.dtype)
    gate, mult, add = (_coefficient(c, rows) for c in coefs)
    if gate is None and mult is None and add is None:
        return None
    return AffineNoise(gate, mult, add)


def layout_of(batch_sizes: Tensor) -> SequenceLayout:
    return SequenceLayout.from_batch_sizes(batch_sizes)
