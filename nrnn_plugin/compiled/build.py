"""Build, cache and load the compiled CPU kernels (``nrnn_plugin/compiled/csrc``), or say why they are off.

The kernels are a C++ extension built with ``torch.utils.cpp_extension`` (g++ ``-O3``, OpenMP) the first time a
process needs them, and cached: the cache key is a hash of the sources, the compiler flags, the compiler's
version, the torch and Python versions and the CPU's instruction-set flags, so a cache copied to another machine
or left from another torch is never loaded by mistake. ``scripts/setup.sh`` builds them once
(``python -m nrnn_plugin.compiled``), so the first training step is not slowed.

Which kernels run (``NRNN_KERNELS``):

* ``auto`` (default): the compiled kernels where they build and load, else the Python kernels, with ONE line on
  stderr that says why and how to enable the compiled ones;
* ``python``: the Python kernels, silently (also what a build failure falls back to);
* ``compiled``: the compiled kernels or an error (CI, benchmarks).

Instruction set: the x86-64 micro-architecture level of the machine (``-march=x86-64-v4`` with AVX-512,
``-march=x86-64-v3`` with AVX2 and FMA; the noise is bit-identical on both, the cell arithmetic may differ in the
last bit), generic code elsewhere; ``NRNN_KERNELS_ISA=native`` builds with ``-march=native``, any other value is
taken as the flags (part of the cache key). The cache lives in ``NRNN_KERNELS_CACHE`` or
``~/.cache/nrnn_plugin/kernels``.

This module imports nothing from the package.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import torch

__all__ = ["backend", "load", "loaded", "require", "status", "gaussian", "cache_directory", "SOURCES", "reset"]

_log = logging.getLogger("nrnn_plugin")
CSRC = Path(__file__).parent / "csrc"
SOURCES = ("ops.cpp", "lstm.cpp", "gru.cpp", "elman.cpp", "nrnn.cpp")
HEADERS = ("philox.h", "common.h")
CHOICES = ("auto", "python", "compiled")
# FMA contraction is allowed in the cell code; csrc/philox.h switches it off for the noise itself.
BASE_FLAGS = ("-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math")

_lock = threading.Lock()
_state: dict[str, object] = {}  # "loaded": bool, "reason": str, "told": bool


def _choice() -> str:
    value = os.environ.get("NRNN_KERNELS", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"NRNN_KERNELS: expected one of {CHOICES}, got {value!r}")
    return value


def _cpu_flags() -> str:
    """The CPU's instruction-set flags (``/proc/cpuinfo`` on Linux), or the processor name elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def isa_flags() -> tuple[str, ...]:
    """The instruction-set flags of the build (see the module docstring)."""
    chosen = os.environ.get("NRNN_KERNELS_ISA", "").strip()
    if chosen.lower() == "native":
        return ("-march=native",)
    if chosen:
        return tuple(chosen.split())
    flags = set(_cpu_flags().split())
    if platform.machine() not in ("x86_64", "AMD64"):
        return ()
    if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
        return ("-march=x86-64-v4",)
    if {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"} <= flags:
        return ("-march=x86-64-v3",)
    return ()


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return ""


def cache_directory() -> Path:
    """Where built kernels are cached (``NRNN_KERNELS_CACHE``, else ``~/.cache/nrnn_plugin/kernels``)."""
    configured = os.environ.get("NRNN_KERNELS_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nrnn_plugin" / "kernels"


def _cache_key(flags: tuple[str, ...], compiler: str) -> str:
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode())
        digest.update((CSRC / name).read_bytes())
    for part in (*flags, _compiler_version(compiler), torch.__version__, sys.version, platform.machine(), _cpu_flags()):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def _with_ninja_on_path() -> None:
    """``torch.utils.cpp_extension`` runs ``ninja`` from ``PATH``: add the ``ninja`` package's (a dependency)."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # noqa: PLC0415 (optional at import time, a dependency of the package)

        directory = ninja.BIN_DIR
    except (ImportError, AttributeError):
        directory = os.path.dirname(sys.executable)
    os.environ["PATH"] = directory + os.pathsep + os.environ.get("PATH", "")


def _build() -> None:
    """Compile (or find in the cache) and load the extension; raises on any failure."""
    compiler = _compiler()
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} not found (CXX={os.environ.get('CXX', 'unset')})")
    from torch.utils import cpp_extension  # noqa: PLC0415 (slow import, only when building)

    flags = (*BASE_FLAGS, *isa_flags())
    name = f"nrnn_kernels_{_cache_key(flags, compiler)}"
    directory = cache_directory() / name
    fresh = not any(directory.glob(f"{name}*.so"))
    if fresh:
        _log.warning("nrnn_plugin: building the compiled CPU kernels (once per machine and torch version, ~30 s)")
    directory.mkdir(parents=True, exist_ok=True)
    _with_ninja_on_path()
    cpp_extension.load(
        name=name,
        sources=[str(CSRC / source) for source in SOURCES],
        extra_cflags=list(flags),
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(CSRC)],
        build_directory=str(directory),
        is_python_module=False,
        verbose=False,
    )


def _register_gaussian_fake() -> None:
    """Shapes of ``nrnn::gaussian`` for ``torch.compile`` / ``torch.export`` (the other operators: ``ops.py``)."""

    def fake(seed: int, offset: int, start: int, count: int) -> torch.Tensor:
        return torch.empty(count, dtype=torch.float32)

    torch.library.register_fake("nrnn::gaussian")(fake)


def load() -> bool:
    """Load the compiled kernels if ``NRNN_KERNELS`` allows it (building them on first use); True when loaded.

    Decided once per process. On failure under ``auto`` one line on stderr says why and how to enable them.

    Raises:
        RuntimeError: ``NRNN_KERNELS=compiled`` and they cannot be built or loaded.
    """
    if "loaded" in _state:  # decided: no lock (also traceable by torch.compile)
        return bool(_state["loaded"])
    with _lock:
        if "loaded" not in _state:
            choice = _choice()
            if choice == "python":
                _state.update(loaded=False, reason="NRNN_KERNELS=python")
            else:
                try:
                    _build()
                    _register_gaussian_fake()
                    _state.update(loaded=True, reason="loaded")
                except Exception as exc:  # a missing compiler, a failing build, a library that does not load
                    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                    _state.update(loaded=False, reason=reason)
                    if choice == "compiled":
                        raise RuntimeError(
                            f"NRNN_KERNELS=compiled: the compiled kernels are unavailable: {reason}"
                        ) from exc
                    _log.warning(
                        "nrnn_plugin: running the Python kernels (compiled CPU kernels unavailable: %s); install a "
                        "C++ compiler and ninja, then `python -m nrnn_plugin.compiled` (NRNN_KERNELS=python "
                        "silences this)",
                        reason,
                    )
        return bool(_state["loaded"])


def loaded() -> bool:
    """True when the compiled kernels are loaded in this process (never triggers a build)."""
    return bool(_state.get("loaded", False))


def require() -> None:
    """Load the compiled kernels or raise ``RuntimeError`` with the reason (tests, benchmarks)."""
    if not load():
        raise RuntimeError(f"the compiled kernels are not loaded: {status()}")


def status() -> str:
    """Why the compiled kernels are (not) loaded: ``"loaded"``, ``"NRNN_KERNELS=python"``, the build error, or
    ``"not loaded yet"``."""
    return str(_state.get("reason", "not loaded yet"))


def backend() -> str:
    """``"compiled"`` or ``"python"``: the kernels noisy CPU layers run in this process (loads on first call)."""
    return "compiled" if load() else "python"


def reset() -> None:
    """Forget the decision (tests that switch ``NRNN_KERNELS``); a loaded library stays loaded."""
    with _lock:
        if not _state.get("loaded"):
            _state.clear()


def gaussian(seed: int, offset: int, start: int, count: int) -> torch.Tensor:
    """The compiled generator (:func:`nrnn_plugin.philox.gaussian`'s numbers); requires :func:`loaded`."""
    return torch.ops.nrnn.gaussian(_signed(seed), _signed(offset), _signed(start), count)


def _signed(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= (1 << 63) else value


def main() -> int:
    """``python -m nrnn_plugin.compiled``: build the kernels now and print one line; exit 1 if unavailable."""
    try:
        ok = load()
    except (RuntimeError, ValueError) as exc:
        print(f"nrnn_plugin: {exc}", file=sys.stderr)
        return 1
    print(f"nrnn_plugin compiled kernels: {status()} ({cache_directory()})" if ok else f"nrnn_plugin: {status()}")
    return 0 if ok else 1
