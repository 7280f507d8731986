"""Discretisation schemes: from standard Gaussian draws to the noise injected into a recurrent state.

Every scheme of the method (docs/method.md) is affine in the previous state, so a scheme turns its draws into
three coefficient tensors and every layer applies one formula::

    h_next = gate * Psi(h_prev, x) + mult * h_prev + add          (AffineNoise.apply)

=================  ======================================  =====================================  ==========
scheme             add                                     mult                                   gate
=================  ======================================  =====================================  ==========
euler_maruyama     sqrt(dt) sa xi                          sqrt(dt) sm xi'                        1
milstein           sqrt(dt) sa xi + dt/2 sa sm (xi^2-1)    sqrt(dt) sm xi + dt/2 sm^2 (xi^2-1)    1
reference          sa xi                                   1 - dt m                               dt m
=================  ======================================  =====================================  ==========

with ``xi, xi'`` independent standard Gaussians per unit (``xi'`` one per sample when
``shared_multiplicative``), ``m = 1 - sm U``, ``U ~ Uniform[0, 1]`` obtained as ``Phi(z)`` from a Gaussian
``z`` so that one RNG call per sequence suffices. The reference scheme is the research code's
``h + dt * m * (Psi(h) - h) + sa * xi``; with ``dt = 1`` and ``sm = 0`` it is plain additive noise.

Schemes are chosen through the ``nrnn_diffusion`` hook when noise is registered; the built-in ones are
provided by :mod:`nrnn_plugin.plugins.builtin`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nrnn_plugin.config import NoiseConfig

__all__ = ["AffineNoise", "Diffusion", "EulerMaruyama", "Milstein", "ReferenceScheme", "BUILTIN_SCHEMES"]

Coefficient = Tensor | float | None


@dataclass
class AffineNoise:
    """Noise coefficients of one state: ``h_next = gate * psi + mult * h_prev + add``.

    Each coefficient is a tensor of shape ``[rows, H]`` (``[rows, 1]`` for a shared factor), a Python float
    that broadcasts, or ``None`` for "absent" (``gate`` = 1, ``mult`` = ``add`` = 0). Rows follow the
    packed layout of the sequence (time-major, active samples of each step).
    """

    gate: Coefficient = None
    mult: Coefficient = None
    add: Coefficient = None

    @property
    def is_additive(self) -> bool:
        """True when the noise does not depend on the state (``gate`` = 1, ``mult`` = 0)."""
        return self.gate is None and self.mult is None

    @property
    def is_zero(self) -> bool:
        return self.gate is None and self.mult is None and self.add is None

    def apply(self, psi: Tensor, prev: Tensor) -> Tensor:
        """``gate * psi + mult * prev + add`` (shapes broadcast against ``psi``: ``[rows, H]``)."""
        out = psi if self.gate is None else self.gate * psi
        if self.mult is not None:
            out = out + self.mult * prev
        if self.add is not None:
            out = out + self.add
        return out

    def scaled(self, factor: float | Tensor) -> AffineNoise:
        """The noise multiplied by ``factor`` around the noise-free step (regularizer probes).

        ``gate -> 1 + factor * (gate - 1)``, ``mult -> factor * mult``, ``add -> factor * add``. ``factor`` is a
        number or a 0-dim tensor (the regularizer's ``jet`` estimator differentiates in it).
        """
        if not isinstance(factor, Tensor) and factor == 1.0:
            return self
        gate = None if self.gate is None else 1.0 + factor * (self.gate - 1.0)
        mult = None if self.mult is None else factor * self.mult
        add = None if self.add is None else factor * self.add
        return AffineNoise(gate, mult, add)

    def rows(self, start: int, stop: int) -> AffineNoise:
        """The coefficients of rows ``start:stop`` (views)."""
        return AffineNoise(*(c[start:stop] if isinstance(c, Tensor) and c.dim() > 0 else c for c in self._parts()))

    def split(self, sizes: list[int]) -> list[AffineNoise]:
        """Per-step coefficients for a packed layout with ``sizes`` rows per step (views, one call each)."""
        parts: list[Sequence[Coefficient]] = []
        for c in self._parts():
            parts.append(torch.split(c, sizes) if isinstance(c, Tensor) and c.dim() > 0 else [c] * len(sizes))
        return [AffineNoise(g, m, a) for g, m, a in zip(*parts)]

    def _parts(self) -> tuple[Coefficient, Coefficient, Coefficient]:
        return self.gate, self.mult, self.add


class Diffusion:
    """A noise scheme: how many Gaussians a state needs per row and how they become coefficients.

    Args:
        config: the module's resolved :class:`NoiseConfig`.
        level: multiplier on both noise levels (a schedule's current factor).
    """

    name: str = ""
    #: True when the noise has a non-zero mean (the regularizer then adds a first-order term).
    biased: bool = False

    def __init__(self, config: NoiseConfig, level: float = 1.0) -> None:
        self.config = config
        self.dt = config.dt
        self.sigma_add = config.additive * level
        self.sigma_mult = config.multiplicative * level
        self.shared = config.shared_multiplicative

    def at_level(self, level: float) -> Diffusion:
        """This scheme with both noise levels multiplied by ``level`` (a schedule's factor), as a copy.

        Subclasses whose other state depends on the levels override it.
        """
        if level == 1.0:
            return self
        scaled = copy.copy(self)
        scaled.sigma_add = self.sigma_add * level
        scaled.sigma_mult = self.sigma_mult * level
        return scaled

    @property
    def is_additive(self) -> bool:
        """True when the scheme adds state-independent noise only (the LSTM fused fast path applies)."""
        return self.sigma_mult == 0.0

    @property
    def is_zero(self) -> bool:
        return self.sigma_add == 0.0 and self.sigma_mult == 0.0

    def width(self, hidden_size: int) -> int:
        """Number of standard Gaussians needed per row of one state of ``hidden_size`` units."""
        raise NotImplementedError

    def planes(self, hidden_size: int) -> tuple[int, ...]:
        """How the ``width(hidden_size)`` columns of a draw split into independent planes (column blocks).

        The counter-based stream lays a draw out plane by plane (:class:`~nrnn_plugin.noise.NoiseKey`), so a
        kernel can regenerate the planes its backward needs (the multiplicative one) and skip the others. The
        default is one plane; ``()`` when the width is 0.
        """
        width = self.width(hidden_size)
        return (width,) if width else ()

    def coefficients(self, draws: Tensor, hidden_size: int) -> AffineNoise:
        """Coefficients from ``draws`` of shape ``[rows, width(hidden_size)]``."""
        raise NotImplementedError

    def mean_coefficients(self) -> AffineNoise:
        """Expected coefficients (all ``None`` for unbiased schemes)."""
        return AffineNoise()

    def _mult_width(self, hidden_size: int) -> int:
        if self.sigma_mult == 0.0:
            return 0
        return 1 if self.shared else hidden_size

    def _two_planes(self, hidden_size: int) -> tuple[int, ...]:
        """``(additive, multiplicative)`` widths, zero widths left out."""
        add = hidden_size if self.sigma_add > 0.0 else 0
        return tuple(w for w in (add, self._mult_width(hidden_size)) if w)


class EulerMaruyama(Diffusion):
    """Ito Euler-Maruyama: independent Gaussians for the additive and the multiplicative part."""

    name = "euler_maruyama"

    def width(self, hidden_size: int) -> int:
        return (hidden_size if self.sigma_add > 0.0 else 0) + self._mult_width(hidden_size)

    def planes(self, hidden_size: int) -> tuple[int, ...]:
        return self._two_planes(hidden_size)

    def coefficients(self, draws: Tensor, hidden_size: int) -> AffineNoise:
        root_dt = math.sqrt(self.dt)
        add_width = hidden_size if self.sigma_add > 0.0 else 0
        add = draws[:, :add_width] * (root_dt * self.sigma_add) if add_width else None
        mult = draws[:, add_width:] * (root_dt * self.sigma_mult) if self.sigma_mult > 0.0 else None
        return AffineNoise(None, mult, add)


class Milstein(Diffusion):
    """Milstein for the diagonal diffusion ``sa + sm * h`` driven by one Gaussian per unit (strong order 1)."""

    name = "milstein"

    def width(self, hidden_size: int) -> int:
        return 0 if self.is_zero else hidden_size

    def coefficients(self, draws: Tensor, hidden_size: int) -> AffineNoise:
        root_dt = math.sqrt(self.dt)
        correction = (draws * draws - 1.0) * (0.5 * self.dt)
        add = mult = None
        if self.sigma_add > 0.0:
            add = draws * (root_dt * self.sigma_add)
            if self.sigma_mult > 0.0:
                add = add + correction * (self.sigma_add * self.sigma_mult)
        if self.sigma_mult > 0.0:
            mult = draws * (root_dt * self.sigma_mult) + correction * (self.sigma_mult**2)
        return AffineNoise(None, mult, add)


class ReferenceScheme(Diffusion):
    """The public research code's scheme: ``h + dt * m * (Psi(h) - h) + sa * xi``, ``m ~ U[1 - sm, 1]``.

    The additive part has no ``sqrt(dt)`` and ``m`` has mean ``1 - sm / 2`` (biased), as in that code.
    With ``dt = 1`` and ``sm = 0`` the step is ``Psi(h) + sa * xi``.
    """

    name = "reference"
    biased = True

    @property
    def is_additive(self) -> bool:
        return self.sigma_mult == 0.0 and self.dt == 1.0

    def width(self, hidden_size: int) -> int:
        return (hidden_size if self.sigma_add > 0.0 else 0) + self._mult_width(hidden_size)

    def planes(self, hidden_size: int) -> tuple[int, ...]:
        return self._two_planes(hidden_size)

    def coefficients(self, draws: Tensor, hidden_size: int) -> AffineNoise:
        add_width = hidden_size if self.sigma_add > 0.0 else 0
        add = draws[:, :add_width] * self.sigma_add if add_width else None
        if self.sigma_mult > 0.0:
            uniform = torch.special.ndtr(draws[:, add_width:])
            step = (1.0 - self.sigma_mult * uniform) * self.dt
            return AffineNoise(step, 1.0 - step, add)
        if self.dt == 1.0:
            return AffineNoise(None, None, add)
        return AffineNoise(self.dt, 1.0 - self.dt, add)

    def mean_coefficients(self) -> AffineNoise:
        step = (1.0 - 0.5 * self.sigma_mult) * self.dt
        if step == 1.0:
            return AffineNoise()
        return AffineNoise(step, 1.0 - step, None)


BUILTIN_SCHEMES: dict[str, type[Diffusion]] = {cls.name: cls for cls in (EulerMaruyama, Milstein, ReferenceScheme)}
