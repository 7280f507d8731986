"""The noise state of a noisy module and the one public API that reaches it.

:func:`nrnn_plugin.register_noise` attaches a :class:`NoiseRuntime` to each noisy module (a plain attribute,
not a parameter or buffer, so ``state_dict`` is unchanged). The runtime holds the module's resolved config,
its :class:`~nrnn_plugin.noise.NoiseSource` (with the sampler resolved at registration), its scheme (the
:class:`~nrnn_plugin.diffusion.Diffusion` resolved at registration) and the switches that schedules, the
regularizer and inference-time sampling turn. Nothing else in the library touches that attribute: layers,
the regularizer, inference, the Lightning callback and the adapters go through these functions.

* :func:`runtime_of` - the runtime of one module (``None`` when it is not noisy);
* :func:`noisy_modules` / :func:`noise_runtimes` - the one walk over a model;
* :func:`noise_control` - the one context manager for probes and overrides: noise forced on or off, a scale
  around the noise-free step, the scheme's mean instead of a draw, another scheme, a level;
* :func:`set_noise_level` - the persistent level a schedule sets before every training batch;
* :func:`recording` / :func:`replaying` - record every draw of a model's noisy modules and replay it.

The contract of a noisy class is the :class:`NoisyModule` protocol.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import ClassVar, NoReturn, Protocol, cast, runtime_checkable

import torch
from torch import nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.counter_noise import CounterNoise, StateNoise, key_tensor
from nrnn_plugin.diffusion import AffineNoise, Diffusion
from nrnn_plugin.noise import NoiseKey, NoiseSource, NoiseTape

__all__ = [
    "NoisyModule",
    "NoiseRuntime",
    "runtime_of",
    "attach_runtime",
    "detach_runtime",
    "noisy_modules",
    "noise_runtimes",
    "noise_control",
    "set_noise_level",
    "recording",
    "replaying",
    "refuse_capture",
    "refuse_scripting",
]

_ATTRIBUTE = "_nrnn_runtime"

#: ``scheme=`` of :func:`noise_control`: a scheme, or a function of each module's current scheme.
SchemeOverride = Diffusion | Callable[[Diffusion], Diffusion]


@runtime_checkable
class NoisyModule(Protocol):
    """The contract of a noisy class (what the ``nrnn_noisy_class`` hook returns).

    A noisy class is a statically defined subclass of the module's class, adds no parameters or buffers, and
    reads its noise state with :func:`runtime_of` in ``forward``. It declares:

    * ``nrnn_original_class``: the class :func:`~nrnn_plugin.remove_noise` restores;
    * ``nrnn_validate(module, config)``: a class method that raises ``ValueError`` (naming the option) when
      ``module`` cannot be made noisy with ``config``.
    """

    nrnn_original_class: ClassVar[type[nn.Module]]

    @classmethod
    def nrnn_validate(cls, module: nn.Module, config: NoiseConfig) -> None: ...


@dataclasses.dataclass
class _Switches:
    """The probe and override state of a runtime (see :func:`noise_control`)."""

    inject: bool | None = None
    scale: float | torch.Tensor = 1.0
    mean: bool = False
    scheme: Diffusion | None = None


class NoiseRuntime:
    """Noise state of one module.

    Args:
        config: the module's resolved configuration.
        source: its noise stream.
        diffusion: its scheme at level 1 (resolved through the ``nrnn_diffusion`` hook at registration).

    ``level`` is the schedule's multiplier on both noise levels (:func:`set_noise_level`); the probe and
    override switches are set only inside :func:`noise_control`.
    """

    def __init__(self, config: NoiseConfig, source: NoiseSource, diffusion: Diffusion) -> None:
        self.config = config
        self.source = source
        self.level = 1.0
        self._base = diffusion
        self._switches = _Switches()
        self._scaled: tuple[float, Diffusion] | None = None

    def __repr__(self) -> str:
        return f"NoiseRuntime(config={self.config!r}, level={self.level}, switches={self._switches})"

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_scaled"] = None  # a cache
        return state

    # ------------------------------------------------------------------ decisions
    @property
    def scale(self) -> float | torch.Tensor:
        """Multiplier on the injected noise around the noise-free step (``1`` outside probes)."""
        return self._switches.scale

    @property
    def uses_mean(self) -> bool:
        """True while the scheme's mean coefficients are injected instead of draws."""
        return self._switches.mean

    def injecting(self, training: bool) -> bool:
        """Whether the module's forward injects noise now (``training`` is ``module.training``).

        A tensor scale always injects, even where its value is zero: the derivatives at zero are what the
        regularizer's ``jet`` estimator wants.
        """
        scale = self._switches.scale
        if not self.config.has_noise or self.level == 0.0 or (not isinstance(scale, torch.Tensor) and scale == 0.0):
            return False
        if self._switches.inject is not None:
            return self._switches.inject
        return training and self.config.injects_in_training

    def diffusion(self) -> Diffusion:
        """The scheme now: an override from :func:`noise_control`, else the registered one at ``level``."""
        if self._switches.scheme is not None:
            return self._switches.scheme
        if self.level == 1.0:
            return self._base
        if self._scaled is None or self._scaled[0] != self.level:
            self._scaled = (self.level, self._base.at_level(self.level))
        return self._scaled[1]

    def targets(self, has_cell_state: bool) -> tuple[str, ...]:
        """The states that receive noise: ``("h",)``, ``("c",)`` or ``("h", "c")``."""
        if not has_cell_state or self.config.target == "h":
            return ("h",)
        return ("c",) if self.config.target == "c" else ("h", "c")

    # ------------------------------------------------------------------ sampling
    def draw(
        self,
        rows: int,
        hidden_size: int | Mapping[str, int],
        targets: Sequence[str],
        *,
        directions: int = 1,
        device: torch.device,
        dtype: torch.dtype,
    ) -> list[dict[str, AffineNoise]]:
        """Noise coefficients for ``directions`` x ``targets`` over ``rows`` rows (:meth:`draw_lazy`, generated)."""
        drawn = self.draw_lazy(
            rows, hidden_size, targets, directions=directions, device=device, dtype=dtype, lazy=False
        )
        return cast("list[dict[str, AffineNoise]]", drawn)

    @torch.compiler.disable  # torch.compile: draws run eagerly (a graph break), so streams advance as in eager
    def draw_lazy(
        self,
        rows: int,
        hidden_size: int | Mapping[str, int],
        targets: Sequence[str],
        *,
        directions: int = 1,
        device: torch.device,
        dtype: torch.dtype,
        lazy: bool = True,
    ) -> list[dict[str, StateNoise]]:
        """The noise of ``directions`` x ``targets`` over ``rows`` rows.

        ``hidden_size`` is the units of every target, or a mapping ``{target: units}`` (an LSTM with a
        projection: ``h`` has ``proj_size`` units, ``c`` has ``hidden_size``). Targets of equal size share ONE
        draw of shape ``[directions, rows, len(targets) * width]`` (``[rows, width]`` when ``directions == 0``:
        cells); targets of different sizes get one draw each, in ``targets`` order. Returns one
        ``{target: noise}`` per direction: :class:`AffineNoise` coefficient tensors ``[rows, units]`` (or
        ``[rows, 1]`` for a shared multiplicative factor), or, with ``lazy`` and a draw of the counter-based
        stream, a :class:`~nrnn_plugin.counter_noise.CounterNoise` that the kernel generates itself.
        """
        refuse_capture(self.source.name)
        diffusion = self.diffusion()
        copies = max(directions, 1)
        scale = self._switches.scale
        if self._switches.mean:
            mean = diffusion.mean_coefficients().scaled(scale)
            return [dict.fromkeys(targets, mean) for _ in range(copies)]
        sizes = {t: hidden_size if isinstance(hidden_size, int) else hidden_size[t] for t in targets}
        groups = [list(targets)] if len(set(sizes.values())) <= 1 else [[t] for t in targets]
        result: list[dict[str, StateNoise]] = [{} for _ in range(copies)]
        for group in groups:
            units = sizes[group[0]]
            width = diffusion.width(units)
            if width == 0:
                for per_direction in result:
                    per_direction.update({t: AffineNoise() for t in group})
                continue
            shape = (rows, len(group) * width) if directions == 0 else (directions, rows, len(group) * width)
            planes = diffusion.planes(units)
            drawn = self.source.draw(shape, device=device, dtype=dtype, planes=planes * len(group))
            if isinstance(drawn, NoiseKey) and lazy:
                for per_direction, starts in zip(result, drawn.starts()):
                    for i, target in enumerate(group):
                        mine = tuple(starts[i * len(planes) : (i + 1) * len(planes)])
                        per_direction[target] = CounterNoise(
                            drawn.seed, drawn.offset, mine, planes, rows, units, diffusion, scale
                        )
                continue
            draws = key_tensor(drawn, device, dtype) if isinstance(drawn, NoiseKey) else drawn
            if directions == 0:
                draws = draws.unsqueeze(0)
            for per_direction, block_of_direction in zip(result, draws):
                for i, target in enumerate(group):
                    block = block_of_direction[:, i * width : (i + 1) * width]
                    per_direction[target] = diffusion.coefficients(block, units).scaled(scale)
        return result


# ---------------------------------------------------------------------------------------------- capture


def refuse_capture(name: str) -> None:
    """Raise when a noise draw happens under ``torch.jit.trace`` or ``torch.export`` (also ``torch.onnx``): the
    captured graph would freeze this one draw as a constant. ``name``: the noise stream (module) drawing."""
    if torch.jit.is_tracing():
        what = "torch.jit.trace"
    elif torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        what = "torch.export / torch.onnx.export"
    else:
        return
    raise RuntimeError(
        f"{what} of a forward that injects noise (module {name!r} is in training mode or has noise forced on): the "
        "graph would freeze one noise draw as a constant. Trace or export the eval model (model.eval(): a noisy "
        "module's eval forward is the plain module's), or call nrnn_plugin.remove_noise(model) first"
    )


def refuse_scripting(module: object) -> NoReturn:
    """``__prepare_scriptable__`` of the noisy classes: TorchScript cannot compile noise injection (and replacing the
    module here would strip the noise from the live model, since ``torch.jit.script`` writes it back)."""
    raise RuntimeError(
        f"torch.jit.script: {type(module).__name__} is a noisy module (nrnn_plugin.register_noise) and noise "
        "injection is Python that TorchScript cannot compile. Script the plain model, whose forward is the noisy "
        "module's eval forward: torch.jit.script(nrnn_plugin.remove_noise(copy.deepcopy(model)).eval()) (or "
        "nrnn_plugin.remove_noise(model) after training); torch.export works on the eval model as it is"
    )


# ---------------------------------------------------------------------------------------------- access


def runtime_of(module: nn.Module) -> NoiseRuntime | None:
    """The runtime of ``module`` if it is noisy, else ``None``."""
    runtime = module.__dict__.get(_ATTRIBUTE)
    return runtime if isinstance(runtime, NoiseRuntime) else None


def attach_runtime(module: nn.Module, runtime: NoiseRuntime) -> None:
    """Give ``module`` its runtime (called by :func:`nrnn_plugin.register_noise` only)."""
    module.__dict__[_ATTRIBUTE] = runtime


def detach_runtime(module: nn.Module) -> None:
    """Take ``module``'s runtime away (called by :func:`nrnn_plugin.remove_noise` only)."""
    module.__dict__.pop(_ATTRIBUTE, None)


def noisy_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every noisy module in ``model`` (``""`` for ``model`` itself)."""
    for name, module in model.named_modules():
        if runtime_of(module) is not None:
            yield name, module


def noise_runtimes(model: nn.Module) -> Iterator[tuple[str, NoiseRuntime]]:
    """``(qualified name, runtime)`` of every noisy module in ``model``."""
    for name, module in model.named_modules():
        runtime = runtime_of(module)
        if runtime is not None:
            yield name, runtime


# ---------------------------------------------------------------------------------------------- control


def set_noise_level(model: nn.Module, level: float) -> None:
    """Set the level multiplier (a schedule's factor, ``>= 0``) of every noisy module of ``model``."""
    value = float(level)
    if not value >= 0.0:
        raise ValueError(f"set_noise_level: level must be a number >= 0, got {level!r}")
    for _, runtime in noise_runtimes(model):
        runtime.level = value


@contextlib.contextmanager
def noise_control(
    model: nn.Module,
    *,
    inject: bool | None = None,
    scale: float | torch.Tensor | None = None,
    mean: bool | None = None,
    scheme: SchemeOverride | None = None,
) -> Iterator[list[NoiseRuntime]]:
    """Override how every noisy module of ``model`` injects noise inside the block; restored afterwards.

    Args:
        inject: ``True``/``False`` forces noise on or off in train and eval mode alike (inference-time
            sampling, regularizer probes); ``None`` leaves the current setting.
        scale: multiply the injected noise around the noise-free step (``gate -> 1 + s (gate - 1)``,
            ``mult -> s mult``, ``add -> s add``). A number, or a 0-dim tensor that is kept as is, so derivatives
            in it can be taken (it injects even where its value is zero).
        mean: inject the scheme's mean coefficients instead of draws (the regularizer's first-order term).
        scheme: a :class:`~nrnn_plugin.diffusion.Diffusion` to use instead of each module's, or a function of
            each module's current scheme returning the one to use.

    Yields the runtimes that are controlled. Blocks nest; each restores what it found.
    """
    runtimes = [runtime for _, runtime in noise_runtimes(model)]
    saved = [dataclasses.replace(runtime._switches) for runtime in runtimes]
    if scale is not None and not isinstance(scale, torch.Tensor):
        scale = float(scale)
    try:
        for runtime in runtimes:
            switches = runtime._switches
            if scheme is not None:
                switches.scheme = (
                    scheme(runtime.diffusion()) if callable(scheme) and not isinstance(scheme, Diffusion) else scheme
                )
            if inject is not None:
                switches.inject = inject
            if scale is not None:
                switches.scale = scale
            if mean is not None:
                switches.mean = mean
        yield runtimes
    finally:
        for runtime, switches in zip(runtimes, saved):
            runtime._switches = switches


# ---------------------------------------------------------------------------------------------- record / replay


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[dict[str, NoiseTape]]:
    """Record every draw of every noisy module of ``model``; yields ``{module name: tape}``."""
    tapes: dict[str, NoiseTape] = {}
    with contextlib.ExitStack() as stack:
        for name, runtime in noise_runtimes(model):
            tapes[name] = stack.enter_context(runtime.source.recording(NoiseTape()))
        yield tapes


@contextlib.contextmanager
def replaying(model: nn.Module, tapes: Mapping[str, NoiseTape]) -> Iterator[None]:
    """Replay the draws recorded by :func:`recording` (same modules, same order of draws)."""
    with contextlib.ExitStack() as stack:
        for name, runtime in noise_runtimes(model):
            if name not in tapes:
                raise RuntimeError(f"noise replay: no tape was recorded for module {name!r}")
            stack.enter_context(runtime.source.replaying(tapes[name]))
        yield
