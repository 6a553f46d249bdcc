#!/usr/bin/env bash
# Set up if needed, then run the whole test suite (unit and integration tests, the Python
# interop and reference checks included), then the Python package's: its wheel built
# (scripts/python-wheel), installed into the torch venv, and its pytest suite run. Extra
# arguments go to `cargo test`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
"$REPO_ROOT/scripts/setup.sh"
export_build_env
cargo test --release --locked --workspace "$@"

# The Python package (crates/train-ckpt-py).
ensure_python_tool pytest 'pytest>=7'
wheel=$("$REPO_ROOT/scripts/python-wheel")
"$TORCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
status=0
TRAIN_CKPT_WHEEL=$wheel "$TORCH_VENV/bin/python" -m pytest -q -p no:cacheprovider crates/train-ckpt-py/tests || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests from crates/train-ckpt-py/tests: the Python package is untested" >&2
    exit 1
fi
exit "$status"
