"""``nrnn train``'s engine: the model from the run file, the fit, and the run folder.

The run folder (``output.dir``), written into a staging folder and moved into place only when complete
(:class:`~nrnn_plugin.app.outputs.OutputFolder`):

* ``model.ckpt``: the Lightning checkpoint of the epoch with the best validation loss. It holds no trace of the
  noise in its weights or hyper-parameters: ``RecurrentNetwork.load_from_checkpoint("model.ckpt")`` (the vanilla
  class) loads it and predicts noise-free.
* ``model.nrnn.json``: the sidecar (plain JSON) read by ``nrnn robustness`` and ``nrnn predict`` (:mod:`.runs`).
* ``run.yaml``: the resolved configuration (absolute paths), for people and for ``nrnn train --config``.
* ``logs/``: the logger's files (``metrics.csv`` and ``hparams.yaml`` with the default CSV logger).

Imports Lightning and pytorch-forecasting at module level: import this module lazily.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytorch_forecasting
from pytorch_forecasting import TimeSeriesDataSet

from nrnn_plugin import __version__
from nrnn_plugin.app.callbacks import BestState, ProgressCallback
from nrnn_plugin.app.data import PreparedData, Split
from nrnn_plugin.app.datasets import Datasets, build_datasets, make_loader
from nrnn_plugin.app.errors import ConfigError, first_line
from nrnn_plugin.app.outputs import OutputFolder
from nrnn_plugin.app.progress import NullReporter, Reporter
from nrnn_plugin.app.run_config import ModelSpec, RunConfig, TrainerSpec
from nrnn_plugin.app.runs import CHECKPOINT_NAME, SIDECAR_SUFFIX, sidecar_text
from nrnn_plugin.app.tracking import make_logger, run_hyperparameters
from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.yaml_io import dump_yaml

__all__ = [
    "noise_label",
    "model_class",
    "allowed_model_arguments",
    "build_model",
    "TrainedModel",
    "fit_model",
    "TrainingResult",
    "run_training",
    "format_training_summary",
]

# Keyword arguments ``Model.from_dataset`` derives from the dataset; a run file must not set them.
_DATASET_DERIVED = frozenset(
    {
        "static_categoricals",
        "static_reals",
        "time_varying_categoricals_encoder",
        "time_varying_categoricals_decoder",
        "categorical_groups",
        "time_varying_reals_encoder",
        "time_varying_reals_decoder",
        "embedding_labels",
        "embedding_paddings",
        "x_reals",
        "x_categoricals",
        "target",
        "target_lags",
        "dataset_parameters",
        "output_transformer",
        "max_encoder_length",
        "logging_metrics",
        "output_size",
    }
)


def noise_label(noise: NoiseConfig | Mapping[str, Any] | None) -> str:
    """``" + noise"``, ``" + regularizer"`` or ``""``: how a model name is suffixed in tables and progress."""
    if isinstance(noise, Mapping):
        noise = NoiseConfig.from_dict(noise)
    if noise is None or not noise.has_noise:
        return ""
    return " + noise" if noise.injects_in_training else " + regularizer"


def model_class(name: str) -> Any:
    return getattr(pytorch_forecasting, name)


def allowed_model_arguments(cls: type) -> list[str]:
    """Keyword arguments a run file may give ``cls.from_dataset`` (the class's and its bases' ``__init__``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY) and parameter.name != "self":
                names.add(parameter.name)
        if klass.__module__.startswith("lightning"):
            break
    return sorted(names - _DATASET_DERIVED)


def _loss(name: str) -> Any:
    import pytorch_forecasting.metrics as metrics

    abstract = ("Metric", "MultiLoss", "MultiHorizonMetric", "DistributionLoss", "MultivariateDistributionLoss")
    choices = sorted(
        n
        for n in dir(metrics)
        if not n.startswith("_")
        and not n.endswith("_pkg")
        and isinstance(getattr(metrics, n), type)
        and issubclass(getattr(metrics, n), metrics.Metric)
        and n not in abstract
    )
    if name not in choices:
        raise ConfigError(f"model.loss: expected one of {choices}, got {name!r}")
    return getattr(metrics, name)()


def build_model(spec: ModelSpec, training: TimeSeriesDataSet) -> pl.LightningModule:
    """``Model.from_dataset(training, **kwargs)`` with the run file's keyword arguments checked first."""
    cls = model_class(spec.name)
    allowed = allowed_model_arguments(cls)
    kwargs = dict(spec.kwargs)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        derived = sorted(set(unknown) & _DATASET_DERIVED)
        hint = f" ({derived} come from the data section)" if derived else ""
        raise ConfigError(
            f"section 'model': unknown key(s) {unknown} for {spec.name}{hint}; allowed keys are {allowed}"
        )
    if "loss" in kwargs:
        kwargs["loss"] = _loss(kwargs["loss"])
    try:
        return cls.from_dataset(training, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ConfigError(
            f"model: {spec.name}.from_dataset rejected the arguments {spec.to_dict()}: {first_line(exc)}"
        ) from None


@dataclass
class TrainedModel:
    model: pl.LightningModule
    checkpoint: Path | None
    best_val_loss: float
    epochs: int
    seconds: float


def fit_model(
    model: pl.LightningModule,
    datasets: Datasets,
    trainer_spec: TrainerSpec,
    noise: NoiseConfig | None,
    *,
    out_dir: str | Path | None,
    label: str = "model",
    reporter: Reporter | None = None,
    logger: Any = None,
    callbacks: Sequence[pl.Callback] = (),
) -> TrainedModel:
    """Train ``model``, with :class:`~nrnn_plugin.integrations.lightning.NoisyRNNCallback` when ``noise`` injects.

    Weights, batch order and dropout are seeded with ``trainer_spec.seed`` before the model is built by the
    caller and again here; the noise streams come from ``noise.seed`` (or that seed). The best epoch by
    validation loss is restored (and written to ``out_dir/model.ckpt`` when ``out_dir`` is given). ``logger``
    is a Lightning logger (``None``: no logging); ``callbacks`` are added to the trainer's (``nrnn tune``'s
    pruning callback).
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from nrnn_plugin.integrations.lightning import NoisyRNNCallback

    reporter = reporter or NullReporter()
    pl.seed_everything(trainer_spec.seed, verbose=False)
    trainer_callbacks: list[pl.Callback] = [ProgressCallback(label, reporter, trainer_spec.max_epochs), *callbacks]
    if noise is not None and noise.has_noise:
        trainer_callbacks.append(NoisyRNNCallback(noise))
    work_dir = Path(out_dir) if out_dir is not None else None
    checkpoint = ModelCheckpoint(
        dirpath=str(work_dir) if work_dir is not None else None,
        filename=Path(CHECKPOINT_NAME).stem,
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        trainer_callbacks.append(checkpoint)
    if trainer_spec.early_stopping_patience is not None:
        patience = trainer_spec.early_stopping_patience
        trainer_callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=patience))
    best_state = BestState(model)
    trainer_callbacks.append(best_state)
    train_loader = make_loader(datasets.training, train=True, batch_size=trainer_spec.batch_size)
    val_loader = make_loader(datasets.validation, train=False, batch_size=max(256, trainer_spec.batch_size))
    trainer = pl.Trainer(
        max_epochs=trainer_spec.max_epochs,
        accelerator=trainer_spec.accelerator,
        devices=trainer_spec.devices,
        gradient_clip_val=trainer_spec.gradient_clip_val,
        limit_train_batches=trainer_spec.limit_train_batches,
        callbacks=trainer_callbacks,
        logger=logger if logger is not None else False,
        log_every_n_steps=_log_interval(len(train_loader), trainer_spec.limit_train_batches),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=work_dir is not None,
        num_sanity_val_steps=0,
        default_root_dir=str(work_dir) if work_dir is not None else None,
    )
    started = time.perf_counter()
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)
    seconds = time.perf_counter() - started
    best_state.restore()
    path = Path(checkpoint.best_model_path) if work_dir is not None and checkpoint.best_model_path else None
    return TrainedModel(
        model=model.eval(),
        checkpoint=path,
        best_val_loss=best_state.best,
        epochs=trainer.current_epoch,
        seconds=seconds,
    )


def _log_interval(batches: int, limit: float | int | None) -> int:
    """Log every 50 steps, or once per epoch when an epoch has fewer batches (so short runs log at all)."""
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = max(1, int(batches * limit))
    return max(1, min(50, batches))


@dataclass
class TrainingResult:
    config: RunConfig
    out_dir: Path
    checkpoint: Path
    sidecar: Path
    trained: TrainedModel
    split: Split
    windows: dict[str, int]
    notes: list[str]


def run_training(
    config: RunConfig,
    prepared: PreparedData,
    split: Split,
    *,
    out_dir: str | None = None,
    overwrite: bool = False,
    trainer_overrides: Mapping[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> TrainingResult:
    """``nrnn train``: build the data sets and the model, fit, and write the run folder (all or nothing).

    ``prepared`` and ``split`` come from :func:`nrnn_plugin.app.data.load_training_data`. ``out_dir``
    overrides ``output.dir``; an existing non-empty folder is replaced only with ``overwrite``.
    """
    reporter = reporter or NullReporter()
    trainer_spec = config.trainer.replace(**dict(trainer_overrides or {}))
    config = config.replace(trainer=trainer_spec)
    if out_dir is not None:
        config = config.replace(output=config.output.replace(dir=str(Path(out_dir).absolute())))
    folder = OutputFolder(config.output.dir, overwrite=overwrite)
    data_spec = config.data
    source = Path(str(data_spec.path)).name
    for note in prepared.notes:
        reporter.note(f"{source}: {note}")
    datasets = build_datasets(prepared, split, source=source)
    windows = {
        "train": len(datasets.training),
        "validation": len(datasets.validation),
        "test": len(datasets.test) if datasets.test is not None else 0,
    }
    reporter.progress(
        f"{source}: {len(prepared.frame)} rows, time steps {datasets.split.first}..{datasets.split.last}; windows "
        + ", ".join(f"{k} {v}" for k, v in windows.items())
    )
    pl.seed_everything(trainer_spec.seed, verbose=False)
    model = build_model(config.model, datasets.training)
    label = config.model.name + noise_label(config.noise)
    with folder as staging:
        logger = make_logger(trainer_spec.logger, staging)
        if logger is not None:
            # the run's settings, as plain data; the model's own hyper-parameters (objects such as normalizers)
            # stay in the checkpoint, and the noise never enters them
            model._log_hyperparams = False
            logger.log_hyperparams(run_hyperparameters(config))
        trained = fit_model(
            model, datasets, trainer_spec, config.noise, out_dir=staging, label=label, reporter=reporter, logger=logger
        )
        if trained.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint (no validation loss was logged)")
        if trained.checkpoint.name != CHECKPOINT_NAME:
            trained.checkpoint.replace(staging / CHECKPOINT_NAME)
        sidecar = {
            "nrnn_plugin": __version__,
            "model_class": config.model.name,
            "config": config.to_dict(),
            "data": data_spec.to_dict(),
            "time_axis": prepared.time_axis.to_dict(),
            "group_ids": list(prepared.group_ids),
            "split": datasets.split.to_dict(),
            "noise": None if config.noise is None else config.noise.to_dict(),
            "best_val_loss": trained.best_val_loss,
            "epochs": trained.epochs,
            "seed": trainer_spec.seed,
        }
        (staging / CHECKPOINT_NAME).with_suffix(SIDECAR_SUFFIX).write_text(sidecar_text(sidecar))
        (staging / "run.yaml").write_text(dump_yaml(config.to_dict()))  # read back by the same dialect
    out = folder.target
    checkpoint = out / CHECKPOINT_NAME
    return TrainingResult(
        config=config,
        out_dir=out,
        checkpoint=checkpoint,
        sidecar=checkpoint.with_suffix(SIDECAR_SUFFIX),
        trained=trained,
        split=datasets.split,
        windows=windows,
        notes=prepared.notes,
    )


def format_training_summary(result: TrainingResult) -> str:
    """What ``nrnn train`` prints on stdout: model, budget, windows, artifacts and the next command."""
    noise = result.config.noise
    mode = f"Noisy RNN training: {_noise_text(noise)}" if noise is not None and noise.has_noise else "plain training"
    trained = result.trained
    lines = [
        f"model        {result.config.model.name} ({mode})",
        f"epochs       {trained.epochs} in {trained.seconds:.1f}s; best val_loss {trained.best_val_loss:.4f}",
        "windows      " + ", ".join(f"{k} {v}" for k, v in result.windows.items()),
        f"checkpoint   {result.checkpoint}  (loads with {result.config.model.name}.load_from_checkpoint)",
        f"sidecar      {result.sidecar}",
        f"logs         {result.out_dir / 'logs'}" if result.config.trainer.logger != "none" else "",
        f"next         nrnn predict --run {result.out_dir} --data {result.config.data.path}",
        f"             nrnn robustness --checkpoint {result.checkpoint} --data {result.config.data.path}",
    ]
    return "\n".join(line for line in lines if line)


def _noise_text(noise: NoiseConfig) -> str:
    parts = [f"additive={noise.additive:g}", f"multiplicative={noise.multiplicative:g}"]
    if noise.mode != "noise":
        parts.append(f"mode={noise.mode}")
    return ", ".join(parts)
