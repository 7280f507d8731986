"""The JSON Schema of a run file's ``noise:`` section, derived from :class:`nrnn_plugin.NoiseConfig` itself.

The noise fields are defined once, in :mod:`nrnn_plugin.config`: their names, types and defaults come from the
dataclass fields, the allowed values from the module's choice tuples, the descriptions from the docstrings.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

from nrnn_plugin import config as noise_config
from nrnn_plugin.config import NoiseConfig, Schedule

__all__ = ["noise_json_schema"]

_TYPES: dict[str, dict[str, Any]] = {
    "float": {"type": "number", "minimum": 0},
    "int": {"type": "integer", "minimum": 0},
    "bool": {"type": "boolean"},
    "str": {"type": "string"},
    "int | None": {"type": ["integer", "null"], "minimum": 0},
    "tuple[str, ...]": {"type": "array", "items": {"type": "string"}},
}
_CHOICES = {
    ("NoiseConfig", "scheme"): noise_config.SCHEMES,
    ("NoiseConfig", "target"): noise_config.TARGETS,
    ("NoiseConfig", "mode"): noise_config.MODES,
    ("NoiseConfig", "estimator"): noise_config.ESTIMATORS,
    ("Schedule", "kind"): noise_config.SCHEDULE_KINDS,
    ("Schedule", "interval"): noise_config.SCHEDULE_INTERVALS,
}

#: Bounds stricter than the type's (``NoiseConfig`` checks them; the schema tells editors).
_BOUNDS = {
    ("NoiseConfig", "dt"): {"exclusiveMinimum": 0},
    ("NoiseConfig", "probes"): {"minimum": 1},
    ("Schedule", "final"): {"maximum": 1},
}


def _descriptions(cls: type) -> dict[str, str]:
    """``name: text`` entries of the class docstring (continuation lines joined, RST markup dropped)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in doc.splitlines():
        match = re.match(r"^\s*([a-z_]+(?: / [a-z_]+)?): (.*)$", line)
        if match:
            current = [match.group(2)]
            for name in match.group(1).split(" / "):
                found[name] = current
        elif current and line.startswith("    ") and line.strip():
            current.append(line.strip())
        else:
            current = []
    return {name: re.sub(r"``|:[a-z]+:`~?|`", "", " ".join(parts)) for name, parts in found.items()}


def _object(cls: type, title: str) -> dict[str, Any]:
    described = _descriptions(cls)
    properties: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.type == "Schedule":
            entry = _object(Schedule, "Schedule")
        else:
            entry = dict(_TYPES[str(field.type)])
            choices = _CHOICES.get((cls.__name__, field.name))
            if choices:
                entry = {"type": "string", "enum": list(choices)}
            entry.update(_BOUNDS.get((cls.__name__, field.name), {}))
            if "exclusiveMinimum" in entry:
                entry.pop("minimum", None)
            default = field.default
            entry["default"] = list(default) if isinstance(default, tuple) else default
        if field.name in described:
            entry["description"] = described[field.name]
        properties[field.name] = entry
    return {"title": title, "type": "object", "additionalProperties": False, "properties": properties}


def noise_json_schema() -> dict[str, Any]:
    """The ``noise`` section: an object of :class:`NoiseConfig` fields (or null: plain training)."""
    schema = _object(NoiseConfig, "NoiseConfig")
    schema["type"] = ["object", "null"]
    schema["description"] = "Noisy RNN training (nrnn_plugin.NoiseConfig); absent, {} or enabled: false: plain"
    return schema
