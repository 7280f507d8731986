"""Field validators shared by every schema of the library (``NoiseConfig``, the NRNN layer, the regularizer).

Each check takes the field's ``key`` as the user wrote it (``"NoiseConfig.additive"``, ``"data.lengths"``),
returns the normalised value and raises with one message naming the key, the allowed values and the value
received: ``"<key>: expected <allowed>, got <value>"``. A value of the wrong type raises ``type_error`` (default
``TypeError``), a value of the right type outside the allowed range raises ``value_error`` (default
``ValueError``); callers with their own exception class (the command line's ``ConfigError``) pass it as both.

Numbers are accepted generally: any :class:`numbers.Real` (``float``, ``int``, ``numpy.float32``, ...) where a
real is allowed and any :class:`numbers.Integral` (``int``, ``numpy.int64``, ...) where an integer is; ``bool``
is neither. Values too large for a float (``10**400``) are out of range, not an ``OverflowError``.

This module imports nothing from the package.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "expected",
    "check_real",
    "check_int",
    "check_choice",
    "check_bool",
    "check_names",
    "reject_unknown",
]


def expected(key: str, allowed: str, value: Any, error: type[Exception] = ValueError) -> Exception:
    """The exception ``error("<key>: expected <allowed>, got <value!r>")`` (to raise)."""
    return error(f"{key}: expected {allowed}, got {value!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(
    key: str,
    value: Any,
    *,
    minimum: float | None = None,
    strict: bool = False,
    maximum: float | None = None,
    value_error: type[Exception] = ValueError,
    type_error: type[Exception] = TypeError,
) -> float:
    """A finite real number in ``[minimum, maximum]`` (``(minimum, maximum]`` when ``strict``), as ``float``."""
    parts = ["a finite number"]
    if minimum is not None:
        parts.append(f"> {minimum}" if strict else f">= {minimum}")
    if maximum is not None:
        parts.append(("and " if minimum is not None else "") + f"<= {maximum}")
    allowed = " ".join(parts)
    if not _is_real(value):
        raise expected(key, allowed, value, type_error)
    try:
        number = float(value)
    except OverflowError:
        raise expected(key, allowed, value, value_error) from None
    if not math.isfinite(number):
        raise expected(key, allowed, value, value_error)
    if minimum is not None and (number < minimum or (strict and number == minimum)):
        raise expected(key, allowed, value, value_error)
    if maximum is not None and number > maximum:
        raise expected(key, allowed, value, value_error)
    return number


def check_int(
    key: str,
    value: Any,
    *,
    minimum: int | None = None,
    value_error: type[Exception] = ValueError,
    type_error: type[Exception] = TypeError,
) -> int:
    """An integer ``>= minimum``, as ``int``."""
    allowed = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise expected(key, allowed, value, type_error)
    number = int(value)
    if minimum is not None and number < minimum:
        raise expected(key, allowed, value, value_error)
    return number


def check_choice(
    key: str,
    value: Any,
    choices: Iterable[str],
    *,
    value_error: type[Exception] = ValueError,
    type_error: type[Exception] = TypeError,
) -> str:
    """One of the strings ``choices``."""
    options = tuple(choices)
    allowed = "one of " + ", ".join(repr(c) for c in options)
    if not isinstance(value, str):
        raise expected(key, allowed, value, type_error)
    if value not in options:
        raise expected(key, allowed, value, value_error)
    return value


def check_bool(
    key: str, value: Any, *, type_error: type[Exception] = TypeError, spelling: str = "True or False"
) -> bool:
    """``True`` or ``False`` (``numpy.bool_`` included); ``spelling`` is how the message names them."""
    if isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    raise expected(key, spelling, value, type_error)


def check_names(
    key: str,
    value: Any,
    *,
    what: str = "names",
    distinct: bool = False,
    value_error: type[Exception] = ValueError,
    type_error: type[Exception] = TypeError,
) -> tuple[str, ...]:
    """A list of non-empty strings (a single string is a list of one; ``None`` is empty), as a tuple."""
    allowed = f"a list of {what}" if not distinct else f"a list of distinct {what}"
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise expected(key, allowed, value, type_error)
    if distinct and len(set(value)) != len(value):
        raise expected(key, allowed, value, value_error)
    return tuple(value)


def reject_unknown(
    where: str, data: Mapping[Any, Any], known: Iterable[str], *, error: type[Exception] = ValueError
) -> None:
    """Raise ``error`` naming the keys of ``data`` that are not in ``known`` (keys of any type, sorted as text)."""
    allowed = sorted(known)
    unknown = sorted((key for key in data if key not in allowed), key=lambda key: (str(type(key)), str(key)))
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown}; allowed keys are {allowed}")
