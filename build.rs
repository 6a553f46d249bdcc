//! Bakes libtorch's library folder into the binary's rpath, so `train` runs without
//! `LD_LIBRARY_PATH`. torch-sys (a direct dependency for this reason) exports the folder
//! it linked against as `DEP_TCH_LIBTORCH_LIB`.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
