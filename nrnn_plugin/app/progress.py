"""Where progress goes: the reporter protocol of the application's engines, and the terminal's reporter."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

__all__ = ["Reporter", "NullReporter", "StderrReporter"]


class Reporter(Protocol):
    """Where progress goes: ``progress`` for routine lines (a quiet CLI drops them), ``note`` for facts the
    user should see (data fixes, left-out series)."""

    def progress(self, message: str) -> None: ...

    def note(self, message: str) -> None: ...


class NullReporter:
    """A reporter that says nothing (the default of every function here)."""

    def progress(self, message: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


class StderrReporter:
    """Progress and notes for the user, on stderr (stdout carries the tables). ``quiet`` keeps notes only.

    ``interactive`` (stderr is a terminal and not ``quiet``) lets long work show a progress bar besides the
    plain lines (``tqdm`` on the same stream); logs and pipes get the plain lines only.
    """

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.started = time.perf_counter()
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty()) and not quiet

    def progress(self, message: str) -> None:
        if not self.quiet:
            self._write(message)

    def bar(self, total: int, description: str) -> Any:
        """A progress bar over ``total`` units on the stream when interactive, else ``None``."""
        if not self.interactive:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, leave=False, file=self.stream, dynamic_ncols=True)

    def note(self, message: str) -> None:
        self._write(message)

    def _write(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        line = f"[{elapsed:6.1f}s] {message}"
        if self.interactive:
            from tqdm.auto import tqdm

            tqdm.write(line, file=self.stream)  # above any bar in progress
        else:
            print(line, file=self.stream, flush=True)
