"""The schema of ``nrnn train --config run.yaml``, defined once with pydantic (v2).

A run file has five top-level sections; only ``data`` is required (``examples/run.yaml`` is a complete,
commented example; ``docs/run-file.md`` is the reference, generated from this module by ``nrnn schema``)::

    data:     where the table is and what its columns mean, window lengths, the time split
    model:    the pytorch-forecasting model class and its keyword arguments
    trainer:  epochs, batch size, seed, gradient clipping, early stopping, logger
    noise:    a NoiseConfig (absent, empty or ``enabled: false``: plain training)
    output:   where the run folder goes
    tune:     the noise-level study of ``nrnn tune`` (optional; ignored by ``nrnn train``)

Every section rejects unknown keys; every error is one line naming the key (``data.target``), the allowed
values and the value received (:func:`format_validation_error`). The ``noise`` section is validated by
:meth:`nrnn_plugin.NoiseConfig.from_dict` (the one definition of the noise fields). Relative paths in a run
file (``data.path``, ``output.dir``) are relative to the run file's folder.

A section is a :class:`~nrnn_plugin.app.section.Section` subclass and a field of :class:`RunConfig` (the
``tune:`` section of ``nrnn tune`` is :class:`~nrnn_plugin.app.tune_schema.TuneSpec`): the JSON Schema, the
reference page and the errors follow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_serializer,
    model_validator,
)

from nrnn_plugin.app.errors import ConfigError, DataError, InputError
from nrnn_plugin.app.noise_schema import noise_json_schema
from nrnn_plugin.app.schema_types import BatchLimit, Count, Names, TestSize, Text, ValSize, fail
from nrnn_plugin.app.section import Section
from nrnn_plugin.app.tune_schema import TuneSpec
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.yaml_io import load_yaml

__all__ = [
    "InputError",
    "ConfigError",
    "DataError",
    "Section",
    "DataSpec",
    "TuneSpec",
    "ModelSpec",
    "TrainerSpec",
    "OutputSpec",
    "RunConfig",
    "SUPPORTED_MODELS",
    "DATA_SUFFIXES",
    "load_run_config",
    "noise_from_dict",
]

#: pytorch-forecasting models (v1 API, ``Model.from_dataset``) whose recurrent layers nrnn makes noisy.
SUPPORTED_MODELS = ("RecurrentNetwork", "DeepAR", "TemporalFusionTransformer")
#: Models that decode autoregressively: every real they read must be known in advance (or be the target).
AUTOREGRESSIVE = ("RecurrentNetwork", "DeepAR")
DATA_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet", ".pq")
LOGGERS = ("csv", "tensorboard", "mlflow", "none")


class DataSpec(Section):
    """Section ``data``: the table, its columns, window lengths and the time split.

    The split is by time, the same cut for every series: the last ``test`` steps are held out (never used for
    training or model selection), the ``validation`` steps before them select the checkpoint, and training uses
    everything earlier.
    """

    SECTION: ClassVar[str] = "data"

    path: Text | None = Field(
        None,
        description=(
            "CSV (.csv, .csv.gz, .tsv) or parquet (.parquet, .pq) file; relative to the run file's folder; "
            "`--data` overrides it"
        ),
    )
    time: Text = Field(description="the time column: integer steps, or dates (any pandas frequency)")
    target: Text = Field(description="the numeric column to forecast")
    group_ids: Names = Field((), description="columns identifying each series of a long table; [] = one series")
    freq: Text | None = Field(
        None,
        description=(
            "pandas frequency of a date column ('D', 'W-SUN', 'MS', 'ME', 'QS-OCT', 'Q', 'YS', 'B', 'h', ...); "
            "null: inferred from the dates"
        ),
    )
    known_reals: Names = Field((), description="numeric covariates known in advance (calendar, prices, ...)")
    unknown_reals: Names = Field(
        (),
        description=(
            "numeric covariates observed only up to now (TemporalFusionTransformer only; the target always is one)"
        ),
    )
    known_categoricals: Names = Field((), description="categorical covariates known in advance (holidays, ...)")
    static_categoricals: Names = Field(
        (), description="per-series constant categories (may repeat a group id column: a group embedding)"
    )
    static_reals: Names = Field((), description="per-series constant numbers")
    max_encoder_length: Count = Field(52, description="time steps the model reads")
    max_prediction_length: Count = Field(13, description="time steps it forecasts")
    normalizer: Literal["encoder", "group", "none"] = Field(
        "encoder", description="target scaling: per window (encoder; suits trends), per series (group) or none"
    )
    missing: Literal["interpolate", "drop", "error"] = Field(
        "interpolate", description="missing target/real values: interpolate within a series, drop the rows, or refuse"
    )
    allow_missing_timesteps: bool = Field(False, strict=True, description="true lets series have gaps in time")
    validation: ValSize = Field(
        0.15, description="validation steps: an integer number of steps or a fraction of the time span"
    )
    test: TestSize = Field(
        0.15,
        description="held-out test steps (integer or fraction; 0 = no test part); `nrnn robustness` evaluates them",
    )

    @model_validator(mode="after")
    def _check_roles(self) -> DataSpec:
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
                if role == "static_categoricals" and seen.get(column) == "group_ids":
                    continue  # pytorch-forecasting's idiom: the group id is also a static category (an embedding)
                if column in seen:
                    raise fail(
                        f"data.{role}: column {column!r} is already used as data.{seen[column]}; each column can "
                        "have one role only (a group id may also be a static categorical)"
                    )
                seen[column] = role
        if isinstance(self.validation, float) and isinstance(self.test, float) and self.validation + self.test >= 1.0:
            raise fail(
                f"data.validation + data.test: expected fractions that sum to less than 1 (training needs the "
                f"rest), got {self.validation} + {self.test}"
            )
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the run reads, in role order, each once."""
        every = (
            (self.time, self.target)
            + self.group_ids
            + self.known_reals
            + self.unknown_reals
            + self.known_categoricals
            + self.static_categoricals
            + self.static_reals
        )
        return tuple(dict.fromkeys(every))


class ModelSpec(Section):
    """Section ``model``: ``class`` and keyword arguments of ``<class>.from_dataset``.

    The keyword arguments are checked against the class's signature when the model is built
    (:mod:`nrnn_plugin.app.training`); the dataset-derived ones come from the data section. ``loss`` names a
    ``pytorch_forecasting.metrics`` class (``MAE``, ``RMSE``, ``SMAPE``, ``QuantileLoss`` for the
    TemporalFusionTransformer, ``NormalDistributionLoss`` for DeepAR, ...).
    """

    SECTION: ClassVar[str] = "model"
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    name: Literal["RecurrentNetwork", "DeepAR", "TemporalFusionTransformer"] = Field(
        "RecurrentNetwork",
        alias="class",
        description="the pytorch-forecasting model; any other key is a keyword argument of its from_dataset",
    )
    loss: Text | None = Field(None, description="a pytorch_forecasting.metrics class name (null: the model's default)")

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``from_dataset`` (``loss`` included when set)."""
        extra = dict(self.model_extra or {})
        return {**({"loss": self.loss} if self.loss is not None else {}), **extra}

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.name, **self.kwargs}


class TrainerSpec(Section):
    """Section ``trainer``: the training budget, its reproducibility and where metrics are logged.

    The checkpoint kept is the epoch with the best validation loss.
    """

    SECTION: ClassVar[str] = "trainer"

    max_epochs: Count = Field(20, description="training epochs (`--max-epochs` overrides it)")
    batch_size: Count = Field(64, description="windows per batch")
    seed: int = Field(
        0, ge=0, strict=True, description="weights, batch order, dropout (and the noise, unless noise.seed is set)"
    )
    gradient_clip_val: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)] | None = Field(
        1.0, description="gradient norm clipping; null: off"
    )
    limit_train_batches: BatchLimit | None = Field(
        None, description="cap batches per epoch: an integer, or a fraction of them; null: all"
    )
    early_stopping_patience: Count | None = Field(
        None, description="stop after this many epochs without a better val_loss; null: off"
    )
    accelerator: Literal["cpu", "gpu", "cuda", "auto"] = Field("cpu", description="Lightning accelerator")
    devices: Count = Field(1, description="Lightning devices")
    logger: Literal["csv", "tensorboard", "mlflow", "none"] = Field(
        "csv",
        description=(
            "where losses and the noise configuration are logged: Lightning's CSVLogger (logs/ in the run "
            "folder), TensorBoard or MLflow (when installed), or none"
        ),
    )


class OutputSpec(Section):
    """Section ``output``: the run folder (``model.ckpt``, ``model.nrnn.json``, ``run.yaml``, ``logs/``)."""

    SECTION: ClassVar[str] = "output"

    dir: Text = Field(
        "runs/nrnn", description="the run folder; relative to the run file's folder; `--out` overrides it"
    )


def noise_from_dict(data: Any) -> NoiseConfig | None:
    """The ``noise:`` section as a :class:`NoiseConfig` (its own validation); ``None`` when absent or empty."""
    if data is None or data == {}:
        return None
    if isinstance(data, NoiseConfig):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"noise: expected a mapping of NoiseConfig fields, got {data!r}")
    try:
        return NoiseConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"noise: {exc}") from None


def _noise(value: Any) -> NoiseConfig | None:
    try:
        return noise_from_dict(value)
    except ConfigError as exc:
        raise fail(str(exc)) from None


class RunConfig(Section):
    """A whole run file. ``noise`` is ``None`` for plain training."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("data", "model", "trainer", "noise", "output", "tune")

    data: DataSpec = Field(description="the table and its columns (required)")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the model")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="the training budget")
    noise: Annotated[NoiseConfig | None, PlainValidator(_noise), WithJsonSchema(noise_json_schema())] = Field(
        None, description="Noisy RNN training (nrnn_plugin.NoiseConfig); absent, {} or enabled: false: plain"
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="where the run goes")
    tune: TuneSpec | None = Field(None, description="the `nrnn tune` study (ignored by `nrnn train`)")

    @field_serializer("noise")
    def _dump_noise(self, noise: NoiseConfig | None) -> dict[str, Any] | None:
        return None if noise is None else noise.to_dict()

    @model_validator(mode="after")
    def _check_model_roles(self) -> RunConfig:
        if self.model.name in AUTOREGRESSIVE and self.data.unknown_reals:
            raise fail(
                f"data.unknown_reals: {self.model.name} decodes autoregressively, so it can read only reals known "
                f"for the forecast horizon (and the target); move {list(self.data.unknown_reals)} to "
                "data.known_reals if they are known in advance, drop them, or use model.class: "
                "TemporalFusionTransformer"
            )
        return self


def _resolve(path: str | None, base: Path) -> str | None:
    if path is None or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a run file (the project's YAML dialect, :mod:`nrnn_plugin.yaml_io`: safe loading,
    YAML 1.2 numbers and booleans, duplicate keys refused).

    ``data.path`` and ``output.dir`` are resolved relative to the run file's folder.
    """
    file = Path(path)
    if file.is_dir():
        raise InputError(
            f"--config: {str(file)!r} is a folder; expected a run file (YAML), e.g. {str(file / 'run.yaml')!r}"
        )
    if not file.is_file():
        folder = "" if file.parent.is_dir() else " (no such folder)"
        raise InputError(f"config file not found: {str(file)!r}{folder}")
    try:
        data = load_yaml(file.read_text(), str(file))
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not a text file; expected a run file (YAML)") from None
    except ValueError as exc:  # the dialect's message: file, line, column and the problem
        raise ConfigError(str(exc)) from None
    if data is None:
        raise ConfigError(f"{file}: the file is empty; it needs at least a 'data' section")
    config = RunConfig.from_dict(data)
    base = file.resolve().parent
    data_spec = config.data.model_copy(update={"path": _resolve(config.data.path, base)})
    output = config.output.model_copy(update={"dir": _resolve(config.output.dir, base)})
    return config.model_copy(update={"data": data_spec, "output": output})
