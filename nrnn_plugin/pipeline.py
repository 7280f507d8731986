"""Config-driven pytorch-forecasting runs: data file -> TimeSeriesDataSet -> model -> fit -> checkpoint -> report.

This is the engine behind ``nrnn train``, ``nrnn robustness`` and ``nrnn demo``; the CLI only parses
arguments and prints. Every function reports progress through a ``reporter`` (anything with ``progress(str)``
and ``note(str)``; the default says nothing), never by printing.

Artifacts of a training run (``output.dir``):

* ``model.ckpt`` - the Lightning checkpoint of the epoch with the best validation loss. It holds no trace of the
  noise in its weights or hyper-parameters: ``RecurrentNetwork.load_from_checkpoint("model.ckpt")`` (the vanilla
  class) loads it and predicts noise-free.
* ``model.nrnn.pt`` - the sidecar read by ``nrnn robustness``: model class name, dataset parameters (encoders
  and scalers, pickled), the data section, how times map to steps, the split, the noise config, best validation
  loss. Load only sidecars you trust (``torch.load(..., weights_only=False)``).
* ``run.yaml`` - the resolved configuration, for people.

Imports Lightning and pytorch-forecasting at module level: import this module lazily.
"""

from __future__ import annotations

import inspect
import math
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import lightning.pytorch as pl
import pandas as pd
import pytorch_forecasting
import torch
from pytorch_forecasting import TimeSeriesDataSet

from nrnn_plugin.cli_config import ConfigError, DataError, DataSpec, InputError, ModelSpec, RunConfig, TrainerSpec
from nrnn_plugin.cli_data import PreparedData, Split, TimeAxis, prepare_frame, read_table
from nrnn_plugin.config import NoiseConfig

__all__ = [
    "Reporter",
    "NullReporter",
    "Datasets",
    "TrainedModel",
    "TrainingResult",
    "RobustnessReport",
    "build_datasets",
    "build_model",
    "fit_model",
    "run_training",
    "load_run",
    "evaluate_robustness",
    "evaluation_windows",
    "run_robustness_report",
    "format_training_summary",
    "format_robustness_table",
    "SIDECAR_SUFFIX",
]

SIDECAR_SUFFIX = ".nrnn.pt"
CHECKPOINT_NAME = "model.ckpt"
SIDECAR_FORMAT = "nrnn-run"
SIDECAR_VERSION = 1

# Keyword arguments ``Model.from_dataset`` derives from the dataset; a run file must not set them.
_DATASET_DERIVED = frozenset(
    {
        "static_categoricals", "static_reals", "time_varying_categoricals_encoder",
        "time_varying_categoricals_decoder", "categorical_groups", "time_varying_reals_encoder",
        "time_varying_reals_decoder", "embedding_labels", "embedding_paddings", "x_reals", "x_categoricals",
        "target", "target_lags", "dataset_parameters", "output_transformer", "max_encoder_length",
        "logging_metrics", "output_size",
    }
)


class Reporter(Protocol):
    """Where progress goes: ``progress`` for routine lines (a quiet CLI drops them), ``note`` for facts the
    user should see (data fixes, left-out series)."""

    def progress(self, message: str) -> None: ...

    def note(self, message: str) -> None: ...


class NullReporter:
    """A reporter that says nothing (the default of every function here)."""

    def progress(self, message: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def noise_label(noise: NoiseConfig | Mapping[str, Any] | None) -> str:
    """``" + noise"``, ``" + regularizer"`` or ``""``: how a model name is suffixed in tables and progress."""
    if isinstance(noise, Mapping):
        noise = NoiseConfig.from_dict(noise)
    if noise is None or not noise.has_noise:
        return ""
    return " + noise" if noise.injects_in_training else " + regularizer"


# ---------------------------------------------------------------------------------------------- datasets


def _target_normalizer(kind: str) -> Any:
    from pytorch_forecasting.data.encoders import EncoderNormalizer, TorchNormalizer

    if kind == "encoder":
        return EncoderNormalizer()
    if kind == "group":
        return "auto"  # pytorch-forecasting picks a GroupNormalizer over the group ids
    return TorchNormalizer(method="identity")


@dataclass
class Datasets:
    training: TimeSeriesDataSet
    validation: TimeSeriesDataSet
    test: TimeSeriesDataSet | None
    split: Split


def build_datasets(prepared: PreparedData, split: Split, *, source: str = "data") -> Datasets:
    """Training, validation and (if ``data.test`` > 0) test ``TimeSeriesDataSet`` by the time split
    (:func:`nrnn_plugin.cli_data.split_and_check`)."""
    spec = prepared.spec
    frame = prepared.frame
    try:
        training = TimeSeriesDataSet(
            frame[frame[spec.time] < split.val_start],
            time_idx=spec.time,
            target=spec.target,
            group_ids=list(prepared.group_ids),
            max_encoder_length=spec.max_encoder_length,
            max_prediction_length=spec.max_prediction_length,
            static_categoricals=list(spec.static_categoricals),
            static_reals=list(spec.static_reals),
            time_varying_known_categoricals=list(spec.known_categoricals),
            time_varying_known_reals=list(spec.known_reals),
            time_varying_unknown_reals=[spec.target, *spec.unknown_reals],
            target_normalizer=_target_normalizer(spec.normalizer),
            allow_missing_timesteps=spec.allow_missing_timesteps,
        )
        validation = TimeSeriesDataSet.from_dataset(
            training, frame[frame[spec.time] < split.test_start], min_prediction_idx=split.val_start,
            stop_randomization=True,
        )
        test = None
        if split.has_test:
            test = TimeSeriesDataSet.from_dataset(
                training, frame, min_prediction_idx=split.test_start, stop_randomization=True
            )
    except (ValueError, KeyError, AssertionError, TypeError) as exc:
        raise DataError(f"{source}: pytorch-forecasting could not build the data set: {_first_line(exc)}") from None
    return Datasets(training=training, validation=validation, test=test, split=split)


#: Data sets up to this many windows are materialised once (see :func:`make_loader`).
CACHE_WINDOWS = 50_000


class _CachedWindows(torch.utils.data.Dataset):
    """The windows of a ``TimeSeriesDataSet`` built once and kept in memory (other attributes forward to it).

    pytorch-forecasting assembles each window in ``__getitem__`` (about 2 ms on a CPU core), which dominates
    the cost of training a small recurrent model; windows without length randomisation are the same every
    epoch, so they are built once.
    """

    def __init__(self, dataset: TimeSeriesDataSet) -> None:
        self.dataset = dataset
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "items"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


_CACHE: weakref.WeakKeyDictionary[TimeSeriesDataSet, _CachedWindows] = weakref.WeakKeyDictionary()


def make_loader(dataset: TimeSeriesDataSet, *, train: bool, batch_size: int) -> torch.utils.data.DataLoader:
    """``dataset.to_dataloader(train=train, batch_size=batch_size, num_workers=0)``, with the windows built once
    (per data set object, reused by later loaders) when there are at most :data:`CACHE_WINDOWS` of them and
    their lengths are not randomised. Same batches, same order (shuffling draws from the global torch RNG,
    seeded by the trainer seed)."""
    if len(dataset) > CACHE_WINDOWS or getattr(dataset, "randomize_length", None):
        return dataset.to_dataloader(train=train, batch_size=batch_size, num_workers=0)
    if dataset not in _CACHE:
        _CACHE[dataset] = _CachedWindows(dataset)
    return torch.utils.data.DataLoader(
        _CACHE[dataset],
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        collate_fn=TimeSeriesDataSet._collate_fn,
        num_workers=0,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------------------------- model


def model_class(name: str) -> type:
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
            f"model: {spec.name}.from_dataset rejected the arguments {spec.to_dict()}: {_first_line(exc)}"
        ) from None


# ---------------------------------------------------------------------------------------------- training


class ProgressCallback(pl.Callback):
    """One line per epoch through the reporter: losses, validation loss, noise level, time."""

    def __init__(self, label: str, reporter: Reporter, max_epochs: int) -> None:
        self.label = label
        self.reporter = reporter
        self.max_epochs = max_epochs
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        parts = [f"{self.label}: epoch {trainer.current_epoch + 1:>{len(str(self.max_epochs))}}/{self.max_epochs}"]
        shown = (("train_loss_epoch", "train_loss"), ("val_loss", "val_loss"), ("train_nrnn_reg_epoch", "reg"))
        for key, label in shown:
            if key in metrics:
                parts.append(f"{label} {float(metrics[key]):.4f}")
        if "train_nrnn_noise_level" in metrics and float(metrics["train_nrnn_noise_level"]) != 1.0:
            parts.append(f"noise level {float(metrics['train_nrnn_noise_level']):.2f}")
        parts.append(f"({time.perf_counter() - self._start:.1f}s)")
        self.reporter.progress("  ".join(parts))


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
) -> TrainedModel:
    """Train ``model`` (with :class:`~nrnn_plugin.lightning.NoisyRNNCallback` when ``noise`` injects noise).

    Weights, batch order and dropout are seeded with ``trainer_spec.seed`` before the model is built by the
    caller and again here; the noise streams come from ``noise.seed`` (or that seed). The best epoch by
    validation loss is restored (and written to ``out_dir/model.ckpt`` when ``out_dir`` is given).
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from nrnn_plugin.lightning import NoisyRNNCallback

    reporter = reporter or NullReporter()
    pl.seed_everything(trainer_spec.seed, verbose=False)
    callbacks: list[pl.Callback] = [ProgressCallback(label, reporter, trainer_spec.max_epochs)]
    if noise is not None and noise.has_noise:
        callbacks.append(NoisyRNNCallback(noise))
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
        callbacks.append(checkpoint)
    if trainer_spec.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=trainer_spec.early_stopping_patience))
    best_state = _BestState(model)
    callbacks.append(best_state)
    trainer = pl.Trainer(
        max_epochs=trainer_spec.max_epochs,
        accelerator=trainer_spec.accelerator,
        devices=trainer_spec.devices,
        gradient_clip_val=trainer_spec.gradient_clip_val,
        limit_train_batches=trainer_spec.limit_train_batches,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=work_dir is not None,
        num_sanity_val_steps=0,
        default_root_dir=str(work_dir) if work_dir is not None else None,
    )
    train_loader = make_loader(datasets.training, train=True, batch_size=trainer_spec.batch_size)
    val_loader = make_loader(datasets.validation, train=False, batch_size=max(256, trainer_spec.batch_size))
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


class _BestState(pl.Callback):
    """Keeps a copy of the weights of the epoch with the lowest validation loss (in memory; no file needed)."""

    def __init__(self, model: pl.LightningModule) -> None:
        self.model = model
        self.best = math.inf
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_loss")
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


# ---------------------------------------------------------------------------------------------- run files


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
    trainer_overrides: Mapping[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> TrainingResult:
    """``nrnn train``: build the data sets and the model, fit; write ``model.ckpt``, ``model.nrnn.pt``, ``run.yaml``.

    ``prepared`` and ``split`` come from :func:`nrnn_plugin.cli_data.load_training_data`.
    """
    import yaml

    reporter = reporter or NullReporter()
    trainer_spec = replace(config.trainer, **dict(trainer_overrides or {}))
    config = replace(config, trainer=trainer_spec)
    if out_dir is not None:
        config = replace(config, output=replace(config.output, dir=str(out_dir)))
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
    out = Path(config.output.dir)
    trained = fit_model(model, datasets, trainer_spec, config.noise, out_dir=out, label=label, reporter=reporter)
    if trained.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint (no validation loss was logged)")
    checkpoint = out / CHECKPOINT_NAME
    if trained.checkpoint.resolve() != checkpoint.resolve():
        trained.checkpoint.replace(checkpoint)
    sidecar = checkpoint.with_suffix(SIDECAR_SUFFIX)
    torch.save(
        {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "model_class": config.model.name,
            "dataset_parameters": datasets.training.get_parameters(),
            "data": data_spec.to_dict(),
            "time_axis": prepared.time_axis.to_dict(),
            "group_ids": list(prepared.group_ids),
            "split": datasets.split.to_dict(),
            "noise": None if config.noise is None else config.noise.to_dict(),
            "best_val_loss": trained.best_val_loss,
            "epochs": trained.epochs,
        },
        sidecar,
    )
    (out / "run.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return TrainingResult(
        config=config,
        out_dir=out,
        checkpoint=checkpoint,
        sidecar=sidecar,
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
        f"next         nrnn robustness --checkpoint {result.checkpoint} --data {result.config.data.path}",
    ]
    return "\n".join(lines)


def _noise_text(noise: NoiseConfig) -> str:
    parts = [f"additive={noise.additive:g}", f"multiplicative={noise.multiplicative:g}"]
    if noise.mode != "noise":
        parts.append(f"mode={noise.mode}")
    return ", ".join(parts)


@dataclass
class LoadedRun:
    model: pl.LightningModule
    sidecar: dict[str, Any]
    spec: DataSpec
    time_axis: TimeAxis


def load_run(checkpoint: str | Path) -> LoadedRun:
    """The vanilla model (``ModelClass.load_from_checkpoint``) and the sidecar written beside the checkpoint."""
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise InputError(f"checkpoint not found: {str(ckpt)!r}")
    sidecar_path = ckpt.with_suffix(SIDECAR_SUFFIX)
    if not sidecar_path.is_file():
        raise InputError(
            f"sidecar not found: {str(sidecar_path)!r} (written by 'nrnn train' beside the checkpoint; it holds the "
            "dataset parameters and split)"
        )
    try:
        sidecar = torch.load(sidecar_path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a corrupt or foreign file
        raise InputError(f"could not read the sidecar {str(sidecar_path)!r}: {_first_line(exc)}") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise InputError(f"{str(sidecar_path)!r} is not an nrnn-plugin run sidecar")
    if sidecar.get("version") != SIDECAR_VERSION:
        raise InputError(
            f"{str(sidecar_path)!r}: sidecar version {sidecar.get('version')} is not supported "
            f"(expected {SIDECAR_VERSION})"
        )
    cls = model_class(sidecar["model_class"])
    try:
        model = cls.load_from_checkpoint(str(ckpt), map_location="cpu")
    except Exception as exc:
        raise InputError(f"could not load {str(ckpt)!r} as {cls.__name__}: {_first_line(exc)}") from None
    spec = DataSpec.from_dict(sidecar["data"])
    axis = TimeAxis(**sidecar["time_axis"])
    return LoadedRun(model=model.eval(), sidecar=sidecar, spec=spec, time_axis=axis)


# ---------------------------------------------------------------------------------------------- robustness


#: Strength grids used by the reports (normalised encoder inputs; 0 is the clean input).
REPORT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "white_noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "multiplicative_noise": (0.0, 0.1, 0.2, 0.4, 0.8),
    "salt_and_pepper": (0.0, 0.02, 0.05, 0.1),
    "fgsm": (0.0, 0.02, 0.05, 0.1),
    "pgd": (0.0, 0.02, 0.05, 0.1),
}


def robustness_grid(
    perturbations: Sequence[str] | None = None, strengths: Sequence[float] | None = None
) -> dict[str, tuple[float, ...]]:
    """``{perturbation: strengths}``; unknown names are an :class:`InputError` listing the allowed ones."""
    from nrnn_plugin.robustness import PERTURBATIONS

    names = list(perturbations) if perturbations else list(REPORT_STRENGTHS)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise InputError(f"--perturbations: unknown {unknown}; allowed: {sorted(PERTURBATIONS)}")
    grid = {}
    for name in names:
        values = tuple(sorted(set((0.0, *strengths)))) if strengths else REPORT_STRENGTHS.get(name, (0.0,))
        if name == "salt_and_pepper" and any(v > 1 for v in values):
            raise InputError(f"--strengths: salt_and_pepper strengths are fractions <= 1, got {list(values)}")
        grid[name] = values
    return grid


def evaluate_robustness(
    models: Mapping[str, pl.LightningModule],
    dataset: TimeSeriesDataSet,
    grid: Mapping[str, Sequence[float]],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 256,
) -> pd.DataFrame:
    """:func:`nrnn_plugin.robustness.evaluate` on the windows of ``dataset`` (perturbed encoder inputs)."""
    from nrnn_plugin.robustness import evaluate

    loader = make_loader(dataset, train=False, batch_size=batch_size)
    return evaluate(dict(models), loader, task="forecasting", perturbations=dict(grid), seeds=list(seeds))


def format_robustness_table(results: pd.DataFrame, metric: str = "mae", change_label: str = "change") -> str:
    """Mean ± std over seeds of ``metric``: one row per (perturbation, strength), one column per model.

    With two models a last column gives the second model's mean relative to the first (``change_label``).
    """
    from nrnn_plugin.robustness import summarize

    table = summarize(results[results["metric"] == metric])
    models = list(dict.fromkeys(table["model"]))
    perturbations = list(dict.fromkeys(table["perturbation"]))
    header = ["perturbation", "strength", *[f"{m} {metric.upper()}" for m in models]]
    if len(models) == 2:
        header.append(change_label)
    rows = []
    clean_done = False
    for perturbation in perturbations:
        part = table[table["perturbation"] == perturbation]
        for strength in sorted(dict.fromkeys(part["strength"])):
            if strength == 0.0:
                if clean_done:
                    continue
                clean_done = True
            cells = part[part["strength"] == strength].set_index("model")
            means = [float(cells.loc[m, "mean"]) for m in models]
            row = ["clean" if strength == 0.0 else perturbation, "-" if strength == 0.0 else f"{strength:g}"]
            for m in models:
                mean, std, n = float(cells.loc[m, "mean"]), float(cells.loc[m, "std"]), int(cells.loc[m, "n"])
                row.append(f"{mean:.4g} ± {std:.2g}" if n > 1 and std > 0 else f"{mean:.4g}")
            if len(models) == 2:
                row.append(f"{100.0 * (means[1] - means[0]) / means[0]:+.1f}%" if means[0] else "")
            rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header] + rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


@dataclass
class RobustnessReport:
    results: pd.DataFrame
    table: str
    files: list[Path]


def evaluation_windows(run: LoadedRun, data_path: str | Path, *, windows: str = "test") -> TimeSeriesDataSet:
    """The windows of ``data_path`` to evaluate ``run`` on: its held-out test windows (``"test"``) or all."""
    source = Path(data_path).name
    prepared = prepare_frame(read_table(data_path), run.spec, source=source, time_axis=run.time_axis)
    split = run.sidecar["split"]
    frame = prepared.frame
    update: dict[str, Any] = {}
    if windows == "test":
        if frame[run.spec.time].max() < split["test_start"]:
            raise DataError(
                f"{source}: no data at or after the run's test period (time step {split['test_start']}); pass the "
                "full file, or --windows all to evaluate every window"
            )
        update["min_prediction_idx"] = split["test_start"]
    try:
        dataset = TimeSeriesDataSet.from_parameters(
            run.sidecar["dataset_parameters"], frame, stop_randomization=True, **update
        )
    except (ValueError, KeyError, AssertionError, TypeError) as exc:
        raise DataError(f"{source}: could not build evaluation windows: {_first_line(exc)}") from None
    if len(dataset) == 0:
        raise DataError(f"{source}: no evaluation windows")
    return dataset


def _labels(checkpoints: Sequence[str | Path], runs: Sequence[LoadedRun]) -> list[str]:
    """``RecurrentNetwork + noise``; the checkpoint's folder is added when two runs would share a label."""
    base = [run.sidecar["model_class"] + noise_label(run.sidecar.get("noise")) for run in runs]
    if len(set(base)) == len(base):
        return base
    labels = [f"{label} ({Path(ckpt).resolve().parent.name})" for label, ckpt in zip(base, checkpoints)]
    if len(set(labels)) != len(labels):
        labels = [f"{label} ({ckpt})" for label, ckpt in zip(base, checkpoints)]
    return labels


def run_robustness_report(
    *,
    checkpoints: Sequence[str | Path],
    data_path: str,
    out_dir: str | None = None,
    perturbations: Sequence[str] | None = None,
    strengths: Sequence[float] | None = None,
    seeds: int = 3,
    windows: str = "test",
    reporter: Reporter | None = None,
) -> RobustnessReport:
    """``nrnn robustness``: load each vanilla model and its sidecar, window the data, evaluate, write CSV and PNG.

    Several checkpoints (e.g. the same run file trained with and without ``noise:``) are compared in one table;
    every model sees the same perturbation draws when their windows are the same (same data and split).
    """
    from nrnn_plugin.robustness import plot_robustness

    reporter = reporter or NullReporter()
    if not checkpoints:
        raise InputError("--checkpoint: at least one checkpoint is needed")
    grid = robustness_grid(perturbations, strengths)  # check the names before the slow part
    runs = []
    for checkpoint in checkpoints:
        runs.append(load_run(checkpoint))
    labels = _labels(checkpoints, runs)
    source = Path(data_path).name
    frames, counts = [], set()
    for label, run in zip(labels, runs):
        dataset = evaluation_windows(run, data_path, windows=windows)
        counts.add(len(dataset))
        reporter.progress(
            f"evaluating {label} on {len(dataset)} {windows} windows of {source}: "
            + ", ".join(f"{k} {list(v)}" for k, v in grid.items())
            + f", {seeds} seed(s)"
        )
        frames.append(evaluate_robustness({label: run.model}, dataset, grid, seeds=list(range(seeds))))
    if len(counts) > 1:
        reporter.note(f"the runs have different evaluation windows ({sorted(counts)}): compare with care")
    results = pd.concat(frames, ignore_index=True)
    out = Path(out_dir) if out_dir is not None else Path(checkpoints[0]).parent
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "robustness.csv"
    png_path = out / "robustness.png"
    results.to_csv(csv_path, index=False)
    names = " vs ".join(labels)
    plot_robustness(
        results[results["metric"] == "mae"], png_path, metric="mae", ncols=min(len(grid), 5),
        title=f"{names}: MAE under perturbed encoder inputs ({source})",
    )
    window_text = "/".join(str(c) for c in sorted(counts))
    title = (
        f"{names} on {window_text} {windows} windows of {source}: MAE in the target's units, perturbed "
        f"(normalised) encoder inputs, mean ± std over {seeds} perturbation seed(s)"
    )
    change = "2nd vs 1st" if len(labels) == 2 else "change"
    table = title + "\n\n" + format_robustness_table(results, change_label=change)
    return RobustnessReport(results=results, table=table, files=[csv_path, png_path])
