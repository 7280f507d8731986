"""The one YAML dialect of nrnn-plugin: what every configuration file is read and written with.

Reading and writing share one set of rules, so a value written is read back as the same value:

* safe loading only (plain data: mappings, lists, strings, numbers, booleans, null; no Python objects);
* the YAML 1.2 core schema for scalars: ``true``/``false`` (any case) are booleans, ``null``/``~``/empty is
  null, decimal integers (``12``, ``-3``) and decimal floats (``0.1``, ``1e-3``, ``.5``, ``.inf``, ``.nan``)
  are numbers; YAML 1.1's other forms are plain strings (``yes``/``no``/``on``/``off``, sexagesimal ``1:30``,
  octal ``010``, hex ``0x1f``, ``1_000``), so a field that expects a number or a boolean rejects them with
  its usual message instead of silently reading ``1:30`` as 90 or ``010`` as 8;
* a duplicate key in a mapping is an error (YAML forbids it; PyYAML keeps the last value silently);
* :func:`dump_yaml` quotes every string that would read back as another type (``"1e3"``, ``"true"``).

Errors are ``ValueError`` with the file, line and column.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_yaml", "read_yaml", "dump_yaml", "yaml_loader", "yaml_dumper"]

_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")


class _CoreResolver(yaml.resolver.BaseResolver):
    """YAML 1.2 core-schema resolution of plain scalars (see the module docstring)."""


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:bool", _BOOL, "tTfF"),
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
    ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789."),
):
    _CoreResolver.add_implicit_resolver(_tag, _pattern, list(_first))


class _Constructor(yaml.constructor.SafeConstructor):
    """Safe construction; duplicate keys are errors; numbers and booleans by the core schema's spelling."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        return str(self.construct_scalar(node)).lower() == "true"

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        return int(str(self.construct_scalar(node)))


_Constructor.add_constructor("tag:yaml.org,2002:bool", _Constructor.construct_yaml_bool)
_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)


@functools.lru_cache(maxsize=1)
def yaml_loader() -> type:
    """The loader class of the dialect (for ``yaml.load(text, Loader=yaml_loader())``)."""

    class Loader(
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        yaml.composer.Composer,
        _Constructor,
        _CoreResolver,
    ):
        def __init__(self, stream: Any) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Constructor.__init__(self)
            _CoreResolver.__init__(self)

    return Loader


@functools.lru_cache(maxsize=1)
def yaml_dumper() -> type:
    """The dumper class of the dialect: quotes strings that the loader would read as something else."""

    class Dumper(yaml.emitter.Emitter, yaml.serializer.Serializer, yaml.representer.SafeRepresenter, _CoreResolver):
        def __init__(self, stream: Any, **kwargs: Any) -> None:
            emitter_args = {
                k: kwargs.pop(k)
                for k in list(kwargs)
                if k in ("canonical", "indent", "width", "allow_unicode", "line_break")
            }
            yaml.emitter.Emitter.__init__(self, stream, **emitter_args)
            yaml.serializer.Serializer.__init__(
                self,
                encoding=kwargs.pop("encoding", None),
                explicit_start=kwargs.pop("explicit_start", None),
                explicit_end=kwargs.pop("explicit_end", None),
                version=kwargs.pop("version", None),
                tags=kwargs.pop("tags", None),
            )
            yaml.representer.SafeRepresenter.__init__(
                self,
                default_style=kwargs.pop("default_style", None),
                default_flow_style=kwargs.pop("default_flow_style", False),
                sort_keys=kwargs.pop("sort_keys", True),
            )
            _CoreResolver.__init__(self)

    return Dumper


def _located(exc: yaml.YAMLError, source: str) -> ValueError:
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ValueError(f"{source}: not valid YAML{where}: {problem}")


def load_yaml(text: str, source: str = "<string>") -> Any:
    """Parse ``text`` in the dialect; ``source`` names it in errors. An empty document is ``None``."""
    try:
        return yaml.load(text, Loader=yaml_loader())  # noqa: S506 (a safe loader: SafeConstructor)
    except yaml.YAMLError as exc:
        raise _located(exc, source) from None


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse the YAML file at ``path`` (see :func:`load_yaml`)."""
    return load_yaml(Path(path).read_text(), str(path))


def dump_yaml(data: Any, *, sort_keys: bool = False) -> str:
    """``data`` (plain data) as YAML text that :func:`load_yaml` reads back as equal data."""
    text: str = yaml.dump(data, Dumper=yaml_dumper(), sort_keys=sort_keys, allow_unicode=True)
    return text
