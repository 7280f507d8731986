"""Outputs that are never half-written, and stopping cleanly on SIGINT / SIGTERM.

Every command writes into a staging folder beside its target (``.<name>.<random>.partial``) and moves it into
place only when everything is written (:class:`OutputFolder`): an interrupted, failed or killed command leaves
the target as it was (a previous run folder included) and removes its staging folder. An existing non-empty
target is replaced only with ``--overwrite``; the target is checked before any work starts.

:func:`stop_on_signals` turns SIGINT (Ctrl-C) and SIGTERM (how Kubernetes, SLURM and ``kill`` stop a job)
into :class:`Interrupted`, which the command line reports as one line with exit status 130 / 143.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

from nrnn_plugin.app.errors import InputError

__all__ = ["OutputFolder", "Interrupted", "stop_on_signals", "check_output_folder"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal asked the command to stop (not an ``Exception``: nothing on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    for sig in _SIGNALS:  # a second Ctrl-C must not interrupt the clean-up of the first
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (main thread only); handlers restored."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
        signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_output_folder(target: str | Path, *, overwrite: bool, option: str = "--out") -> Path:
    """Refuse, before any work, a target that is a file, a non-empty folder (without ``overwrite``), or a
    place that cannot be written. Returns the target as an absolute path."""
    path = Path(target).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"{option}: {str(path)!r} is a file; expected a folder (or a path that does not exist)")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(f"{option}: {str(path)!r} exists and is not empty; pass --overwrite to replace it")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{option}: cannot create {str(path)!r}: {str(ancestor)!r} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{option}: cannot create {str(path)!r}: {str(ancestor)!r} is not writable")
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class OutputFolder:
    """``with OutputFolder(target, overwrite=...) as staging:`` write into ``staging``; on success it becomes
    ``target`` (the previous ``target``, if any, is removed after the move); on any exception or signal the
    staging folder is removed and ``target`` is untouched."""

    def __init__(self, target: str | Path, *, overwrite: bool = False, option: str = "--out") -> None:
        self.target = check_output_folder(target, overwrite=overwrite, option=option)
        self.overwrite = overwrite
        self.option = option
        self.staging: Path | None = None

    def __enter__(self) -> Path:
        self.target = check_output_folder(self.target, overwrite=self.overwrite, option=self.option)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".partial", dir=self.target.parent))
        os.chmod(self.staging, 0o777 & ~_umask())  # mkdtemp makes it private; the result gets the usual mode
        return self.staging

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        staging, self.staging = self.staging, None
        if staging is None:
            return
        if kind is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # the two renames are not interrupted
        try:
            old = None
            if self.target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".old", dir=self.target.parent))
                os.replace(self.target, old / self.target.name)
            os.replace(staging, self.target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if old is not None and not self.target.exists():
                os.replace(old / self.target.name, self.target)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
