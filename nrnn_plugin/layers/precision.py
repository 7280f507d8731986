"""Autocast awareness of the noisy layers: which dtype to compute in, and switching autocast off inside.

The noisy training path computes in autocast's dtype when autocast is on (as PyTorch's own recurrent layers
do) and switches autocast off around its kernels, so that their in-place and ``out=`` operations see one dtype.
Device types without autocast support (``meta``, custom backends) compute in the input's dtype.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast_dtype", "autocast_disabled"]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast compute dtype active for ``device_type``, or ``None`` outside autocast (or without support)."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except RuntimeError:  # a device type without autocast (e.g. "meta")
        return None


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast(device_type, enabled=False)``, or a no-op for device types without autocast."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()
