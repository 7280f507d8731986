"""Reading checkpoints without running code: ``weights_only=True`` plus an explicit allow-list.

A pytorch-forecasting checkpoint is a Lightning checkpoint (``torch.save`` of a dict: weights, optimizer and
loop states, callback states) whose ``hyper_parameters`` and ``dataset_parameters`` hold *objects*: the target
normalizer and label encoders (``pytorch_forecasting.data.encoders``), the loss and logging metrics
(``pytorch_forecasting.metrics``, torchmetrics ``Metric`` modules in a ``torch.nn.ModuleList``), scikit-learn
scalers of real covariates, and numpy arrays inside them. ``torch.load(weights_only=True)`` rebuilds only
tensors, plain containers and the classes allowed for the duration of one load
(:func:`torch.serialization.safe_globals`); any other global, such as ``os.system`` in a crafted file, stops the
load with an ``UnpicklingError`` before anything is called. The allow-list is :data:`ALLOWED`: classes are
named one by one, never by module prefix.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from nrnn_plugin.app.errors import InputError, first_line

__all__ = ["ALLOWED", "allowed_globals", "safe_globals", "load_checkpoint_model"]

_FORECASTING_ENCODERS = (
    "EncoderNormalizer",
    "GroupNormalizer",
    "MultiNormalizer",
    "NaNLabelEncoder",
    "TorchNormalizer",
)
_FORECASTING_METRICS = {
    "point": ("MAE", "MAPE", "MASE", "RMSE", "SMAPE", "CrossEntropy", "PoissonLoss", "TweedieLoss"),
    "quantile": ("QuantileLoss",),
    "distributions": (
        "NormalDistributionLoss",
        "NegativeBinomialDistributionLoss",
        "LogNormalDistributionLoss",
        "BetaDistributionLoss",
        "MultivariateNormalDistributionLoss",
    ),
}
_NUMPY_DTYPES = (
    "BoolDType",
    "Float16DType",
    "Float32DType",
    "Float64DType",
    "Int8DType",
    "Int16DType",
    "Int32DType",
    "Int64DType",
    "UInt8DType",
    "UInt16DType",
    "UInt32DType",
    "UInt64DType",
    "StrDType",
    "ObjectDType",
    "DateTime64DType",
    "TimeDelta64DType",
    "BytesDType",
)

#: ``(module, name)`` of every global a checkpoint of ``nrnn train`` may name besides what torch allows.
ALLOWED: tuple[tuple[str, str], ...] = (
    *(("pytorch_forecasting.data.encoders", name) for name in _FORECASTING_ENCODERS),
    *(
        (f"pytorch_forecasting.metrics.{module}", name)
        for module, names in _FORECASTING_METRICS.items()
        for name in names
    ),
    ("pytorch_forecasting.metrics", "MultiLoss"),
    ("torch.nn.modules.container", "ModuleList"),
    ("torch.nn.modules.container", "ModuleDict"),
    ("torchmetrics.metric", "jit_distributed_available"),  # torchmetrics keeps these functions as attributes
    ("torchmetrics.utilities.data", "dim_zero_sum"),
    ("torchmetrics.utilities.data", "dim_zero_cat"),
    ("torchmetrics.utilities.data", "dim_zero_mean"),
    ("sklearn.preprocessing._data", "StandardScaler"),
    ("sklearn.preprocessing._data", "RobustScaler"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *(("numpy.dtypes", name) for name in _NUMPY_DTYPES),
)


def allowed_globals() -> list[Any]:
    """The objects of :data:`ALLOWED` that exist in the installed versions (imported, never executed)."""
    found = []
    for module, name in ALLOWED:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # not in this version: a checkpoint naming it fails to load, as it should
    return found


@contextmanager
def safe_globals() -> Iterator[None]:
    """Inside the block, ``torch.load(weights_only=True)`` also accepts :data:`ALLOWED` (and nothing else)."""
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if scoped is None:  # torch 2.4: the same allow-list, registered for the process
        torch.serialization.add_safe_globals(allowed_globals())
        yield
        return
    with scoped(allowed_globals()):
        yield


_ZIP_MAGIC = b"PK\x03\x04"


def _unpickler_reason(text: str) -> str:
    """The line of torch's long weights-only message that says what was refused."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "")


def load_checkpoint_model(cls: Any, path: str | Path) -> Any:
    """``cls.load_from_checkpoint(path)`` with ``weights_only=True`` and the allow-list, on the CPU.

    Raises:
        InputError: the file is not a checkpoint this tool wrote (a foreign pickle, a corrupt file, a
            global outside the allow-list); one line, nothing in it executed.
    """
    file = Path(path)
    with open(file, "rb") as handle:
        magic = handle.read(4)
    if magic != _ZIP_MAGIC:  # torch.save's archive; a bare pickle or a legacy file is never unpickled
        raise InputError(
            f"{str(file)!r} is not a checkpoint written by torch.save (not a zip archive); it was not read"
        )
    try:
        with safe_globals():
            return cls.load_from_checkpoint(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_reason(str(exc)) or first_line(exc)
        raise InputError(
            f"{str(file)!r} is not a checkpoint that can be loaded safely ({detail}); it was not executed"
        ) from None
    except (RuntimeError, EOFError, KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
        raise InputError(f"could not load {str(file)!r} as a {cls.__name__} checkpoint: {first_line(exc)}") from None
