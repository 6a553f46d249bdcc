//! The torch venv's Python, which both crates' integration tests run reference scripts
//! with. One file, included by `tests/common/mod.rs` of the root crate and of `train-ckpt`.

use std::path::PathBuf;

/// The torch venv's Python: `PYTHON_TORCH` (set by `scripts/lib.sh`'s `export_build_env`),
/// else where scripts/setup.sh puts it. Panics with the fix when there is none: the tests
/// that use it are part of the suite, not optional.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PYTHON_TORCH") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let p = cache.join("train/torch-2.11.0/bin/python");
    assert!(p.exists(), "no Python with torch at {}: run scripts/setup.sh or set PYTHON_TORCH", p.display());
    p
}
