//! Feeds arbitrary bytes, as a `.safetensors` file, to the checkpoint reader that resume,
//! `plan` and the `ckpt` tools share (`train_ckpt::CheckpointFile`): opening, the
//! metadata, reading every tensor and verifying must return errors, never panic, hang or
//! allocate beyond what the file's length backs.
//!
//! From the repository root (no libtorch involved: the reader lives in `crates/train-ckpt`):
//!
//! ```text
//! cargo +nightly fuzz run --fuzz-dir fuzz safetensors_reader /tmp/corpus fuzz/corpus/safetensors_reader \
//!     -- -runs=1000000 -max_len=65536
//! ```
//!
//! Seeds: a checkpoint of ours, a weights-only one, a foreign file, foreign files whose header lengths (0x80,
//! 0x280) start like a pickle. The compressed format has its own target in
//! `crates/tckpt/fuzz`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use train_ckpt::{CheckpointFile, FileKind};

/// The reader takes a path (it reads with positioned reads, as on a real file), so each
/// input is written to one scratch file on a RAM-backed folder.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        dir.join(format!("train-fuzz-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    // Other kinds go to their own readers: a zip or a pickle to pytorch-reader, the compressed
    // magic to tckpt (fuzzed by its own target). Kept: content the reader takes for
    // safetensors, among it headers that also start like a pickle (tried as one only when
    // they do not parse), and content of no kind (read as the name says: safetensors).
    if FileKind::sniff(data, data.len() as u64).first().is_some_and(|&k| k != FileKind::Safetensors) {
        return;
    }
    let path = scratch();
    std::fs::write(path, data).expect("the scratch file is writable");
    let Ok(file) = CheckpointFile::open(path) else {
        return;
    };
    let total: u64 = file.entries().iter().map(|e| e.bytes).sum();
    assert!(total <= data.len() as u64, "entries claim more bytes than the file holds");
    let _ = file.meta_or_imported();
    for e in file.entries() {
        let _ = file.read(&e.name);
    }
    let _ = file.verify();
});
