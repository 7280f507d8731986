"""Validated, immutable configuration of Noisy RNN training.

:class:`NoiseConfig` is the single place where the method is switched on and tuned. It is a frozen
dataclass validated on construction: every invalid value raises ``ValueError`` or ``TypeError`` naming the
field, the allowed values and the value received, and unknown keys in :meth:`NoiseConfig.from_dict`,
:meth:`NoiseConfig.from_yaml` and :meth:`NoiseConfig.from_env` are errors, not warnings.

The noise model (``docs/method.md``) for a recurrent state ``h`` with cell map ``Psi``::

    h_{k+1} = Psi(h_k, x_k) + sqrt(dt) * (additive * xi_k + multiplicative * h_k * xi'_k)

with ``xi, xi'`` independent standard Gaussians (Euler-Maruyama), the Milstein correction, or the public
research code's scheme (``scheme="reference"``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from nrnn_plugin.validation import (
    check_bool,
    check_choice,
    check_int,
    check_names,
    check_real,
    expected,
    reject_unknown,
)
from nrnn_plugin.yaml_io import dump_yaml, read_yaml, yaml_loader

__all__ = ["NoiseConfig", "Schedule", "SCHEMES", "TARGETS", "MODES", "ESTIMATORS", "yaml_loader"]

SCHEMES = ("euler_maruyama", "milstein", "reference")
TARGETS = ("h", "c", "both")
MODES = ("noise", "regularizer", "both")
ESTIMATORS = ("fd", "jet", "exact")
SCHEDULE_KINDS = ("constant", "linear", "cosine")
SCHEDULE_INTERVALS = ("step", "epoch")

_ENV_PREFIX = "NRNN_"
# Variables with these prefixes configure other parts of the library, not the noise (the plugin loader; the
# compiled kernels: NRNN_KERNELS, NRNN_KERNELS_ISA, NRNN_KERNELS_CACHE).
_ENV_RESERVED_PREFIXES = ("NRNN_PLUGIN_", "NRNN_KERNELS")
# Variables of the command line, not of the noise.
_ENV_RESERVED = ("NRNN_DEBUG",)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Schedule:
    """How the noise level changes during training: a multiplier in ``[0, 1]`` on both noise levels.

    ``kind="constant"`` keeps the configured level. ``"linear"`` and ``"cosine"`` ramp the level from 0 to 1
    over ``warmup`` units, then (if ``decay > 0``) move it from 1 to ``final`` over ``decay`` units, with a
    straight or a half-cosine shape. A unit is an optimizer step or an epoch (``interval``).

    Fields:
        kind: ``"constant"`` (the configured level throughout), ``"linear"`` or ``"cosine"`` ramps.
        warmup: units to ramp the level from 0 to 1 (``linear`` / ``cosine``).
        decay: units to move the level from 1 to ``final`` after the warm-up (0: stay at 1).
        final: the level at the end of the decay, in ``[0, 1]``.
        interval: the unit: ``"step"`` (optimizer steps) or ``"epoch"``.
    """

    kind: str = "constant"
    warmup: int = 0
    decay: int = 0
    final: float = 0.0
    interval: str = "step"

    def __post_init__(self) -> None:
        owner = "NoiseConfig.schedule"
        set_ = functools.partial(object.__setattr__, self)  # frozen dataclass
        check_choice(f"{owner}.kind", self.kind, SCHEDULE_KINDS)
        set_("warmup", check_int(f"{owner}.warmup", self.warmup, minimum=0))
        set_("decay", check_int(f"{owner}.decay", self.decay, minimum=0))
        set_("final", check_real(f"{owner}.final", self.final, minimum=0.0, maximum=1.0))
        check_choice(f"{owner}.interval", self.interval, SCHEDULE_INTERVALS)
        if self.kind == "constant" and (self.warmup or self.decay):
            raise ValueError(
                f"{owner}: kind 'constant' takes no warmup or decay (got warmup={self.warmup}, "
                f"decay={self.decay}); use kind 'linear' or 'cosine'"
            )

    def factor(self, progress: int) -> float:
        """Multiplier on the noise levels after ``progress`` units (steps or epochs) of training."""
        if self.kind == "constant":
            return 1.0
        if progress < self.warmup:
            return self._shape(progress / self.warmup)
        if self.decay == 0:
            return 1.0
        into_decay = min(progress - self.warmup, self.decay) / self.decay
        return 1.0 - (1.0 - self.final) * self._shape(into_decay)

    def _shape(self, fraction: float) -> float:
        if self.kind == "linear":
            return fraction
        return 0.5 * (1.0 - math.cos(math.pi * fraction))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        if not isinstance(data, Mapping):
            raise expected("NoiseConfig.schedule", "a mapping of schedule fields", data, TypeError)
        reject_unknown("NoiseConfig.schedule", data, [f.name for f in fields(cls)])
        return cls(**data)


@dataclass(frozen=True)
class NoiseConfig:
    """Configuration of Noisy RNN training; frozen and validated on construction.

    Noise levels and scheme:
        additive: ``sigma_add >= 0``, the additive diffusion coefficient.
        multiplicative: ``sigma_mult >= 0``, the multiplicative (state-proportional) diffusion coefficient.
        dt: the SDE step ``> 0``; noise is scaled by ``sqrt(dt)`` (Euler-Maruyama, Milstein).
        scheme: ``"euler_maruyama"`` (default, Ito), ``"milstein"`` (strong order 1; one Gaussian per unit
            drives both parts) or ``"reference"`` (the public research code's scheme, ``docs/method.md``).
        target: which LSTM state is noised: ``"h"``, ``"c"`` or ``"both"``. GRU and Elman cells have ``h`` only.
        shared_multiplicative: one Brownian factor per sample for the multiplicative part (all units share it).
        seed: seed of the noise streams; ``None`` derives it from ``torch.initial_seed()`` (read, never set).

    Which modules:
        enabled: ``False`` makes :func:`register_noise` and the Lightning callback no-ops.
        include / exclude: ``fnmatch`` patterns on qualified module names (``"encoder.*"``); an empty
            ``include`` means every supported recurrent module.

    Training mode (explicit regularizer, ``docs/regularizer.md``):
        mode: ``"noise"`` injects noise, ``"regularizer"`` trains noise-free with ``loss + weight * reg``,
            ``"both"`` does both.
        regularizer_weight: ``>= 0`` multiplier of the explicit regularizer.
        estimator / probes: how the regularizer is estimated (``"fd"``, ``"jet"``, ``"exact"``) and with how
            many noise probes.
        schedule: a :class:`Schedule` (or mapping) for noise warm-up and decay.
    """

    additive: float = 0.0
    multiplicative: float = 0.0
    dt: float = 1.0
    scheme: str = "euler_maruyama"
    target: str = "h"
    shared_multiplicative: bool = False
    seed: int | None = None
    enabled: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    mode: str = "noise"
    regularizer_weight: float = 1.0
    estimator: str = "fd"
    probes: int = 1
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)  # frozen dataclass
        key = "NoiseConfig.{}".format
        set_("additive", check_real(key("additive"), self.additive, minimum=0.0))
        set_("multiplicative", check_real(key("multiplicative"), self.multiplicative, minimum=0.0))
        set_("dt", check_real(key("dt"), self.dt, minimum=0.0, strict=True))
        check_choice(key("scheme"), self.scheme, SCHEMES)
        check_choice(key("target"), self.target, TARGETS)
        set_("shared_multiplicative", check_bool(key("shared_multiplicative"), self.shared_multiplicative))
        if self.seed is not None:
            set_("seed", check_int(key("seed"), self.seed, minimum=0))
        set_("enabled", check_bool(key("enabled"), self.enabled))
        patterns = "module-name patterns (strings, fnmatch syntax)"
        set_("include", check_names(key("include"), self.include, what=patterns))
        set_("exclude", check_names(key("exclude"), self.exclude, what=patterns))
        check_choice(key("mode"), self.mode, MODES)
        set_("regularizer_weight", check_real(key("regularizer_weight"), self.regularizer_weight, minimum=0.0))
        check_choice(key("estimator"), self.estimator, ESTIMATORS)
        set_("probes", check_int(key("probes"), self.probes, minimum=1))
        if isinstance(self.schedule, Mapping):
            set_("schedule", Schedule.from_dict(self.schedule))
        elif not isinstance(self.schedule, Schedule):
            raise expected(key("schedule"), "a Schedule or a mapping of schedule fields", self.schedule, TypeError)
        if self.scheme == "milstein" and self.shared_multiplicative:
            raise ValueError(
                "NoiseConfig.shared_multiplicative: expected False with scheme='milstein' (Milstein needs one "
                "Gaussian per unit driving both noise parts), got True; use scheme='euler_maruyama'"
            )

    # ------------------------------------------------------------------ derived properties
    @property
    def has_noise(self) -> bool:
        """True when the configuration injects any noise at all."""
        return self.enabled and (self.additive > 0.0 or self.multiplicative > 0.0)

    @property
    def injects_in_training(self) -> bool:
        """True when training forwards of noisy modules sample noise (modes ``noise`` and ``both``)."""
        return self.has_noise and self.mode in ("noise", "both")

    @property
    def uses_regularizer(self) -> bool:
        """True when the explicit regularizer is added to the training loss (modes ``regularizer``, ``both``)."""
        return self.enabled and self.mode in ("regularizer", "both") and self.regularizer_weight > 0.0

    def replace(self, **changes: Any) -> NoiseConfig:
        """A copy with ``changes`` applied, validated like a new config."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-safe dictionary; ``NoiseConfig.from_dict(cfg.to_dict()) == cfg``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["include"] = list(self.include)
        data["exclude"] = list(self.exclude)
        data["schedule"] = self.schedule.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseConfig:
        """Build from a mapping of field names; unknown keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise TypeError(f"NoiseConfig.from_dict: expected a mapping of config fields, got {data!r}")
        reject_unknown("NoiseConfig", data, [f.name for f in fields(cls)])
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], key: str | None = None) -> NoiseConfig:
        """Load from a YAML file (:mod:`nrnn_plugin.yaml_io`: safe loading, YAML 1.2 numbers and booleans,
        duplicate keys refused); ``key`` selects a top-level section (e.g. ``"noise"``).

        An empty file, or a section that is empty or ``null``, gives the defaults; anything else that is not a
        mapping (``false``, ``0``, ``[]``, ``''``) is an error, as is malformed YAML (``ValueError`` with the
        line and column).
        """
        data = _mapping_or_empty(read_yaml(path), f"NoiseConfig.from_yaml: {str(path)!r}")
        if key is not None:
            if key not in data:
                raise ValueError(f"NoiseConfig.from_yaml: {str(path)!r} has no top-level section {key!r}")
            data = _mapping_or_empty(data[key], f"NoiseConfig.from_yaml: section {key!r} of {str(path)!r}")
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        """This configuration as YAML text that :meth:`from_yaml` reads back as an equal configuration."""
        return dump_yaml(self.to_dict())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, base: NoiseConfig | None = None) -> NoiseConfig:
        """Build from ``NRNN_*`` environment variables (``NRNN_ADDITIVE=0.05``, ``NRNN_ENABLED=0``, ...).

        ``NRNN_CONFIG`` names a YAML file read first; individual variables override it and ``base``.
        Nested schedule fields use ``NRNN_SCHEDULE_<FIELD>``. Lists (``include``, ``exclude``) are
        comma-separated. ``NRNN_PLUGIN_*`` variables belong to the plugin loader, ``NRNN_KERNELS*`` to the
        compiled kernels and ``NRNN_DEBUG`` to the command line: they are ignored here; any other unknown
        ``NRNN_*`` variable is an error, so a typo cannot silently leave noise off. Values must be strings
        (``TypeError`` names the variable otherwise).
        """
        env = dict(os.environ if environ is None else environ)
        for var, raw in env.items():
            if isinstance(var, str) and var.startswith(_ENV_PREFIX) and not isinstance(raw, str):
                raise expected(var, "a string (an environment variable's value)", raw, TypeError)
        data: dict[str, Any] = base.to_dict() if base is not None else {}
        config_file = env.pop(_ENV_PREFIX + "CONFIG", None)
        if config_file:
            from_file = _mapping_or_empty(read_yaml(config_file), f"NRNN_CONFIG={config_file!r}")
            validated = cls.from_dict(from_file).to_dict()  # the file alone must be a valid config
            data.update({key: validated[key] for key in from_file})  # it overrides only the keys it sets
        schedule: dict[str, Any] = dict(data.get("schedule", {}))
        top_fields = {f.name: f for f in fields(cls) if f.name != "schedule"}
        schedule_fields = {f.name: f for f in fields(Schedule)}
        for var, raw in sorted((k, v) for k, v in env.items() if isinstance(k, str)):
            if not var.startswith(_ENV_PREFIX) or var.startswith(_ENV_RESERVED_PREFIXES) or var in _ENV_RESERVED:
                continue
            name = var[len(_ENV_PREFIX) :].lower()
            if name.startswith("schedule_") and name[len("schedule_") :] in schedule_fields:
                sub = name[len("schedule_") :]
                schedule[sub] = _parse_env_value(var, raw, Schedule.__dataclass_fields__[sub].type)
            elif name in top_fields:
                data[name] = _parse_env_value(var, raw, top_fields[name].type)
            else:
                allowed = sorted(
                    [_ENV_PREFIX + n.upper() for n in top_fields]
                    + [_ENV_PREFIX + "SCHEDULE_" + n.upper() for n in schedule_fields]
                    + [_ENV_PREFIX + "CONFIG"]
                )
                raise ValueError(f"NoiseConfig.from_env: unknown variable {var}; allowed variables are {allowed}")
        if schedule:
            data["schedule"] = schedule
        return cls.from_dict(data)


def _mapping_or_empty(data: Any, where: str) -> Mapping[str, Any]:
    """``{}`` for an empty document or section (``None``); the mapping itself; an error for anything else."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise expected(where, "a mapping of config fields (or an empty section)", data, TypeError)
    return data


def _parse_env_value(var: str, raw: str, annotation: Any) -> Any:
    """Parse one environment string by the field's annotation (annotations are strings here)."""
    text = raw.strip()
    kind = str(annotation)
    if kind == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{var}: expected one of {sorted(_TRUE | _FALSE)}, got {raw!r}")
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{var}: expected a number, got {raw!r}") from None
    if kind in ("int", "int | None"):
        if kind == "int | None" and text.lower() in ("", "none", "null"):
            return None
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{var}: expected an integer, got {raw!r}") from None
    if kind == "tuple[str, ...]":
        return tuple(p.strip() for p in text.split(",") if p.strip())
    return text
