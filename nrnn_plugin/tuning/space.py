"""The search space of a noise-level study: which settings vary, over which ranges, and their "off" values.

A :class:`Param` is one searched setting. Its ``name`` is either a :class:`~nrnn_plugin.config.NoiseConfig`
field (``additive``, ``multiplicative``, ``scheme``, ``target``, ``mode``, ``regularizer_weight``, ...) or a
schedule field written ``schedule.<field>`` (``schedule.kind``, ``schedule.warmup``): those build the trial's
noise configuration. Any other name (``dropout``, ``weight_decay``, ``input_noise``) is passed through to
``train_and_evaluate`` in :attr:`Candidate.params`, so the same tuner chooses the strength of the baselines a
user would try instead of hidden-state noise.

Every parameter has a ``baseline`` value ("off": 0 for levels, the first choice for categories): trial 0 of
every study runs all of them at their baseline, i.e. the noise-free model, and the selection rule measures the
other trials against it (:mod:`nrnn_plugin.tuning.selection`).

The ``tune:`` section of a run file (``nrnn tune``) is read by :meth:`SearchSpace.from_dict`::

    tune:
      space:
        additive: {low: 0.02, high: 1.0, log: true}
        multiplicative: {low: 0.0, high: 0.3}
        scheme: [euler_maruyama, milstein]          # a list: a categorical parameter
      objective: pareto                             # pareto | constrained (constrained allows pruning)
      tolerance: 0.02                               # allowed relative loss of the clean metric
      perturbations: {white_noise: 0.4, salt_and_pepper: 0.05}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nrnn_plugin.config import NoiseConfig, Schedule
from nrnn_plugin.validation import check_bool, check_real, expected, reject_unknown

__all__ = ["Param", "SearchSpace", "Candidate", "DEFAULT_SPACE", "NOISE_FIELDS"]

#: Names that go into the trial's NoiseConfig (the rest are the user's own parameters).
NOISE_FIELDS = tuple(
    f.name for f in dataclasses.fields(NoiseConfig) if f.name not in ("schedule", "include", "exclude")
)
_SCHEDULE_FIELDS = tuple(f"schedule.{f.name}" for f in dataclasses.fields(Schedule))
_INTEGER_FIELDS = ("probes", "seed", "schedule.warmup", "schedule.decay")


@dataclass(frozen=True)
class Param:
    """One searched setting: a number in ``[low, high]`` (``log`` scale, ``integer``) or one of ``choices``.

    ``baseline`` is the value of the noise-free trial 0 (default: ``0`` for numbers, the first choice). It need
    not lie inside the range: a log-scale level searched in ``[0.01, 1]`` still has baseline 0.
    """

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()
    baseline: Any = None

    def __post_init__(self) -> None:
        key = f"tune.space.{self.name}"
        if not isinstance(self.name, str) or not self.name:
            raise expected("Param.name", "a non-empty string", self.name)
        if self.choices:
            object.__setattr__(self, "choices", tuple(self.choices))
            if self.low is not None or self.high is not None:
                raise ValueError(f"{key}: give either choices or low/high, got both")
            if self.baseline is None:
                object.__setattr__(self, "baseline", self.choices[0])
            return
        if self.low is None or self.high is None:
            raise ValueError(f"{key}: expected low and high (a range) or choices (a list), got neither")
        low = check_real(f"{key}.low", self.low)
        high = check_real(f"{key}.high", self.high, minimum=low, strict=True)
        check_bool(f"{key}.log", self.log)
        check_bool(f"{key}.integer", self.integer)
        if self.log and low <= 0:
            raise ValueError(f"{key}.low: expected a number > 0 on a log scale, got {self.low!r}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if self.baseline is None:
            object.__setattr__(self, "baseline", 0 if self.integer else 0.0)

    @classmethod
    def from_spec(cls, name: str, spec: Any) -> Param:
        """``{low, high, log, integer, baseline}``, a list of choices, or ``{choices: [...], baseline}``."""
        if isinstance(spec, Param):
            return spec
        if isinstance(spec, (list, tuple)):
            if not spec:
                raise ValueError(f"tune.space.{name}: expected a non-empty list of choices, got []")
            return cls(name, choices=tuple(spec))
        if not isinstance(spec, Mapping):
            raise expected(f"tune.space.{name}", "a mapping {low, high, log} or a list of choices", spec)
        reject_unknown(f"tune.space.{name}", spec, ["low", "high", "log", "integer", "choices", "baseline"])
        options: dict[str, Any] = {k: (tuple(v) if k == "choices" else v) for k, v in spec.items()}
        return cls(name, **options)

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low or 0), int(self.high or 0), log=self.log)
        return trial.suggest_float(self.name, float(self.low or 0.0), float(self.high or 0.0), log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.choices:
            return {"choices": list(self.choices), "baseline": self.baseline}
        return {"low": self.low, "high": self.high, "log": self.log, "integer": self.integer, "baseline": self.baseline}


@dataclass(frozen=True)
class Candidate:
    """One trial as ``train_and_evaluate`` receives it.

    Attributes:
        number: the trial number (0 is the noise-free baseline).
        noise: the trial's :class:`NoiseConfig` (the study's base config with the searched noise fields set).
        params: every searched value by name, noise fields and the user's own (``dropout``, ...).
        baseline: True for the noise-free trial that the others are measured against.
        trial: the ``optuna.trial.Trial`` (for pruning callbacks; see :meth:`report`).
    """

    number: int
    noise: NoiseConfig
    params: Mapping[str, Any]
    baseline: bool
    trial: Any = None
    prunable: bool = False

    def report(self, value: float, step: int) -> None:
        """Report an intermediate validation loss (lower is better); raises ``optuna.TrialPruned`` when the
        study's pruner stops this trial. Does nothing for the baseline or when the study cannot prune
        (``objective="pareto"``: Optuna does not prune multi-objective studies)."""
        if not self.prunable or self.baseline or self.trial is None:
            return
        import optuna

        self.trial.report(float(value), int(step))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (intermediate value {value:.4g})")


@dataclass(frozen=True)
class SearchSpace:
    """The searched parameters and the base :class:`NoiseConfig` they modify (seed, dt, include, ...)."""

    params: tuple[Param, ...]
    base: NoiseConfig = field(default_factory=NoiseConfig)

    def __post_init__(self) -> None:
        params = tuple(self.params)
        if not params:
            raise ValueError("SearchSpace: expected at least one parameter, got none")
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError(f"SearchSpace: parameter names must be distinct, got {names}")
        object.__setattr__(self, "params", params)
        for p in params:  # the baseline and the range ends must make valid configs
            if self._is_noise(p.name):
                for value in (p.baseline, *(p.choices or (p.low, p.high))):
                    self.noise_config({p.name: value})

    @staticmethod
    def _is_noise(name: str) -> bool:
        return name in NOISE_FIELDS or name in _SCHEDULE_FIELDS

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, base: NoiseConfig | None = None) -> SearchSpace:
        """A space from ``{name: spec}`` (see :meth:`Param.from_spec`); ``None`` or empty: :data:`DEFAULT_SPACE`."""
        base = base or NoiseConfig()
        if not data:
            return dataclasses.replace(DEFAULT_SPACE, base=base)
        if not isinstance(data, Mapping):
            raise expected("tune.space", "a mapping of parameter name -> range or choices", data)
        return cls(tuple(Param.from_spec(str(name), spec) for name, spec in data.items()), base=base)

    def noise_config(self, values: Mapping[str, Any]) -> NoiseConfig:
        """The base config with the noise fields of ``values`` set (``schedule.*`` into the schedule)."""
        changes = {k: v for k, v in values.items() if k in NOISE_FIELDS}
        schedule = {k.split(".", 1)[1]: v for k, v in values.items() if k in _SCHEDULE_FIELDS}
        for key in _INTEGER_FIELDS:
            short = key.split(".", 1)[-1]
            if key in values:
                (schedule if key.startswith("schedule.") else changes)[short] = int(values[key])
        if schedule:
            merged = {**self.base.schedule.to_dict(), **schedule}
            if merged.get("kind") == "constant":
                merged.update(warmup=0, decay=0)
            changes["schedule"] = Schedule.from_dict(merged)
        return self.base.replace(**changes)

    def baseline_values(self) -> dict[str, Any]:
        return {p.name: p.baseline for p in self.params}

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        return {p.name: p.to_dict() for p in self.params}


#: Additive level on a log scale (0.02 to 1: the per-step noise of a unit-scale hidden state), multiplicative
#: level linear in [0, 0.3]. Trial 0 sets both to 0.
DEFAULT_SPACE = SearchSpace(
    (
        Param("additive", low=0.02, high=1.0, log=True),
        Param("multiplicative", low=0.0, high=0.3),
    )
)


def space_names(space: SearchSpace) -> Sequence[str]:
    return [p.name for p in space.params]
