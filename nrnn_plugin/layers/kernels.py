"""Which kernel a noisy sequence layer runs, and the context manager that chooses it.

* ``fused``: LSTM with additive noise on ``h`` only runs PyTorch's fused kernel on an augmented input
  (:mod:`.fused_lstm`; exact, see ``docs/method.md``);
* ``function``: hand-written forward and backward over the whole sequence (:mod:`.functions`), the fast path
  for every other case;
* ``reference``: the plain autograd unroll (:mod:`.reference`), which supports higher-order derivatives and
  ``torch.func`` transforms.

``"auto"`` (the default) takes ``fused`` where it is exact and ``function`` elsewhere.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from nrnn_plugin.layers.functions import function_kernel
from nrnn_plugin.layers.reference import reference_unroll
from nrnn_plugin.layers.signature import Kernel

__all__ = ["KERNELS", "use_kernel", "current_kernel", "sequence_kernel", "fused_allowed"]

KERNELS = ("auto", "fused", "function", "reference")
_kernel_choice: contextvars.ContextVar[str] = contextvars.ContextVar("nrnn_kernel", default="auto")


@contextlib.contextmanager
def use_kernel(kind: str) -> Iterator[None]:
    """Choose the kernel of noisy sequence layers inside the block.

    ``"auto"`` (default): ``fused`` where it is exact, else ``function``. ``"reference"``: the autograd unroll
    everywhere (needed for ``torch.func`` transforms). ``"function"``: never the fused LSTM path.
    ``"fused"``: like auto (the fused path only applies where it is exact).
    """
    if kind not in KERNELS:
        raise ValueError(f"use_kernel: kind must be one of {KERNELS}, got {kind!r}")
    token = _kernel_choice.set(kind)
    try:
        yield
    finally:
        _kernel_choice.reset(token)


def current_kernel() -> str:
    """The kernel choice in effect (``"auto"`` unless inside :func:`use_kernel`)."""
    return _kernel_choice.get()


def sequence_kernel() -> Kernel:
    """The per-direction kernel for the current choice: the autograd reference or the hand-written one."""
    return reference_unroll if current_kernel() == "reference" else function_kernel


def fused_allowed() -> bool:
    """True when the current choice lets the fused LSTM path run where it is exact."""
    return current_kernel() in ("auto", "fused")
