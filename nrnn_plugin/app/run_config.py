"""The schema of ``nrnn train --config run.yaml``: validated, immutable run configuration.

A run file has five top-level sections; only ``data`` is required (``examples/run.yaml`` is a complete,
commented example)::

    data:     where the table is and what its columns mean, window lengths, the time split
    model:    the pytorch-forecasting model class and its keyword arguments
    trainer:  epochs, batch size, seed, gradient clipping, early stopping
    noise:    a NoiseConfig (absent, empty or ``enabled: false``: plain training)
    output:   where the checkpoint and its sidecar go

Every section rejects unknown keys, and every error names the key (``data.target``), the allowed values and
the value received. This module imports nothing heavy: ``nrnn --help`` and ``nrnn plugins`` stay fast, and the
whole file is validated before pandas, Lightning or pytorch-forecasting is touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nrnn_plugin.app.errors import ConfigError, DataError, InputError
from nrnn_plugin.config import NoiseConfig, yaml_loader
from nrnn_plugin.validation import (
    check_bool,
    check_choice,
    check_int,
    check_names,
    check_real,
    expected,
    reject_unknown,
)

__all__ = [
    "InputError",
    "ConfigError",
    "DataError",
    "DataSpec",
    "ModelSpec",
    "TrainerSpec",
    "OutputSpec",
    "RunConfig",
    "SUPPORTED_MODELS",
    "load_run_config",
]

#: pytorch-forecasting models (v1 API, ``Model.from_dataset``) whose recurrent layers nrnn makes noisy.
SUPPORTED_MODELS = ("RecurrentNetwork", "DeepAR", "TemporalFusionTransformer")
#: Target normalizers: per-window (``encoder``, suits trending series), per-series (``group``), none.
NORMALIZERS = ("encoder", "group", "none")
#: What to do with missing target values: interpolate inside each series, drop the rows, or refuse.
MISSING = ("interpolate", "drop", "error")
DATA_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet", ".pq")


# ---------------------------------------------------------------------------------------------- checks


def _reject_unknown(section: str, data: Mapping[str, Any], known: tuple[str, ...] | list[str]) -> None:
    reject_unknown(f"section {section!r}" if section else "the run file", data, known, error=ConfigError)


def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise expected(key, "a mapping (a YAML section of 'name: value' lines)", value, ConfigError)
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise expected(key, "a non-empty string", value, ConfigError)
    return value


def _optional_string(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise expected(key, "a non-empty string or null", value, ConfigError)
    return value


def _strings(key: str, value: Any) -> tuple[str, ...]:
    return check_names(key, value, what="column names", distinct=True, value_error=ConfigError, type_error=ConfigError)


def _integer(key: str, value: Any, *, minimum: int) -> int:
    return check_int(key, value, minimum=minimum, value_error=ConfigError, type_error=ConfigError)


def _optional_integer(key: str, value: Any, *, minimum: int) -> int | None:
    return None if value is None else _integer(key, value, minimum=minimum)


def _number(key: str, value: Any, *, minimum: float, strict: bool) -> float:
    return check_real(key, value, minimum=minimum, strict=strict, value_error=ConfigError, type_error=ConfigError)


def _optional_number(key: str, value: Any, *, minimum: float, strict: bool) -> float | None:
    return None if value is None else _number(key, value, minimum=minimum, strict=strict)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    return check_choice(key, value, choices, value_error=ConfigError, type_error=ConfigError)


def _boolean(key: str, value: Any) -> bool:
    return check_bool(key, value, type_error=ConfigError, spelling="true or false")


def _split_size(key: str, value: Any, *, allow_zero: bool) -> float | int:
    """A split size: an integer number of time steps (>= 1), or a fraction of the time span in (0, 1)."""
    if isinstance(value, bool):
        raise expected(key, "a number of time steps (integer >= 1) or a fraction in (0, 1)", value, ConfigError)
    if allow_zero and value == 0:
        return 0
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    allowed = "a number of time steps (integer >= 1) or a fraction in (0, 1)" + (" or 0" if allow_zero else "")
    raise expected(key, allowed, value, ConfigError)


# ---------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataSpec:
    """Section ``data``: the table, its columns, window lengths and the time split.

    ``time`` holds integer steps or dates; dates are turned into steps with ``freq`` (a pandas frequency such as
    ``"D"``, ``"W-SAT"``, ``"MS"``), inferred from the data when ``null``. The split is by time, the same cut
    for every series: the last ``test`` steps are held out (never used for training or model selection), the
    ``validation`` steps before them select the checkpoint, and training uses everything earlier. Each is an
    integer number of steps or a fraction of the time span.
    """

    path: str | None = None
    time: str = ""
    target: str = ""
    group_ids: tuple[str, ...] = ()
    freq: str | None = None
    known_reals: tuple[str, ...] = ()
    unknown_reals: tuple[str, ...] = ()
    known_categoricals: tuple[str, ...] = ()
    static_categoricals: tuple[str, ...] = ()
    static_reals: tuple[str, ...] = ()
    max_encoder_length: int = 52
    max_prediction_length: int = 13
    normalizer: str = "encoder"
    missing: str = "interpolate"
    allow_missing_timesteps: bool = False
    validation: float | int = 0.15
    test: float | int = 0.15

    @classmethod
    def from_dict(cls, data: Any) -> DataSpec:
        data = _mapping("data", data)
        _reject_unknown("data", data, [f.name for f in fields(cls)])
        for required in ("time", "target"):
            if required not in data:
                raise ConfigError(f"data.{required}: required (the name of the {required} column), but missing")
        spec = cls(
            path=_optional_string("data.path", data.get("path")),
            time=_string("data.time", data["time"]),
            target=_string("data.target", data["target"]),
            group_ids=_strings("data.group_ids", data.get("group_ids")),
            freq=_optional_string("data.freq", data.get("freq")),
            known_reals=_strings("data.known_reals", data.get("known_reals")),
            unknown_reals=_strings("data.unknown_reals", data.get("unknown_reals")),
            known_categoricals=_strings("data.known_categoricals", data.get("known_categoricals")),
            static_categoricals=_strings("data.static_categoricals", data.get("static_categoricals")),
            static_reals=_strings("data.static_reals", data.get("static_reals")),
            max_encoder_length=_integer("data.max_encoder_length", data.get("max_encoder_length", 52), minimum=1),
            max_prediction_length=_integer(
                "data.max_prediction_length", data.get("max_prediction_length", 13), minimum=1
            ),
            normalizer=_choice("data.normalizer", data.get("normalizer", "encoder"), NORMALIZERS),
            missing=_choice("data.missing", data.get("missing", "interpolate"), MISSING),
            allow_missing_timesteps=_boolean(
                "data.allow_missing_timesteps", data.get("allow_missing_timesteps", False)
            ),
            validation=_split_size("data.validation", data.get("validation", 0.15), allow_zero=False),
            test=_split_size("data.test", data.get("test", 0.15), allow_zero=True),
        )
        spec._check_roles()
        return spec

    def _check_roles(self) -> None:
        roles = {
            "time": (self.time,),
            "target": (self.target,),
            "group_ids": self.group_ids,
            "known_reals": self.known_reals,
            "unknown_reals": self.unknown_reals,
            "known_categoricals": self.known_categoricals,
            "static_categoricals": self.static_categoricals,
            "static_reals": self.static_reals,
        }
        seen: dict[str, str] = {}
        for role, columns in roles.items():
            for column in columns:
                if column in seen:
                    raise ConfigError(
                        f"data.{role}: column {column!r} is already used as data.{seen[column]}; "
                        "each column can have one role only"
                    )
                seen[column] = role
        if isinstance(self.validation, float) and isinstance(self.test, float) and self.validation + self.test >= 1.0:
            raise ConfigError(
                f"data.validation + data.test: expected fractions that sum to less than 1 (training needs the "
                f"rest), got {self.validation} + {self.test}"
            )

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the run reads, in role order."""
        return (
            (self.time, self.target)
            + self.group_ids
            + self.known_reals
            + self.unknown_reals
            + self.known_categoricals
            + self.static_categoricals
            + self.static_reals
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v, tuple) else v for f in fields(self) for v in [getattr(self, f.name)]}


@dataclass(frozen=True)
class ModelSpec:
    """Section ``model``: ``class`` (one of :data:`SUPPORTED_MODELS`) and keyword arguments of that class.

    The keyword arguments go to ``Model.from_dataset``; they are checked against the class's signature when
    the model is built (:mod:`nrnn_plugin.app.training`). ``loss`` is the name of a ``pytorch_forecasting.metrics``
    class (``MAE``, ``RMSE``, ``SMAPE``, ``QuantileLoss``, ``NormalDistributionLoss`` for DeepAR, ...).
    """

    name: str = "RecurrentNetwork"
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        data = dict(_mapping("model", data))
        name = data.pop("class", "RecurrentNetwork")
        if name not in SUPPORTED_MODELS:
            raise ConfigError(
                f"model.class: expected one of {', '.join(repr(m) for m in SUPPORTED_MODELS)} (the "
                f"pytorch-forecasting models with a recurrent layer that nrnn can make noisy), got {name!r}"
            )
        for key in data:
            if not isinstance(key, str):
                raise expected("model", "keyword argument names (strings)", key, ConfigError)
        if "loss" in data:
            _string("model.loss", data["loss"])
        return cls(name=name, kwargs=data)

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.name, **dict(self.kwargs)}


@dataclass(frozen=True)
class TrainerSpec:
    """Section ``trainer``: the training budget and its reproducibility.

    ``seed`` seeds weights, batch order and (when ``noise.seed`` is not set) the noise streams.
    ``limit_train_batches`` caps batches per epoch (an integer) or a fraction of them.
    ``early_stopping_patience`` stops after that many epochs without a better validation loss (null: off).
    The checkpoint kept is the epoch with the best validation loss.
    """

    max_epochs: int = 20
    batch_size: int = 64
    seed: int = 0
    gradient_clip_val: float | None = 1.0
    limit_train_batches: float | int | None = None
    early_stopping_patience: int | None = None
    accelerator: str = "cpu"
    devices: int = 1

    @classmethod
    def from_dict(cls, data: Any) -> TrainerSpec:
        data = _mapping("trainer", data)
        _reject_unknown("trainer", data, [f.name for f in fields(cls)])
        limit = data.get("limit_train_batches")
        if limit is not None:
            limit = _split_size("trainer.limit_train_batches", limit, allow_zero=False)
        return cls(
            max_epochs=_integer("trainer.max_epochs", data.get("max_epochs", 20), minimum=1),
            batch_size=_integer("trainer.batch_size", data.get("batch_size", 64), minimum=1),
            seed=_integer("trainer.seed", data.get("seed", 0), minimum=0),
            gradient_clip_val=_optional_number(
                "trainer.gradient_clip_val", data.get("gradient_clip_val", 1.0), minimum=0.0, strict=True
            ),
            limit_train_batches=limit,
            early_stopping_patience=_optional_integer(
                "trainer.early_stopping_patience", data.get("early_stopping_patience"), minimum=1
            ),
            accelerator=_choice("trainer.accelerator", data.get("accelerator", "cpu"), ("cpu", "gpu", "cuda", "auto")),
            devices=_integer("trainer.devices", data.get("devices", 1), minimum=1),
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class OutputSpec:
    """Section ``output``: ``dir`` receives ``model.ckpt``, its sidecar ``model.nrnn.pt`` and ``run.yaml``."""

    dir: str = "runs/nrnn"

    @classmethod
    def from_dict(cls, data: Any) -> OutputSpec:
        data = _mapping("output", data)
        _reject_unknown("output", data, [f.name for f in fields(cls)])
        return cls(dir=_string("output.dir", data.get("dir", "runs/nrnn")))

    def to_dict(self) -> dict[str, Any]:
        return {"dir": self.dir}


@dataclass(frozen=True)
class RunConfig:
    """A whole run file. ``noise`` is ``None`` for plain training."""

    data: DataSpec
    model: ModelSpec = field(default_factory=ModelSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    noise: NoiseConfig | None = None
    output: OutputSpec = field(default_factory=OutputSpec)

    SECTIONS = ("data", "model", "trainer", "noise", "output")

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        if not isinstance(data, Mapping):
            raise expected("run file", "a mapping with sections " + ", ".join(cls.SECTIONS), data, ConfigError)
        _reject_unknown("", data, cls.SECTIONS)
        if "data" not in data:
            raise ConfigError("data: required section (path, time, target, ...), but missing")
        return cls(
            data=DataSpec.from_dict(data["data"]),
            model=ModelSpec.from_dict(data.get("model")),
            trainer=TrainerSpec.from_dict(data.get("trainer")),
            noise=noise_from_dict(data.get("noise")),
            output=OutputSpec.from_dict(data.get("output")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data.to_dict(),
            "model": self.model.to_dict(),
            "trainer": self.trainer.to_dict(),
            "noise": None if self.noise is None else self.noise.to_dict(),
            "output": self.output.to_dict(),
        }


def noise_from_dict(data: Any) -> NoiseConfig | None:
    """The ``noise:`` section as a :class:`NoiseConfig`; ``None`` when it is absent or empty.

    NoiseConfig's own messages (they name the field, the allowed values and the value received) are kept and
    prefixed with ``noise:``.
    """
    if data is None or data == {}:
        return None
    try:
        return NoiseConfig.from_dict(_mapping("noise", data))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"noise: {exc}") from None


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a run file (YAML, safe loading; ``1e-3`` is a number)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        folder = "" if file.parent.is_dir() else " (no such folder)"
        raise InputError(f"config file not found: {str(file)!r}{folder}")
    try:
        data = yaml.load(file.read_text(), Loader=yaml_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{file}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{file}: the file is empty; it needs at least a 'data' section")
    return RunConfig.from_dict(data)
