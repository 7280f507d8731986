"""Where ``nrnn train`` logs: Lightning's CSVLogger by default, TensorBoard or MLflow when installed and asked for.

The run's own settings (noise configuration, data, trainer budget) go to the logger with ``log_hyperparams``;
they never enter the model's hyper-parameters, so the checkpoint still loads into the vanilla model class.

Imports Lightning at module level: import this module lazily.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger

from nrnn_plugin.app.errors import ConfigError
from nrnn_plugin.app.run_config import RunConfig

__all__ = ["LOG_FOLDER", "check_logger", "make_logger", "run_hyperparameters"]

LOG_FOLDER = "logs"
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def check_logger(kind: str) -> None:
    """Refuse, before any work, a logger whose package is not installed (one line naming the install)."""
    if kind in _NEEDS:
        module, package = _NEEDS[kind]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"trainer.logger: {kind!r} needs the {package} package, which is not installed "
                f"(pip install {package}); or use 'csv'"
            )


def make_logger(kind: str, run_folder: Path) -> Logger | None:
    """The logger of ``trainer.logger`` writing under ``run_folder/logs`` (MLflow: ``MLFLOW_TRACKING_URI`` or an
    SQLite database ``mlflow.db`` there); ``None`` for ``"none"``."""
    check_logger(kind)
    folder = run_folder / LOG_FOLDER
    if kind == "csv":
        return CSVLogger(save_dir=str(run_folder), name=LOG_FOLDER, version="")
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_folder), name=LOG_FOLDER, version="", default_hp_metric=False)
    if kind == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        # MLflow 3 refuses new file stores: the default is an SQLite database in the run folder
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(folder / 'mlflow.db').absolute()}"
        artifacts = None if "MLFLOW_TRACKING_URI" in os.environ else (folder / "mlartifacts").absolute().as_uri()
        return MLFlowLogger(experiment_name="nrnn", tracking_uri=uri, artifact_location=artifacts)
    return None


def run_hyperparameters(config: RunConfig) -> dict[str, Any]:
    """What the logger records about the run: the noise configuration (``{"enabled": False}`` for plain
    training), the model class, the data file and columns, and the trainer budget."""
    noise = config.noise.to_dict() if config.noise is not None else {"enabled": False}
    data = config.data
    return {
        "noise": noise,
        "model": config.model.to_dict(),
        "run": {
            "data_path": data.path,
            "target": data.target,
            "max_encoder_length": data.max_encoder_length,
            "max_prediction_length": data.max_prediction_length,
            **{f"trainer_{k}": v for k, v in config.trainer.to_dict().items()},
        },
    }
