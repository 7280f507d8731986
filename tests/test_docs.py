"""The documentation lives in the repository and stays true to it.

* The MkDocs site (``mkdocs.yml``, ``docs/``) builds with ``--strict``: a broken link or anchor, a page left
  out of the navigation, or an API reference (mkdocstrings) that names a missing object fails the suite. The
  check itself can fail: copies of the site with a broken link, anchor or reference are refused.
* Every Markdown file that a docstring or comment of the code names (``docs/method.md``,
  ``results/layers_cpu.md``) exists, and so does every repository path the README and the docs pages name;
  every ``nrnn_plugin.*`` name the code, the README and the docs mention resolves (a module or an attribute).
* Nothing in the repository points at files outside it.
* The design page names the rules that ``tests/test_architecture.py`` enforces.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = (
    "index.md",
    "method.md",
    "design.md",
    "configuration.md",
    "lightning.md",
    "forecasting.md",
    "frameworks.md",
    "regularizer.md",
    "robustness.md",
    "speed.md",
    "plugins.md",
    "cli.md",
)
SKIPPED_DIRS = {".git", ".venv", "site", "build", "dist", "__pycache__", "outputs", "runs", "lightning_logs"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".cfg", ".txt", ".ini", ".json", ""}

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")


@cache
def repository_files() -> tuple[Path, ...]:
    """The repository's files: tracked and untracked-but-not-ignored (``git ls-files``), else a walk of the tree."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        files = [ROOT / name for name in listed]
    except (OSError, subprocess.CalledProcessError):
        files = [
            Path(folder) / name
            for folder, dirs, names in os.walk(ROOT)
            for name in names
            if not dirs.__setitem__(slice(None), [d for d in dirs if d not in SKIPPED_DIRS])
        ]
    return tuple(sorted(path for path in files if path.is_file()))


def _text_files(suffixes: set[str] = TEXT_SUFFIXES) -> list[Path]:
    return [path for path in repository_files() if path.suffix in suffixes and path.stat().st_size < 1_000_000]


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


# ---------------------------------------------------------------------------------------------- the site


def test_every_page_of_the_site_exists():
    missing = [page for page in PAGES if not (DOCS / page).is_file()]
    assert not missing
    assert any((DOCS / "reference").glob("*.md"))


def test_the_site_builds_strictly_with_its_api_reference(tmp_path):
    result = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    for page in PAGES:
        assert (tmp_path / "site" / ("index.html" if page == "index.md" else page[:-3] + "/index.html")).is_file()
    # the API reference is generated from the docstrings: objects of every room appear with their anchors
    expected = {
        "reference/index.html": ["nrnn_plugin.swap.register_noise"],
        "reference/config/index.html": ["nrnn_plugin.config.NoiseConfig", "nrnn_plugin.config.Schedule"],
        "reference/runtime/index.html": ["nrnn_plugin.runtime.noise_control", "nrnn_plugin.noise.NoiseSource"],
        "reference/regularizer/index.html": ["nrnn_plugin.regularizer.api.explicit_regularizer"],
        "reference/lightning/index.html": ["nrnn_plugin.integrations.lightning.NoisyRNNCallback"],
        "reference/adapters/index.html": ["adapters.forecasting.decoding.forecast_samples"],
    }
    for page, anchors in expected.items():
        html = (tmp_path / "site" / page).read_text()
        for anchor in anchors:
            assert f'id="{anchor}"' in html, (page, anchor)
    assert (
        "Inject hidden-state noise in every noisy module"
        in (tmp_path / "site" / "reference/inference/index.html").read_text()
    )


def _site_copy(tmp_path: Path) -> Path:
    """A copy of ``mkdocs.yml`` and ``docs/`` whose API reference still reads the repository's sources."""
    shutil.copytree(DOCS, tmp_path / "docs")
    config = (ROOT / "mkdocs.yml").read_text()
    assert "paths: [.]" in config
    (tmp_path / "mkdocs.yml").write_text(config.replace("paths: [.]", f"paths: [{str(ROOT)!r}]"))
    return tmp_path / "mkdocs.yml"


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("See [the missing page](no-such-page" + ".md).", "no-such-page"),
        ("See [a missing anchor](method.md#no-such-section).", "no-such-section"),
        ("::: nrnn_plugin.no_such_module", "nrnn_plugin.no_such_module"),
    ],
    ids=["link", "anchor", "reference"],
)
def test_the_strict_build_refuses_a_broken_site(tmp_path, breakage, message):
    config = _site_copy(tmp_path)
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\n" + breakage + "\n")
    result = _build(config, tmp_path / "site")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------- references

# A file name a text refers to: ``docs/method.md``, ``results/layers_cpu.md``, ``README.md``.
MD_REFERENCE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.md)\b")
# A repository path the README and the docs name: ``examples/run.yaml``, ``benchmarks/results/robustness_*.png``.
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:docs|examples|benchmarks|tests|scripts|nrnn_plugin|adapters)/[\w./*{},-]*[\w*}])"
)
DOTTED = re.compile(r"(?<![\w.])nrnn_plugin(?:\.[A-Za-z_]\w*)+")


def _exists(reference: str, near: Path) -> bool:
    """``reference`` names a repository file: relative to the root, to the folder of ``near``, or by its name."""
    for base in (ROOT, near.parent):
        candidate = base / reference
        if any(ch in reference for ch in "*{"):
            patterns = _braces(reference)
            if any(fnmatch.fnmatch(str(path.relative_to(base)), p) for p in patterns for path in _under(base)):
                return True
        elif candidate.exists():
            return True
    if "/" in reference:
        suffix = "/" + reference
        return any(str(path).endswith(suffix) for path in repository_files())
    return any(path.name == reference for path in repository_files())


def _under(base: Path) -> list[Path]:
    return [path for path in repository_files() if path.is_relative_to(base)]


def _braces(pattern: str) -> list[str]:
    """``a_{x,y}.png`` -> ``["a_x.png", "a_y.png"]`` (one level of braces)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    return [pattern[: match.start()] + option + pattern[match.end() :] for option in match.group(1).split(",")]


def _docstrings_and_comments(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every docstring (module, class, function) and every comment of a Python file."""
    source = path.read_text()
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                found.append((node.body[0].lineno, docstring))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found.append((token.start[0], token.string))
    return found


def _md_references(path: Path) -> list[tuple[int, str]]:
    if path.suffix == ".py":
        texts = _docstrings_and_comments(path)
    else:
        texts = list(enumerate(path.read_text().splitlines(), 1))
    return [(line, reference) for line, text in texts for reference in MD_REFERENCE.findall(text)]


def test_every_markdown_file_the_code_names_exists():
    """Docstrings and comments of the package, adapters, tests, examples, benchmarks and scripts (and the
    configuration files) name Markdown files that exist in the repository."""
    missing = [
        f"{path.relative_to(ROOT)}:{line}: {reference}"
        for path in _text_files({".py", ".sh", ".toml", ".yaml", ".yml"})
        for line, reference in _md_references(path)
        if not _exists(reference, path)
    ]
    assert not missing, "\n".join(missing)
    package = [ref for path in _text_files({".py"}) if "nrnn_plugin" in path.parts for _, ref in _md_references(path)]
    assert "docs/method.md" in package  # the scan sees the package's docstrings


def test_the_reference_scanner_sees_docstrings_and_comments(tmp_path):
    """The scanner finds references in a docstring and a comment (not in code), and tells existing files from
    missing ones."""
    module = tmp_path / "module.py"
    missing = "THEORY" + ".md"
    module.write_text(
        f'"""See ``docs/method.md`` and {missing}."""\n\n'
        'NAME = "ignored.md"  # the table is in results/layers_cpu.md\n\n\n'
        'def f():\n    """Also ``docs/speed.md``."""\n'
    )
    found = {reference: line for line, reference in _md_references(module)}
    assert found == {"docs/method.md": 1, missing: 1, "results/layers_cpu.md": 3, "docs/speed.md": 7}
    near = ROOT / "benchmarks" / "bench_layers.py"
    assert {reference: _exists(reference, near) for reference in found} == {
        "docs/method.md": True,
        missing: False,
        "results/layers_cpu.md": True,
        "docs/speed.md": True,
    }


def test_every_repository_path_the_docs_name_exists():
    """The README and the docs pages name files of the repository (``examples/run.yaml``) that exist."""
    missing = []
    for path in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for reference in REPO_PATH.findall(line):
                if reference.startswith("my_package") or not reference.strip("/"):
                    continue
                if not _exists(reference.rstrip("/"), ROOT / "README.md"):
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {reference}")
    assert not missing, "\n".join(missing)


def test_the_readmes_links_and_pictures_exist():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://", t) and not t.startswith("#")]
    assert "docs/demo/demo_robustness.png" in local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def _defined_in_source(module: str, attributes: list[str]) -> bool | None:
    """Whether a module that cannot be imported here defines ``attributes[0]`` at its top level (read with ast);
    ``None`` when ``module`` is not a module (then the caller tries its parent)."""
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:  # its parent is the module that cannot be imported
        return None
    if spec is None or spec.origin is None:
        return None
    if not attributes:
        return True
    tree = ast.parse(Path(spec.origin).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return attributes[0] in names


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        module = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as error:
            missing = (error.name or "").split(".")[0]
            if missing and missing != parts[0] and importlib.util.find_spec(missing) is None:
                # the module needs a framework this environment lacks (GluonTS has its own): read its source
                defined = _defined_in_source(module, parts[split:])
                if defined is not None:
                    return defined
            continue
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return False
        return True
    return False


def test_every_nrnn_plugin_name_in_the_code_and_docs_resolves():
    """``nrnn_plugin.x.y`` in docstrings, comments, the README and the docs pages names a module or attribute."""
    pytest.importorskip("pytorch_forecasting")  # some names live in the forecasting adapter
    sources = [p for p in _text_files({".py", ".md"}) if p.parts[len(ROOT.parts)] != "tests" or p.suffix == ".md"]
    unresolved = set()
    for path in sources:
        for name in set(DOTTED.findall(path.read_text())):
            if not _resolves(name):
                unresolved.add(f"{path.relative_to(ROOT)}: {name}")
    assert not unresolved, "\n".join(sorted(unresolved))


def test_the_name_resolver_can_fail():
    assert _resolves("nrnn_plugin.runtime.noise_control") and _resolves("nrnn_plugin.layers.fused_lstm")
    assert not _resolves("nrnn_plugin.runtime.no_such_function")
    if importlib.util.find_spec("gluonts") is None:  # a module of a framework that is not installed: from its source
        assert _resolves("nrnn_plugin.adapters.gluonts.forecaster")
        assert not _resolves("nrnn_plugin.adapters.gluonts.no_such_function")
    assert not _resolves("nrnn_plugin.no_such_module.thing")


def test_nothing_points_outside_the_repository():
    """No file names the workplace's shared reference notes or an absolute path of the machine it was written on."""
    forbidden = ["THEORY" + ".md", "DESIGN" + ".md", "/work" + "/", "shared" + "/docs"]
    hits = []
    for path in _text_files():
        text = path.read_text(errors="replace")
        hits.extend(f"{path.relative_to(ROOT)}: {word}" for word in forbidden if word in text)
    assert not hits, "\n".join(hits)


# ---------------------------------------------------------------------------------------------- design page


def test_the_design_page_states_the_rules_the_architecture_test_enforces():
    spec = importlib.util.spec_from_file_location("architecture_rules", ROOT / "tests" / "test_architecture.py")
    assert spec is not None and spec.loader is not None
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    design = (DOCS / "design.md").read_text()
    for framework in rules.FRAMEWORKS:
        assert f"`{framework}`" in design, framework
    for room in rules.LIBRARY_FORBIDDEN:
        assert f"`{room}`" in design, room
    for statement in ("No import cycle", "`noise.py` and `validation.py` import nothing", "Only `runtime.py`"):
        assert statement in design, statement
    assert "400 lines" in design and "`layers/functions.py`" in design
    assert "```mermaid" in design  # the rooms are drawn


def test_ci_runs_exactly_the_readmes_test_command():
    """``.ci/run`` runs the README's second set-up command (set-up, then the whole test suite) and nothing else."""
    readme = (ROOT / "README.md").read_text()
    commands = [line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("bash scripts/setup.sh")]
    assert commands == [
        "bash scripts/setup.sh && .venv/bin/nrnn demo",
        "bash scripts/setup.sh && .venv/bin/python -m pytest",
    ]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    steps = [line for line in ci if line and not line.startswith(("#", "set ", "cd "))]
    assert steps == [commands[1]]
