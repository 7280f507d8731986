"""One line per invalid run file: pydantic's validation errors as ``<field path>: expected <allowed>, got <value>``.

Only the first problem is reported (a user fixes one thing at a time); unknown keys of the same section are
reported together, with the keys that section allows.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["format_validation_error"]

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "string_too_short": "a non-empty string",
    "model_type": "a mapping (a YAML section of 'name: value' lines)",
    "model_attributes_type": "a mapping (a YAML section of 'name: value' lines)",
    "dict_type": "a mapping (a YAML section of 'name: value' lines)",
    "list_type": "a list",
    "tuple_type": "a list",
}
_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"), "less_than": ("lt", "<")}


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model of a field's annotation: the model itself, or the model of an optional ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [m for m in typing.get_args(annotation) if m is not type(None)]
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        return members[0]
    return None


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """The field names along ``loc`` (union-member tags dropped) and the last section model reached."""
    names: list[str] = []
    current: type[BaseModel] | None = model
    for item in loc:
        if current is None or not isinstance(item, str):
            if isinstance(item, int):
                names[-1:] = [f"{names[-1]}[{item}]"] if names else [f"[{item}]"]
            break
        fields = {(info.alias or name): (name, info) for name, info in current.model_fields.items()}
        if item not in fields and item not in current.model_fields:
            names.append(item) if not names or current.model_config.get("extra") else None
            break
        _, info = fields.get(item) or (item, current.model_fields[item])
        names.append(item)
        current = _section_model(info.annotation)
    return names, current


def _section_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for item in path:
        if item in current.model_fields:
            current = _section_model(current.model_fields[item].annotation) or current
    return [info.alias or name for name, info in current.model_fields.items()]


def format_validation_error(exc: ValidationError, model: type[BaseModel], *, prefix: str = "") -> str:
    """The first error of ``exc`` (raised validating ``model``) as one line naming the field path.

    ``prefix`` names the section when ``model`` is a section validated on its own (``"data"``).
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    head = [prefix] if prefix else []
    if first["type"] == "extra_forbidden":
        section = loc[:-1]
        unknown = sorted(
            str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == section
        )
        where = ".".join(head + [str(s) for s in section])
        owner = f"section {where!r}" if where else "the run file"
        return f"{owner}: unknown key(s) {unknown}; allowed keys are {_section_keys(model, section)}"
    names, _ = _walk(model, loc)
    path = ".".join(head + names) or "the run file"
    if first["type"] == "nrnn":
        return str(first["ctx"]["message"]) if first.get("ctx") else str(first["msg"])
    if first["type"] == "missing":
        return f"{path}: required, but missing"
    kind = first["type"]
    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        wanted = f"a value {sign} {first['ctx'][key]}"
    elif kind in _EXPECTED:
        wanted = _EXPECTED[kind]
    elif kind == "literal_error":
        wanted = f"one of {first['ctx']['expected']}"
    else:
        wanted = str(first["msg"]).removeprefix("Value error, ").removeprefix("Input should be ")
        wanted = wanted.removeprefix("expected ")
        if ", got " in wanted:
            return f"{path}: expected {wanted}"
    return f"{path}: expected {wanted}, got {first.get('input')!r}"
