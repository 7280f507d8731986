"""A trained run on disk, and loading it back without running anything from the files.

A run folder (``nrnn train``) holds:

* ``model.ckpt``: the Lightning checkpoint (loads into the vanilla class with ``load_from_checkpoint``); read
  here with ``weights_only=True`` and an explicit allow-list (:mod:`nrnn_plugin.app.safe_load`). Its
  hyper-parameters carry pytorch-forecasting's ``dataset_parameters`` (normalizers, encoders, scalers).
* ``model.nrnn.json``: the sidecar, plain JSON: format and version, the model class, the resolved run
  configuration, the time axis (calendar and origin, to give forecasts their dates back), the group id
  columns, the time split, the best validation loss. No pickle, no tensors.
* ``run.yaml`` (the configuration, for people and for ``nrnn train --config``) and ``logs/`` (metrics).

Imports Lightning and pytorch-forecasting at module level: import this module lazily.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytorch_forecasting

from nrnn_plugin.app.errors import InputError
from nrnn_plugin.app.run_config import SUPPORTED_MODELS, DataSpec, RunConfig
from nrnn_plugin.app.safe_load import load_checkpoint_model
from nrnn_plugin.app.timeaxis import TimeAxis

__all__ = ["SIDECAR_SUFFIX", "CHECKPOINT_NAME", "LoadedRun", "load_run", "sidecar_text", "find_checkpoint"]

SIDECAR_SUFFIX = ".nrnn.json"
LEGACY_SIDECAR_SUFFIX = ".nrnn.pt"
CHECKPOINT_NAME = "model.ckpt"
SIDECAR_FORMAT = "nrnn-run"
SIDECAR_VERSION = 2


def sidecar_text(content: dict[str, Any]) -> str:
    """The sidecar's JSON text: ``content`` plus the format and version."""
    return json.dumps({"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **content}, indent=2) + "\n"


@dataclass
class LoadedRun:
    """A run read back: the vanilla model, its sidecar, the data section, the time axis and the split."""

    model: pl.LightningModule
    sidecar: dict[str, Any]
    spec: DataSpec
    time_axis: TimeAxis
    checkpoint: Path

    @property
    def dataset_parameters(self) -> dict[str, Any]:
        """pytorch-forecasting's dataset parameters, from the checkpoint's hyper-parameters."""
        model: Any = self.model
        return dict(model.dataset_parameters)

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.sidecar["config"])


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself (a ``model.ckpt``) or the checkpoint inside a run folder."""
    given = Path(path)
    return given / CHECKPOINT_NAME if given.is_dir() else given


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        sidecar = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError):
        raise InputError(
            f"{str(path)!r} is not an nrnn-plugin run sidecar (expected JSON); it was not executed"
        ) from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise InputError(f"{str(path)!r} is not an nrnn-plugin run sidecar (no format {SIDECAR_FORMAT!r})")
    if sidecar.get("version") != SIDECAR_VERSION:
        raise InputError(
            f"{str(path)!r}: sidecar version {sidecar.get('version')!r} is not supported (expected {SIDECAR_VERSION})"
        )
    if sidecar.get("model_class") not in SUPPORTED_MODELS:
        raise InputError(
            f"{str(path)!r}: model_class must be one of {list(SUPPORTED_MODELS)}, got {sidecar.get('model_class')!r}"
        )
    split = sidecar.get("split")
    keys = ("first", "last", "val_start", "test_start")
    if not isinstance(split, dict) or any(not isinstance(split.get(k), int) for k in keys):
        raise InputError(f"{str(path)!r}: split must hold the integers {list(keys)}, got {split!r}")
    return sidecar


def load_run(checkpoint: str | Path) -> LoadedRun:
    """The vanilla model and the sidecar of a run (``checkpoint``: a ``model.ckpt`` or its run folder).

    Nothing in the files is executed: the sidecar is JSON and the checkpoint is read with ``weights_only=True``.
    Every problem is an :class:`InputError` (one line, exit status 2).
    """
    ckpt = find_checkpoint(checkpoint)
    if not ckpt.is_file():
        raise InputError(f"checkpoint not found: {str(ckpt)!r}")
    sidecar_path = ckpt.with_suffix(SIDECAR_SUFFIX)
    if not sidecar_path.is_file():
        legacy = ckpt.with_suffix(LEGACY_SIDECAR_SUFFIX)
        hint = (
            f"; {legacy.name} is the pickled sidecar of an older nrnn-plugin, which is never read: retrain the run"
            if legacy.is_file()
            else " (written by 'nrnn train' beside the checkpoint; it holds the configuration, time axis and split)"
        )
        raise InputError(f"sidecar not found: {str(sidecar_path)!r}{hint}")
    sidecar = _read_sidecar(sidecar_path)
    try:
        spec = DataSpec.from_dict(sidecar.get("data"))
        axis = TimeAxis.from_dict(sidecar.get("time_axis"))
        RunConfig.from_dict(sidecar.get("config"))
    except (InputError, ValueError) as exc:
        raise InputError(f"{str(sidecar_path)!r}: {exc}") from None
    cls = getattr(pytorch_forecasting, sidecar["model_class"])
    model = load_checkpoint_model(cls, ckpt)
    return LoadedRun(model=model.eval(), sidecar=sidecar, spec=spec, time_axis=axis, checkpoint=ckpt)
