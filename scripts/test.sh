#!/usr/bin/env bash
# Set up if needed, then run the whole test suite (unit and integration tests, the Python
# interop and reference checks included). Extra arguments go to `cargo test`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
"$REPO_ROOT/scripts/setup.sh"
export_build_env
cargo test --release --locked --workspace "$@"
