# Shared by the scripts in this folder: where the libtorch virtualenv lives and how cargo finds it.
# Source it; it defines variables and functions and changes nothing on disk.
#
#   TORCH_VERSION  the PyTorch release tch 0.24 binds (do not change without bumping tch)
#   TORCH_VENV     the virtualenv holding torch; default: <cache>/train/torch-<version>
#                  where <cache> is $XDG_CACHE_HOME or ~/.cache. Shared by every clone and CI run.
#   LIBTORCH       set it to an existing libtorch (a folder with lib/ and include/) to skip the venv.
#
# The names deliberately avoid the TRAIN_ prefix: `train` reads TRAIN_* variables as configuration.

TORCH_VERSION=2.11.0
TORCH_VENV=${TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/train/torch-$TORCH_VERSION}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[setup] %s\n' "$*" >&2; }

# What the venv holds besides torch: the Python peers the tests use (safetensors, numpy), and
# models nobody here wrote, built from code in tests/reference/ (torchvision's resnet18,
# Hugging Face transformers' BERT and GPT-2, with random weights: no model hub is reached).
PYTHON_PACKAGES="torch==$TORCH_VERSION torchvision==0.26.0 transformers==5.24.0 safetensors numpy"

# The marker holds the package list it was made with, and is written only after every pip
# install succeeded: an interrupted install is redone rather than trusted, and a venv made
# with an older list gets the packages added since.
venv_ready() { [ "$(cat "$TORCH_VENV/.train-ready" 2>/dev/null)" = "$PYTHON_PACKAGES" ]; }

ensure_venv() {
    if venv_ready; then
        log "torch $TORCH_VERSION venv ready at $TORCH_VENV"
        return
    fi
    if [ ! -x "$TORCH_VENV/bin/python" ]; then
        log "creating torch $TORCH_VERSION venv at $TORCH_VENV (about 4.5 GB, a few minutes)"
        mkdir -p "$(dirname "$TORCH_VENV")"
        python3 -m venv "$TORCH_VENV"
    else
        log "updating the packages of the venv at $TORCH_VENV"
    fi
    # shellcheck disable=SC2086 # the list is words
    "$TORCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PYTHON_PACKAGES
    printf '%s' "$PYTHON_PACKAGES" >"$TORCH_VENV/.train-ready"
}

# Installs a Python build or test tool into the venv when it is missing: $1 is the module to
# import, $2 the pip requirement. Not in PYTHON_PACKAGES: only the Python package's build
# (scripts/python-wheel) and its tests (scripts/test.sh) need them.
ensure_python_tool() {
    if ! "$TORCH_VENV/bin/python" -c "import $1" 2>/dev/null; then
        log "installing $2 into $TORCH_VENV"
        "$TORCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$2" >&2
    fi
}

# Exports what torch-sys's build script and the tests need.
export_build_env() {
    if [ -n "${LIBTORCH:-}" ]; then
        log "using LIBTORCH=$LIBTORCH"
    else
        ensure_venv
        LIBTORCH=$("$TORCH_VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
        export LIBTORCH
    fi
    # torch-sys checks the libtorch version against the one tch binds; Python torch is the peer in tests.
    if [ -x "$TORCH_VENV/bin/python" ]; then
        export PYTHON_TORCH="$TORCH_VENV/bin/python"
    fi
}

# Installs the Debian package $1 with apt, as root or with password-less sudo. Best effort:
# without either it logs $2 (what to run), and if apt fails it logs $3 (what to do instead).
apt_install() {
    local package=$1 manual=$2 fallback=$3 sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
            log "$manual"
            return
        fi
    fi
    log "installing $package"
    $sudo apt-get install -y -qq "$package" >/dev/null 2>&1 ||
        { $sudo apt-get update -qq && $sudo apt-get install -y -qq "$package" >/dev/null; } ||
        log "$fallback"
}

# Fashion-MNIST from Debian (gzipped IDX files), the default data set. Best effort:
# without root the user is told what to run, and --set data.dir=... points elsewhere.
ensure_dataset() {
    if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
        return
    fi
    apt_install dataset-fashion-mnist \
        "dataset-fashion-mnist is not installed; run: sudo apt-get install dataset-fashion-mnist" \
        "could not install dataset-fashion-mnist; point data.dir at Fashion-MNIST IDX files"
}

# The two CUDA header packages the wheel leaves out and ProcessGroupNCCL.hpp needs
# (cuda_runtime.h includes crt/host_config.h, cuda_fp16.h includes CCCL's nv/target), into the
# venv's nvidia/cu13/include beside the runtime headers the wheel brings. With them build.rs
# compiles NCCL into the distributed shim; without them `train` has Gloo only (the build
# says so). Headers only, about 10 MB, matching the wheel's CUDA 13.0.
ensure_cuda_headers() {
    [ -x "$TORCH_VENV/bin/python" ] || return 0
    local inc
    inc=$("$TORCH_VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "include"))')
    if [ -f "$inc/crt/host_config.h" ] && [ -f "$inc/nv/target" ]; then
        return
    fi
    log "installing CUDA's crt and CCCL headers into the venv (for NCCL in the distributed shim)"
    "$TORCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" ||
        log "could not install nvidia-cuda-crt/nvidia-cuda-cccl: train will be built without NCCL"
}

# Gloo's headers (Debian's libgloo-dev), which the build needs: libtorch's ProcessGroupGloo.hpp
# includes them and the PyPI wheel does not ship them (see shim/distributed.cpp for why the
# 2022 Debian snapshot is safe to compile against). Headers only: nothing links to Debian's
# gloo. Without root the user is told what to run; build.rs names the package too.
ensure_gloo_headers() {
    if [ -f /usr/include/gloo/algorithm.h ] || [ -n "${GLOO_INCLUDE_DIR:-}" ]; then
        return
    fi
    apt_install libgloo-dev \
        "libgloo-dev is not installed and the build needs its headers; run: sudo apt-get install libgloo-dev" \
        "could not install libgloo-dev; set GLOO_INCLUDE_DIR to a folder holding gloo/algorithm.h"
}

# Moves a binary's debug info (line tables) into BINARY.debug beside it, linked by
# .gnu_debuglink: the binary users copy to cluster nodes shrinks to a third, and Rust's
# backtraces still find file and line through the link. Skipped when already done, or
# without binutils' objcopy.
split_debug_info() {
    local bin=$1
    command -v objcopy >/dev/null || { log "objcopy not found: $bin keeps its debug info"; return; }
    if ! readelf -S "$bin" 2>/dev/null | grep -q '\.debug_line'; then
        return
    fi
    objcopy --only-keep-debug "$bin" "$bin.debug"
    objcopy --strip-debug --add-gnu-debuglink="$bin.debug" "$bin"
}
