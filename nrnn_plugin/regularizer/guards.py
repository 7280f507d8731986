"""What the estimators hold fixed around their probes: runtime switches, the global RNG, precision, dropout.

* :func:`probe_state`: noise forced on at scale 1 with draws (not means) for the estimators, restored after;
* :class:`GlobalRng`: the global RNG streams that ops like dropout use, restored before every probe so every
  pass draws the same dropout masks;
* :func:`full_precision`: autocast off inside the probes (finite differences of half-precision losses cancel);
* :func:`reuses_clean_loss`: whether the caller's loss can serve as the noise-free ``L(0)`` of ``fd``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from nrnn_plugin.config import NoiseConfig
from nrnn_plugin.runtime import NoiseRuntime, noise_control, noise_runtimes, noisy_modules, runtime_of

__all__ = [
    "active_runtimes",
    "probe_state",
    "has_first_order_term",
    "zero_like",
    "model_devices",
    "GlobalRng",
    "full_precision",
    "has_active_dropout",
    "reuses_clean_loss",
]


def active_runtimes(model: nn.Module) -> list[NoiseRuntime]:
    """The runtimes of ``model`` that have noise to probe (a level above zero); ``ValueError`` if none is noisy."""
    found = [runtime for _, runtime in noise_runtimes(model)]
    if not found:
        raise ValueError(
            f"explicit_regularizer: {type(model).__name__} has no noisy module; call "
            "nrnn_plugin.register_noise(model, config) first"
        )
    return [runtime for runtime in found if runtime.config.has_noise and runtime.level != 0.0]


def probe_state(model: nn.Module) -> contextlib.AbstractContextManager[list[NoiseRuntime]]:
    """Noise forced on, at scale 1, drawn (not the mean), in every noisy module; everything restored after."""
    return noise_control(model, inject=True, scale=1.0, mean=False)


def has_first_order_term(model: nn.Module) -> bool:
    """True when an injecting module's scheme has a non-zero mean (``Diffusion.biased``, e.g. ``reference``)."""
    for runtime in active_runtimes(model):
        diffusion = runtime.diffusion()
        if diffusion.biased and not diffusion.mean_coefficients().is_zero:
            return True
    return False


def zero_like(model: nn.Module) -> Tensor:
    """A 0-dim zero on the device and in the floating dtype of ``model``'s first parameter."""
    reference = next(model.parameters(), None)
    if reference is None:
        return torch.zeros(())
    return torch.zeros((), device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)


def model_devices(model: nn.Module) -> list[torch.device]:
    """The devices of ``model``'s parameters and buffers (CPU for a model without any)."""
    devices = {t.device for t in model.parameters()} | {t.device for t in model.buffers()}
    return sorted(devices, key=str) or [torch.device("cpu")]


class GlobalRng:
    """Snapshot of the global RNG streams that ops like dropout use (CPU and the model's CUDA devices)."""

    def __init__(self, devices: Sequence[torch.device]) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = {d: torch.cuda.get_rng_state(d) for d in devices if d.type == "cuda"}

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda.items():
            torch.cuda.set_rng_state(state, device)


@contextlib.contextmanager
def full_precision(devices: Sequence[torch.device]) -> Iterator[None]:
    """Autocast off on the device types of ``devices`` inside the block."""
    with contextlib.ExitStack() as stack:
        for device_type in sorted({d.type for d in devices}):
            with contextlib.suppress(RuntimeError, ValueError):  # device types without autocast support
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def has_active_dropout(model: nn.Module) -> bool:
    """True when a dropout module (or an ``nn.RNNBase``'s inter-layer dropout) would draw a mask now."""
    for module in model.modules():
        if not module.training:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if isinstance(module, nn.RNNBase) and module.dropout > 0 and module.num_layers > 1:
            return True
    return False


def reuses_clean_loss(model: nn.Module, config: NoiseConfig) -> bool:
    """True when :func:`~nrnn_plugin.regularizer.regularized_loss` takes the caller's loss as ``fd``'s ``L(0)``.

    Only in mode ``"regularizer"`` with ``fd``, when some module injects at all (at noise level 0 the
    regularizer is 0 and does not contain ``L(0)``), no module injects noise in its own forward now, no active
    dropout module drew a mask the probes cannot replay, and no autocast made the loss low precision.
    """
    if not (config.uses_regularizer and config.estimator == "fd" and config.mode == "regularizer"):
        return False
    if not active_runtimes(model):
        return False
    for _, module in noisy_modules(model):
        runtime = runtime_of(module)
        if runtime is not None and runtime.injecting(module.training):
            return False
    if has_active_dropout(model):
        return False
    for device_type in {d.type for d in model_devices(model)}:
        with contextlib.suppress(RuntimeError, TypeError):
            if torch.is_autocast_enabled(device_type):
                return False
    return True
