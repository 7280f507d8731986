"""The command line's error classes: bad user input is one line on stderr and exit status 2."""

from __future__ import annotations

__all__ = ["InputError", "ConfigError", "DataError", "first_line"]


class InputError(ValueError):
    """Bad user input (config, data, paths): the CLI prints the message on one line and exits with status 2."""


class ConfigError(InputError):
    """An invalid run configuration; the message names the key, the allowed values and the value received."""


class DataError(InputError):
    """A data file that does not fit the configuration (missing columns, non-numeric target, too short)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
