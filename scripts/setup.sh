#!/usr/bin/env bash
# Create (or update) the project environments: torch's CPU build first, then the package editable with extras.
#
# * .venv: forecasting (pytorch-forecasting + Lightning), darts, neuralforecast, data (offline data sets +
#   plots), tune (Optuna: nrnn tune, nrnn_plugin.tuning), dev (tests). pandas 3.
# * .venv-gluonts: gluonts, data, dev. GluonTS pins pandas<3, which would downgrade pandas for the whole project
#   environment, so it gets its own; the test suite run from .venv runs tests/test_gluonts.py there
#   (tests/test_framework_environments.py). NRNN_SKIP_GLUONTS_ENV=1 skips creating it.
#
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

make_env() {  # make_env DIR EXTRAS
    local dir="$1" extras="$2"
    if [ ! -x "$dir/bin/python" ]; then
        "$PYTHON" -m venv "$dir"
    fi
    local pip=("$dir/bin/python" -m pip --disable-pip-version-check -q)
    # torch first: a dependency that asks for plain "torch" would otherwise pull a multi-GB CUDA build.
    if ! "$dir/bin/python" -c "import torch" 2>/dev/null; then
        "${pip[@]}" install "torch==2.13.0"
    fi
    "${pip[@]}" install -e ".[$extras]" -c <(echo "torch==2.13.0")
}

make_env .venv "forecasting,darts,neuralforecast,data,tune,dev"
if [ "${NRNN_SKIP_GLUONTS_ENV:-0}" != "1" ]; then
    make_env .venv-gluonts "gluonts,data,dev"
fi
# Build the compiled CPU kernels now (cached per machine and torch build), so the first training step is not slowed;
# without a C++ compiler this prints one line and the library runs its Python kernels.
.venv/bin/python -m nrnn_plugin.compiled || true
if [ -x .venv-gluonts/bin/python ]; then
    .venv-gluonts/bin/python -m nrnn_plugin.compiled || true
fi
