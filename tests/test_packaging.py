"""The built wheel: installs nrnn_plugin.adapters (and its forecasting subpackage) as subpackages, never a
top-level ``adapters``; ships ``py.typed``; declares no entry points of its own (the shipped adapters are default
plugins registered by module path) and works in a fresh environment."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        cwd=out,
    )
    (path,) = out.glob("nrnn_plugin-*.whl")
    return path


def test_wheel_contents_map_adapters_into_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "nrnn_plugin/adapters/__init__.py",
        "nrnn_plugin/adapters/torch_adapter.py",
        "nrnn_plugin/adapters/forecasting/classes.py",
        "nrnn_plugin/adapters/frameworks.py",
        "nrnn_plugin/adapters/darts.py",
        "nrnn_plugin/adapters/neuralforecast.py",
        "nrnn_plugin/adapters/gluonts.py",
        "nrnn_plugin/integrations/distributions.py",
        "nrnn_plugin/layers/recurrent.py",
        "nrnn_plugin/app/cli.py",
        "nrnn_plugin/plugins/manager.py",
        "nrnn_plugin/py.typed",
    ):
        assert expected in names, expected
    assert not any(name.startswith(("adapters/", "tests/", "docs/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[nrnn_plugin]" not in text  # entry points are for third parties only
    assert "nrnn = nrnn_plugin.app.cli:main" in text


def test_wheel_installs_and_imports_in_a_fresh_environment(wheel, tmp_path):
    """A new venv gets only the wheel; torch and pluggy come from this environment through a .pth path, so
    nothing but the wheel can provide nrnn_plugin (the project checkout is not on the path)."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-compile",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    assert not (target / "adapters").exists()
    # dependencies (torch, pluggy, ...) from this interpreter's site-packages, appended after the wheel
    (target / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = textwrap.dedent(
        f"""
        import importlib.metadata as md, sys
        import nrnn_plugin, nrnn_plugin.adapters, nrnn_plugin.adapters.torch_adapter
        assert nrnn_plugin.__file__.startswith({str(target)!r}), nrnn_plugin.__file__
        from nrnn_plugin.plugins import plugin_report
        shipped = {{entry["name"] for entry in plugin_report() if entry["source"] == "shipped" and entry["loaded"]}}
        assert shipped == {{"torch", "nrnn", "forecasting", "frameworks"}}, shipped
        import torch
        lstm = nrnn_plugin.register_noise(torch.nn.LSTM(2, 3), additive=0.1)
        assert type(lstm).__name__ == "NoisyLSTM"
        try:
            import adapters
        except ImportError:
            pass
        else:
            raise AssertionError("a top-level 'adapters' package is importable: " + str(adapters))
        """
    )
    subprocess.run([str(python), "-c", code], check=True, cwd=tmp_path)
