"""Tables and files of benchmark results: Markdown for people, CSV for later analysis (rows of
:func:`nrnn_plugin.app.benchmarking.run_layer_benchmark`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["format_markdown", "format_memory_markdown", "write_csv", "read_csv"]


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one line per size, the fused step time per mode and the ratio per case."""
    cases = list(dict.fromkeys(row["case"] for row in rows))
    modes = list(dict.fromkeys(row.get("baseline", row["mode"]) for row in rows if row["train"]))
    sizes = list(dict.fromkeys(_size_key(row) for row in rows))
    ratio = {(_size_key(row), row["case"]): row["ratio"] for row in rows}
    base: dict[tuple[tuple[int, ...], str], float] = {}
    for row in rows:  # the fused time of the first training case of each mode
        if row["train"]:
            base.setdefault((_size_key(row), row.get("baseline", row["mode"])), row["base_ms"])
    header = ["B", "T", "H", "I", "layers"] + [f"fused {_mode_label(m)} ms" for m in modes] + cases
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for size in sizes:
        cells = [str(v) for v in size]
        cells += [f"{base[(size, m)]:.1f}" if (size, m) in base else "" for m in modes]
        cells += [f"{ratio[(size, c)]:.2f}x" if (size, c) in ratio else "" for c in cases]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_memory_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of training memory: one line per size and training case, the MiB saved for backward by
    the plain and the noisy module and their ratio."""
    header = ["B", "T", "H", "I", "layers", "case", "plain MiB", "noisy MiB", "ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row["train"] and row.get("memory_ratio") is not None and row.get("baseline", row["mode"]) == row["mode"]:
            cells = [str(v) for v in _size_key(row)] + [row["case"]]
            cells += [f"{row['plain_saved_mib']:.2f}", f"{row['noisy_saved_mib']:.2f}", f"{row['memory_ratio']:.2f}x"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _size_key(row: dict[str, Any]) -> tuple[int, ...]:
    return (row["batch"], row["steps"], row["hidden"], row["input_size"], row["layers"])


def _mode_label(mode: str) -> str:
    return {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN-relu"}[mode]


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write result rows to ``path`` as CSV (columns of the first row)."""
    if not rows:
        raise ValueError("write_csv: no rows to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(rows)).to_csv(path, index=False)


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Result rows written by :func:`write_csv` (numbers and booleans come back typed, empty cells as None)."""
    frame = pd.read_csv(path)
    records: list[dict[str, Any]] = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return records
