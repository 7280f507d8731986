"""Every Python code block of the README and of the docs pages runs as written, so a quick start cannot rot.

A block is a fenced ```` ```python ```` block. Each one runs in a fresh namespace, in a fresh interpreter per
page, in an empty temporary folder (what a reader who copies it gets), unless the line right above its fence is
one of these HTML comments (invisible on GitHub and in the site):

* ``<!-- not-run: <reason> -->``: the block is only compiled (it needs a user's own model, a GPU, minutes ...);
* ``<!-- continue -->``: the block runs in the namespace of the page's previous block.

Tracebacks point at the page and its line numbers. The blocks run with one compute thread (``OMP_NUM_THREADS=1``)
unless the environment sets another number.

This is a small collector of its own rather than pytest-markdown-docs: that plugin's switch also collects the
docstrings of every test module (importing each a second time, outside ``--import-mode=importlib``), and its
per-block options go into the fence's info string, where ```` ```python notest ```` breaks the fence in MkDocs
and the brace form MkDocs accepts is not highlighted on GitHub.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->$")
CONTINUE = re.compile(r"^<!--\s*continue\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the first code line
    code: str
    run: bool
    continues: bool
    reason: str = ""


def markdown_files() -> list[Path]:
    pages = sorted(p for p in (ROOT / "docs").rglob("*.md") if "site" not in p.relative_to(ROOT / "docs").parts)
    return [ROOT / "README.md", *pages]


def python_blocks(path: Path) -> list[Block]:
    """The ```` ```python ```` blocks of a Markdown file, with their markers."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, info = opening["indent"], opening["info"].strip()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: unclosed code fence")
        if info.split()[:1] == ["python"]:
            body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]]
            marker = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            not_run = NOT_RUN.match(marker)
            blocks.append(
                Block(
                    path=path,
                    line=i + 2,
                    code="\n".join(body) + "\n",
                    run=not_run is None,
                    continues=bool(CONTINUE.match(marker)),
                    reason=not_run["reason"] if not_run else "",
                )
            )
        i = end + 1
    return blocks


# The interpreter that runs one page: blocks in order, each compiled with the page's path and line numbers.
RUNNER = textwrap.dedent(
    """
    import json, sys, traceback
    blocks = json.load(sys.stdin)
    namespace = None
    for block in blocks:
        if namespace is None or not block["continues"]:
            namespace = {"__name__": "__markdown__"}
        source = "\\n" * (block["line"] - 1) + block["code"]
        try:
            exec(compile(source, block["path"], "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"FAILED: the block at {block['path']}:{block['line']}", file=sys.stderr)
            sys.exit(1)
    """
)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _pages_with_runnable_blocks() -> list[Path]:
    return [path for path in markdown_files() if any(block.run for block in python_blocks(path))]


def test_the_collector_finds_blocks_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n<!-- continue -->\n```python\nassert x == 1\n```\n\n"
        "<!-- not-run: needs a GPU -->\n```python\nimport cuda_only\n```\n\n```bash\nls\n```\n\n"
        "* item\n\n    ```python\n    y = 2\n    ```\n"
    )
    blocks = python_blocks(page)
    assert [(b.line, b.run, b.continues, b.reason) for b in blocks] == [
        (4, True, False, ""),
        (9, True, True, ""),
        (14, False, False, "needs a GPU"),
        (24, True, False, ""),
    ]
    assert blocks[3].code == "y = 2\n"


def test_every_python_block_compiles():
    """Blocks that do not run still are valid Python, and every not-run marker gives a reason."""
    seen = 0
    for path in markdown_files():
        for block in python_blocks(path):
            ast.parse(block.code, filename=f"{_relative(path)}:{block.line}")
            seen += 1
    assert seen > 0


def test_the_readme_quick_starts_are_all_run():
    """The README has no not-run Python block: every quick start is complete and runs as written."""
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 3
    assert all(block.run and not block.continues for block in blocks), [b.line for b in blocks if not b.run]


def _run_page(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    blocks = [
        {"path": str(path), "line": b.line, "code": b.code, "continues": b.continues}
        for b in python_blocks(path)
        if b.run
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("NRNN_")}
    env["MPLBACKEND"] = "Agg"
    # One compute thread unless the caller chose: these small models are fastest on one, and on a busy 2-core
    # machine idle OpenMP workers spinning for a core made the README's blocks 8x slower (186 s against 22 s).
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(blocks),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_failing_block_fails_with_its_page_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\n```python\nassert x == 1\n```\n")
    result = _run_page(page, tmp_path)
    assert result.returncode == 1
    assert f'File "{page}", line 8' in result.stderr  # the second block does not see the first one's names
    assert f"FAILED: the block at {page}:8" in result.stderr


@pytest.mark.parametrize("path", _pages_with_runnable_blocks(), ids=_relative)
def test_code_blocks_run(path, tmp_path):
    result = _run_page(path, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
