"""Per-module noise state: what a noisy module consults at every forward.

``register_noise`` attaches a :class:`NoiseRuntime` to each noisy module as the plain attribute
``_nrnn_runtime`` (not a parameter or buffer, so ``state_dict`` is unchanged). It holds the module's resolved
config, its :class:`~nrnn_plugin.noise.NoiseSource`, and the switches that schedules, the regularizer and
inference-time sampling turn:

* ``level``: multiplier on both noise levels (noise schedules);
* ``probe_scale``: multiplier on the injected noise around the noise-free step (regularizer probes); a Python
  number, or a 0-dim tensor (the regularizer's ``jet`` estimator differentiates in it). A tensor scale always
  injects, even where its value is zero: the derivatives at zero are what is wanted;
* ``override``: ``None`` follows ``module.training`` and the config's mode; ``True``/``False`` forces noise on
  or off in any mode (inference-time sampling, regularizer probes);
* ``use_mean``: inject the scheme's mean coefficients instead of a draw (the regularizer's first-order term
  for biased schemes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.diffusion import AffineNoise, Diffusion
from nrnn_plugin.noise import NoiseSource

__all__ = ["NoiseRuntime", "runtimes", "noise_override", "noise_scale", "noise_level"]


class NoiseRuntime:
    """Noise state of one module (see module docstring)."""

    def __init__(self, config: NoiseConfig, source: NoiseSource) -> None:
        self.config = config
        self.source = source
        self.level = 1.0
        self.probe_scale: float | torch.Tensor = 1.0
        self.override: bool | None = None
        self.use_mean = False
        self._diffusion: tuple[float, Diffusion] | None = None

    def __repr__(self) -> str:
        return f"NoiseRuntime(config={self.config!r}, level={self.level}, override={self.override})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_diffusion"] = None  # rebuilt through the hooks after unpickling
        return state

    # ------------------------------------------------------------------ decisions
    def injecting(self, training: bool) -> bool:
        """Whether the module's forward injects noise now."""
        if not self.config.has_noise or self.level == 0.0 or _is_zero_scale(self.probe_scale):
            return False
        if self.override is not None:
            return self.override
        return training and self.config.injects_in_training

    def diffusion(self) -> Diffusion:
        """The scheme at the current level, through the ``nrnn_diffusion`` hook (cached per level)."""
        if self._diffusion is None or self._diffusion[0] != self.level:
            from nrnn_plugin.plugins import hook

            diffusion = hook().nrnn_diffusion(config=self.config, level=self.level)
            if diffusion is None:
                raise RuntimeError(f"no plugin provides a diffusion for scheme {self.config.scheme!r}")
            self._diffusion = (self.level, diffusion)
        return self._diffusion[1]

    def targets(self, has_cell_state: bool) -> tuple[str, ...]:
        """The states that receive noise: ``("h",)``, ``("c",)`` or ``("h", "c")``."""
        if not has_cell_state or self.config.target == "h":
            return ("h",)
        return ("c",) if self.config.target == "c" else ("h", "c")

    # ------------------------------------------------------------------ sampling
    def draw(
        self,
        rows: int,
        hidden_size: int,
        targets: Sequence[str],
        *,
        directions: int = 1,
        device: torch.device,
        dtype: torch.dtype,
    ) -> list[dict[str, AffineNoise]]:
        """Noise coefficients for ``directions`` x ``targets`` over ``rows`` rows, from ONE draw.

        Returns one ``{target: AffineNoise}`` per direction; coefficient tensors are ``[rows, H]`` (or
        ``[rows, 1]`` for a shared multiplicative factor). The draw has shape
        ``[directions, rows, len(targets) * width]`` (``[rows, width]`` when ``directions == 0``: cells).
        """
        diffusion = self.diffusion()
        if self.use_mean:
            mean = diffusion.mean_coefficients().scaled(self.probe_scale)
            return [{t: mean for t in targets} for _ in range(max(directions, 1))]
        width = diffusion.width(hidden_size)
        if width == 0:
            return [{t: AffineNoise() for t in targets} for _ in range(max(directions, 1))]
        if directions == 0:
            draws = self.source.normal((rows, len(targets) * width), device=device, dtype=dtype).unsqueeze(0)
        else:
            draws = self.source.normal((directions, rows, len(targets) * width), device=device, dtype=dtype)
        result = []
        for per_direction in draws:
            result.append(
                {
                    target: diffusion.coefficients(per_direction[:, i * width : (i + 1) * width], hidden_size).scaled(
                        self.probe_scale
                    )
                    for i, target in enumerate(targets)
                }
            )
        return result


def _is_zero_scale(scale: float | torch.Tensor) -> bool:
    """True for a numeric zero scale; a tensor scale is never treated as "off" (see module docstring)."""
    return not isinstance(scale, torch.Tensor) and scale == 0.0


def runtimes(model: nn.Module) -> Iterator[NoiseRuntime]:
    """The runtimes of every noisy module in ``model``."""
    for module in model.modules():
        runtime = getattr(module, "_nrnn_runtime", None)
        if runtime is not None:
            yield runtime


@contextlib.contextmanager
def _set_all(model: nn.Module, **values: object) -> Iterator[None]:
    saved = [(rt, {k: getattr(rt, k) for k in values}) for rt in runtimes(model)]
    try:
        for rt, _ in saved:
            for key, value in values.items():
                setattr(rt, key, value)
        yield
    finally:
        for rt, old in saved:
            for key, value in old.items():
                setattr(rt, key, value)


def noise_override(model: nn.Module, inject: bool | None) -> contextlib.AbstractContextManager[None]:
    """Force noise on (``True``) or off (``False``) in every noisy module of ``model``, in train and eval."""
    return _set_all(model, override=inject)


def noise_scale(model: nn.Module, scale: float | torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """Multiply the injected noise of every noisy module by ``scale`` (regularizer probes).

    ``scale`` is a number or a 0-dim tensor; a tensor is kept as is (not converted), so derivatives in it can
    be taken, and it injects even where its value is zero.
    """
    return _set_all(model, probe_scale=scale if isinstance(scale, torch.Tensor) else float(scale))


def noise_level(model: nn.Module, level: float) -> None:
    """Set the level multiplier (a schedule's factor) of every noisy module of ``model``."""
    for rt in runtimes(model):
        rt.level = float(level)
