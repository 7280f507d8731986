"""A trained run on disk: the sidecar beside ``model.ckpt`` and loading the vanilla model with it.

Imports Lightning and pytorch-forecasting at module level: import this module lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytorch_forecasting
import torch

from nrnn_plugin.app.data import TimeAxis
from nrnn_plugin.app.errors import InputError, first_line
from nrnn_plugin.app.run_config import DataSpec

__all__ = ["SIDECAR_SUFFIX", "CHECKPOINT_NAME", "LoadedRun", "load_run", "write_sidecar"]

SIDECAR_SUFFIX = ".nrnn.pt"
CHECKPOINT_NAME = "model.ckpt"
SIDECAR_FORMAT = "nrnn-run"
SIDECAR_VERSION = 1


def write_sidecar(path: Path, content: dict[str, Any]) -> None:
    """Write the run's sidecar (``content`` plus the format and version)."""
    torch.save({"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **content}, path)


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
        raise InputError(f"could not read the sidecar {str(sidecar_path)!r}: {first_line(exc)}") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise InputError(f"{str(sidecar_path)!r} is not an nrnn-plugin run sidecar")
    if sidecar.get("version") != SIDECAR_VERSION:
        raise InputError(
            f"{str(sidecar_path)!r}: sidecar version {sidecar.get('version')} is not supported "
            f"(expected {SIDECAR_VERSION})"
        )
    cls = getattr(pytorch_forecasting, sidecar["model_class"])
    try:
        model = cls.load_from_checkpoint(str(ckpt), map_location="cpu")
    except Exception as exc:
        raise InputError(f"could not load {str(ckpt)!r} as {cls.__name__}: {first_line(exc)}") from None
    spec = DataSpec.from_dict(sidecar["data"])
    axis = TimeAxis(**sidecar["time_axis"])
    return LoadedRun(model=model.eval(), sidecar=sidecar, spec=spec, time_axis=axis)
