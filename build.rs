//! 1. Bakes libtorch's library folder into the binary's rpath, so `train` runs without
//!    `LD_LIBRARY_PATH`. torch-sys (a direct dependency for this reason) exports the folder
//!    it linked against as `DEP_TCH_LIBTORCH_LIB`.
//! 2. Keeps libtorch_cuda.so among the binary's libraries (see below).
//! 3. Compiles the shims (the few libtorch calls tch does not bind) against the headers of
//!    that same libtorch: `shim/cuda_memory.cpp` (allocator statistics) and
//!    `shim/script_module.cpp` (TorchScript modules with their buffers and named inputs).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=shim/cuda_memory.cpp");
    println!("cargo:rerun-if-changed=shim/script_module.cpp");
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
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        // No DWARF for a file that includes half of libtorch's headers (megabytes of it).
        .debug(false)
        .compile("train_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
