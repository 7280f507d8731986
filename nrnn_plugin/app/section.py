"""The base of every run-file section: a frozen pydantic model that rejects unknown keys, with one-line errors."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from nrnn_plugin.app.errors import ConfigError
from nrnn_plugin.app.schema_errors import format_validation_error

__all__ = ["Section"]

_S = TypeVar("_S", bound="Section")


class Section(BaseModel):
    """A section of the run file: frozen, unknown keys rejected, ``from_dict`` / ``to_dict`` for plain data."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @classmethod
    def from_dict(cls: type[_S], data: Any) -> _S:
        """Validate a mapping; a :class:`ConfigError` (one line) on invalid input."""
        try:
            return cls.model_validate({} if data is None else data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, cls, prefix=getattr(cls, "SECTION", ""))) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-safe data (``from_dict(to_dict())`` gives the same section)."""
        return self.model_dump(mode="json", by_alias=True)

    def replace(self: _S, **changes: Any) -> _S:
        """A copy with ``changes``, validated like a new section."""
        return type(self).from_dict({**self.to_dict(), **changes})
