#!/usr/bin/env bash
# The Python tests: builds the package into a virtual environment of its
# own (.venv, made on first use, with maturin, pytest, numpy and pandas) and
# runs pytest. The build shares target/ with `cargo test` (dev profile), so
# after the Rust tests it compiles the binding alone.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CNTSCOPE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
venv="$(cd "$venv" && pwd)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check maturin pytest numpy pandas ml_dtypes
VIRTUAL_ENV="$venv" "$venv/bin/maturin" develop -q --profile dev
exec "$venv/bin/python" -m pytest -q python/tests "$@"
