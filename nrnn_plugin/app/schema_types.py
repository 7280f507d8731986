"""Field types of the run-file schema (:mod:`nrnn_plugin.app.run_config`) with their one-line messages.

``Names`` (distinct column names; ``null`` or one string allowed), ``Text`` (non-empty string), ``Count``
(integer >= 1), ``ValSize`` / ``TestSize`` (a number of time steps or a fraction of the time span), and
:func:`fail`, a validation error whose message names its field itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from nrnn_plugin.validation import check_names

__all__ = ["fail", "Names", "Text", "Count", "ValSize", "TestSize", "BatchLimit"]


def fail(message: str) -> PydanticCustomError:
    """A validation error whose message is complete as written (it names the field itself)."""
    return PydanticCustomError("nrnn", "{message}", {"message": message})


def _names(value: Any) -> tuple[str, ...]:
    """A list of distinct non-empty column names (``null`` is an empty list)."""
    try:
        return check_names("names", value, what="column names", distinct=True)
    except (TypeError, ValueError) as exc:
        raise PydanticCustomError("names", "{text}", {"text": str(exc).split(": ", 1)[-1]}) from None


Names = Annotated[
    tuple[str, ...],
    BeforeValidator(_names),
    WithJsonSchema({"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True}),
]
Text = Annotated[str, Field(min_length=1, strict=True)]
Count = Annotated[int, Field(ge=1, strict=True)]


def _size_json(unit: str, of: str) -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": "integer", "minimum": 1, "description": f"a number of {unit}"},
            {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "description": f"a fraction of {of}"},
        ]
    }


def _size_check(allow_zero: bool, unit: str = "time steps") -> Any:
    allowed = f"a number of {unit} (integer >= 1) or a fraction in (0, 1)" + (" or 0" if allow_zero else "")

    def check(value: Any) -> float | int:
        if not isinstance(value, bool) and isinstance(value, (int, float)):
            if (allow_zero and value == 0) or (isinstance(value, int) and value >= 1):
                return value
            if isinstance(value, float) and 0.0 < value < 1.0:
                return value
        raise PydanticCustomError("split", "expected {allowed}", {"allowed": allowed})

    return check


_SPAN = _size_json("time steps", "the time span")
ValSize = Annotated[int | float, PlainValidator(_size_check(False)), WithJsonSchema(_SPAN)]
TestSize = Annotated[
    int | float,
    PlainValidator(_size_check(True)),
    WithJsonSchema({"anyOf": [*_SPAN["anyOf"], {"const": 0, "description": "no test part"}]}),
]
BatchLimit = Annotated[
    int | float, PlainValidator(_size_check(False, "batches")), WithJsonSchema(_size_json("batches", "the epoch"))
]
