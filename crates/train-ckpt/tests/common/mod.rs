//! What the integration tests share: the torch venv's Python, the reference scripts and the
//! `train-ckpt` binary.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::Command;

mod venv;
pub use venv::python;

/// Runs `tests/reference/SCRIPT OUT_DIR` (at the repository root) with [`python`] into a
/// fresh folder `name` under the target directory, and returns the folder.
pub fn reference_files(script: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference").join(script);
    let out = Command::new(python()).arg(&script).arg(&dir).output().expect("python runs");
    assert!(out.status.success(), "{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
    dir
}

/// Runs the `train-ckpt` binary in `dir` with output to pipes (what a job script or a CI log
/// sees).
pub fn tckpt(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_train-ckpt")).current_dir(dir).args(args).output().unwrap()
}
