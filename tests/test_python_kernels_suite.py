"""The training stack on the Python kernels, what a machine without a C++ compiler runs.

The kernel tests themselves run on both back-ends (the ``kernel_backend`` fixture). This test runs the files that
train whole models (Lightning, pytorch-forecasting, the regularizer, noise injection, the NRNN, inference,
reproducibility, torch.compile) once more in a child process with ``NRNN_KERNELS=python``, so every feature is
proved on the fallback path too. It found that ``NoiseConfig.from_env`` rejected ``NRNN_KERNELS`` as an unknown
noise variable. Skipped where the session itself already runs on the Python kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = (
    "tests/test_lightning.py",
    "tests/test_forecasting.py",
    "tests/test_regularizer.py",
    "tests/test_noise_injection.py",
    "tests/test_nrnn.py",
    "tests/test_inference.py",
    "tests/test_reproducibility.py",
    "tests/test_compile_export.py",
)


def test_the_training_stack_passes_on_the_python_kernels():
    if os.environ.get("NRNN_KERNELS", "").strip().lower() == "python":
        pytest.skip("this session runs on the Python kernels already")
    env = {**os.environ, "NRNN_KERNELS": "python"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-p", "no:randomly", *FILES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in summary and "failed" not in summary, summary
