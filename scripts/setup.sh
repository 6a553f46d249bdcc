#!/usr/bin/env bash
# Idempotent set-up: a virtualenv with torch (libtorch for tch, Python torch for the tests),
# the Fashion-MNIST data set, gloo's headers (libgloo-dev) and the CUDA headers NCCL needs
# for the distributed shim, and a release build of `train`.
#
#   scripts/setup.sh            # everything; fast when already done
#
# Environment: TORCH_VENV moves the venv (default ~/.cache/train/torch-2.11.0, shared by
# every clone); LIBTORCH=<folder> uses an existing libtorch and skips the download.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
export_build_env
ensure_dataset
ensure_gloo_headers
ensure_cuda_headers
log "building train (release)"
# `train`, and `train-ckpt` (the ckpt commands without libtorch, crates/train-ckpt).
cargo build --release --locked --quiet --workspace --bins
for bin in train train-ckpt; do
    split_debug_info "$REPO_ROOT/target/release/$bin"
done
log "ready: $REPO_ROOT/target/release/train"
