"""``--checkpoint`` arguments of ``nrnn robustness``: single runs or named variants over several runs.

``--checkpoint runs/a/model.ckpt`` (or the run folder ``runs/a``) is one run; ``--checkpoint noisy='runs/noisy_*'``
names a *variant* whose runs are every run folder or checkpoint the glob matches (typically the same run file
trained with different ``trainer.seed``). Light: the standard library only, so arguments are checked before
the slow imports.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nrnn_plugin.app.errors import InputError

__all__ = ["Variant", "parse_variants"]

_NAME = re.compile(r"^[A-Za-z][\w.+-]*$")
_CHECKPOINT = "model.ckpt"


@dataclass(frozen=True)
class Variant:
    """A named group of runs (``name`` is ``None`` for a single run given without a name)."""

    name: str | None
    pattern: str
    checkpoints: tuple[Path, ...]


def _expand(pattern: str, item: str) -> tuple[Path, ...]:
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    paths = []
    for match in matches:
        path = Path(match)
        paths.append(path / _CHECKPOINT if path.is_dir() else path)
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths:
        raise InputError(f"--checkpoint {item!r}: no run folder or checkpoint matches {pattern!r}")
    if missing and glob.has_magic(pattern):
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise InputError(f"--checkpoint {item!r}: {pattern!r} matches no run folder with a {_CHECKPOINT}")
    elif missing:
        raise InputError(f"checkpoint not found: {missing[0]!r}")
    return tuple(paths)


def parse_variants(items: Sequence[str]) -> list[Variant]:
    """One :class:`Variant` per ``--checkpoint`` value (``[NAME=]PATH_OR_GLOB``); names must be distinct."""
    variants: list[Variant] = []
    for item in items:
        name, pattern = None, item
        head, sep, tail = item.partition("=")
        if sep and _NAME.match(head) and not Path(item).exists():
            name, pattern = head, tail
        variants.append(Variant(name=name, pattern=pattern, checkpoints=_expand(pattern, item)))
    names = [v.name for v in variants if v.name is not None]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"--checkpoint: variant names must be distinct, got {duplicated} more than once")
    if names and len(names) != len(variants):
        raise InputError("--checkpoint: name every variant (NAME=PATH) or none")
    return variants
