"""Which kernel a noisy layer runs: the choice, and the context manager that sets it.

* ``compiled``: the C++ kernels of :mod:`nrnn_plugin.compiled` (CPU, float32/float64) with the noise generated
  inside their loops; other devices and dtypes run what ``auto`` would;
* ``fused``: an LSTM with additive noise on ``h`` only runs PyTorch's fused kernel on an augmented input
  (:mod:`.fused_lstm`; exact, see ``docs/method.md``); the fast path on GPUs;
* ``function``: the hand-written Python kernels (:mod:`.functions`, :mod:`.nrnn_kernel`), forward and
  backward over the whole sequence;
* ``reference``: the plain autograd unroll (:mod:`.reference`), which supports ``torch.func`` transforms.

``"auto"`` (the default): ``compiled`` on CPU where the compiled kernels are loaded (``NRNN_KERNELS``, see
:mod:`nrnn_plugin.compiled.build`), else ``fused`` where it is exact and ``function`` elsewhere.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from nrnn_plugin.compiled import build

__all__ = ["KERNELS", "use_kernel", "current_kernel", "fused_allowed", "compiled_allowed"]

KERNELS = ("auto", "compiled", "fused", "function", "reference")
_kernel_choice: contextvars.ContextVar[str] = contextvars.ContextVar("nrnn_kernel", default="auto")


@contextlib.contextmanager
def use_kernel(kind: str) -> Iterator[None]:
    """Choose the kernel of noisy layers inside the block (see the module docstring for the kinds).

    ``"compiled"`` requires the compiled kernels (``RuntimeError`` naming the reason when they are
    unavailable); ``"fused"`` is ``auto`` without the compiled kernels; ``"function"`` never takes the fused
    LSTM path nor the compiled kernels; ``"reference"`` is the autograd unroll everywhere.
    """
    if kind not in KERNELS:
        raise ValueError(f"use_kernel: kind must be one of {KERNELS}, got {kind!r}")
    if kind == "compiled":
        build.require()
    token = _kernel_choice.set(kind)
    try:
        yield
    finally:
        _kernel_choice.reset(token)


def current_kernel() -> str:
    """The kernel choice in effect (``"auto"`` unless inside :func:`use_kernel`)."""
    return _kernel_choice.get()


def fused_allowed() -> bool:
    """True when the current choice lets the fused LSTM path run where it is exact."""
    return current_kernel() in ("auto", "fused")


def compiled_allowed() -> bool:
    """True when the current choice lets the compiled kernels run (and they are loaded: built on first use)."""
    if current_kernel() not in ("auto", "compiled"):
        return False
    return build.load()
