"""Which kernel a noisy sequence layer runs (the choice itself: :mod:`.choice`, re-exported here).

* ``auto`` (default): the compiled kernels (:mod:`nrnn_plugin.compiled`) on the CPU where they are loaded; else
  the fused LSTM path where it is exact (GPUs) and the hand-written Python kernels elsewhere;
* ``compiled``, ``fused``, ``function``, ``reference``: see :func:`use_kernel`.

Every kernel takes ``(mode, LayerPass)`` (:mod:`.signature`) and computes the same recursion; each hands over
to a more general one where it does not apply (compiled -> function -> reference).
"""

from __future__ import annotations

from torch import Tensor

from nrnn_plugin.compiled import kernels as compiled  # a module: the compiled package imports layers modules
from nrnn_plugin.layers.choice import KERNELS, compiled_allowed, current_kernel, fused_allowed, use_kernel
from nrnn_plugin.layers.functions import function_kernel
from nrnn_plugin.layers.reference import reference_unroll
from nrnn_plugin.layers.signature import Kernel

__all__ = ["KERNELS", "use_kernel", "current_kernel", "sequence_kernel", "fused_allowed", "compiled_applies"]


def compiled_applies(x: Tensor) -> bool:
    """True when the current choice runs the compiled kernels for inputs like ``x`` (CPU, float32/float64)."""
    return x.device.type == "cpu" and x.dtype in compiled.DTYPES and compiled_allowed()


def sequence_kernel(x: Tensor) -> Kernel:
    """The per-direction kernel for the current choice and inputs like ``x``."""
    choice = current_kernel()
    if choice == "reference":
        return reference_unroll
    if compiled_applies(x):
        return compiled.compiled_kernel
    return function_kernel
