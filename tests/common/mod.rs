//! Helpers shared by the integration tests: the real binary, small generated data sets,
//! and the Python peer (the torch virtualenv made by scripts/setup.sh).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use train::data::idx::encode_idx;

/// The `train` binary under test, run with a clean `TRAIN_*` environment in `cwd`.
pub fn train(cwd: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("train").expect("binary built");
    cmd.current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("TRAIN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// Writes a small learnable image classification set in IDX format (gzipped, as Debian
/// ships Fashion-MNIST): class `c` lights a 4x4 block at a class-specific place, plus noise.
pub fn make_dataset(dir: &Path, train: usize, val: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (split, n) in [("train", train), ("t10k", val)] {
        let mut images = vec![0u8; n * 28 * 28];
        let mut labels = vec![0u8; n];
        for i in 0..n {
            let c = (next() % 10) as usize;
            labels[i] = c as u8;
            let img = &mut images[i * 784..(i + 1) * 784];
            for p in img.iter_mut() {
                *p = (next() % 64) as u8;
            }
            let (r0, c0) = (4 + (c / 5) * 12, 2 + (c % 5) * 5);
            for r in r0..r0 + 4 {
                for col in c0..c0 + 4 {
                    img[r * 28 + col] = 200 + (next() % 56) as u8;
                }
            }
        }
        write_gz(&dir.join(format!("{split}-images-idx3-ubyte.gz")), &encode_idx(&[n, 28, 28], &images));
        write_gz(&dir.join(format!("{split}-labels-idx1-ubyte.gz")), &encode_idx(&[n], &labels));
    }
}

fn write_gz(path: &Path, bytes: &[u8]) {
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap();
}

/// `--set` arguments for a quick run on the data set in `data`.
pub fn quick_sets(data: &Path) -> Vec<String> {
    vec![
        format!("data.dir={}", data.display()),
        "model.mlp.hidden=[32]".into(),
        "training.batch_size=32".into(),
        "run.device=cpu".into(),
    ]
}

/// Adds each element of `sets` as a `--set` argument.
pub fn with_sets<'a, S: AsRef<std::ffi::OsStr>>(
    cmd: &'a mut assert_cmd::Command,
    sets: &[S],
) -> &'a mut assert_cmd::Command {
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

#[path = "../../crates/train-ckpt/tests/common/venv.rs"]
mod venv;
pub use venv::python;

/// Runs a Python script with the torch venv; panics with its stderr on failure.
pub fn run_python(script: &Path, args: &[&str]) -> String {
    let out = Command::new(python()).arg(script).args(args).output().expect("python runs");
    assert!(out.status.success(), "{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The repository root (for configs/ and tests/reference/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
