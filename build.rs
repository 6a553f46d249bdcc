//! 1. Bakes libtorch's library folder into the binary's rpath, so `train` runs without
//!    `LD_LIBRARY_PATH`. torch-sys (a direct dependency for this reason) exports the folder
//!    it linked against as `DEP_TCH_LIBTORCH_LIB`.
//! 2. Keeps libtorch_cuda.so among the binary's libraries (see below).
//! 3. Compiles the shims (the few libtorch calls tch does not bind) against the headers of
//!    that same libtorch: `shim/cuda_memory.cpp` (allocator statistics),
//!    `shim/script_module.cpp` (TorchScript modules with their buffers and named inputs) and
//!    `shim/error.cpp` (the error convention every shim follows, `shim/error.h`).
//! 4. Compiles `shim/distributed.cpp` (c10d: TCPStore, ProcessGroupGloo, ProcessGroupNCCL)
//!    against them too. Gloo's own headers come from Debian's `libgloo-dev` (the wheel does not
//!    ship them); NCCL is compiled in where libtorch has its CUDA library and the CUDA and
//!    NCCL headers are found (the wheel's `nvidia/*/include`, or `$CUDA_HOME/include`).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    for file in ["shim/error.h", "shim/error.cpp", "shim/cuda_memory.cpp", "shim/script_module.cpp"] {
        println!("cargo:rerun-if-changed={file}");
    }
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB"));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // libtorch's CUDA backend registers itself from libtorch_cuda.so's static initialisers.
    // Nothing in `train` calls into that library, so the linker's --as-needed (rustc's
    // default) drops the `-ltorch_cuda` torch-sys asks for, and libtorch then sees no GPU
    // ("libtorch sees 0 CUDA device(s)" on a machine with one). PyTorch's own CMake config
    // links it with --no-as-needed for the same reason; so do we. `scripts/gpu-check` checks
    // that the binary loads it.
    // Only the `train` binary: `train-ckpt` needs no libtorch at all.
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-bin=train=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg-bin=train=-ltorch_cuda");
        println!("cargo:rustc-link-arg-bin=train=-Wl,--as-needed");
    }
    let include = lib.parent().expect("libtorch's lib folder has a parent").join("include");
    cc::Build::new()
        .cpp(true)
        .file("shim/cuda_memory.cpp")
        .file("shim/script_module.cpp")
        .file("shim/error.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        // No DWARF for a file that includes half of libtorch's headers (megabytes of it).
        .debug(false)
        .compile("train_shim");
    distributed_shim(&lib, &include);
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// Folders searched for gloo's headers (`gloo/algorithm.h`): `GLOO_INCLUDE_DIR`, then
/// where `libgloo-dev` puts them.
fn gloo_include() -> PathBuf {
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    let candidates: Vec<PathBuf> = std::env::var_os("GLOO_INCLUDE_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/include")])
        .collect();
    for dir in &candidates {
        if dir.join("gloo/algorithm.h").exists() {
            return dir.clone();
        }
    }
    panic!(
        "gloo's headers (gloo/algorithm.h) were not found in {candidates:?}. libtorch's ProcessGroupGloo.hpp needs \
         them and the PyPI wheel does not ship them: install Debian's libgloo-dev (apt-get install libgloo-dev; \
         scripts/setup.sh does it), or set GLOO_INCLUDE_DIR to a folder holding gloo/"
    );
}

/// The include folders holding CUDA's runtime headers (`cuda_runtime_api.h`, and the
/// `crt/host_config.h` and CCCL's `nv/target` they include, which the wheel leaves out:
/// `scripts/lib.sh` adds them from PyPI's nvidia-cuda-crt and nvidia-cuda-cccl, or a CUDA
/// toolkit has them) and `nccl.h` for this libtorch, when all are found: the wheel's `site-packages/nvidia/*/include`, then `$CUDA_HOME/include`.
fn cuda_nccl_includes(lib: &Path) -> Option<Vec<PathBuf>> {
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let mut dirs = Vec::new();
    if let Some(site) = lib.parent().and_then(Path::parent) {
        if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
            let mut found: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("include")).collect();
            found.sort();
            dirs.extend(found);
        }
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        dirs.push(PathBuf::from(home).join("include"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    let has = |name: &str| dirs.iter().any(|d| d.join(name).exists());
    (has("cuda_runtime_api.h") && has("crt/host_config.h") && has("nv/target") && has("nccl.h"))
        .then(|| dirs.into_iter().filter(|d| d.exists()).collect())
}

fn distributed_shim(lib: &Path, include: &Path) {
    println!("cargo:rerun-if-changed=shim/distributed.cpp");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("shim/distributed.cpp")
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .include(gloo_include())
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .warnings(false)
        .debug(false);
    let nccl = if lib.join("libtorch_cuda.so").exists() { cuda_nccl_includes(lib) } else { None };
    match nccl {
        Some(dirs) => {
            for d in dirs {
                build.include(d);
            }
            build.define("USE_C10D_NCCL", None).define("TRAIN_WITH_NCCL", None);
            // ProcessGroupNCCL lives in libtorch_cuda.so; as-needed drops it where unused.
            println!("cargo:rustc-link-lib=dylib=torch_cuda");
        }
        None => println!(
            "cargo:warning=building without NCCL: libtorch_cuda.so, CUDA's crt/host_config.h and nv/target \
             (scripts/setup.sh installs them; or set CUDA_HOME) or nccl.h not found, so distributed.backend nccl \
             will be refused"
        ),
    }
    build.compile("train_dist_shim");
}
