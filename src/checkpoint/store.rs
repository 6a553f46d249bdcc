//! The checkpoints of a run folder: their names, atomic and durable writes, and choosing
//! which one to resume from.
//!
//! ```text
//! <run>/checkpoints/epoch-0001.safetensors   one per epoch (every_n_epochs); `.tckpt`
//!                                            when memory.compress_checkpoints is on
//! <run>/checkpoints/latest.safetensors       rewritten after every epoch (and every
//!                                            checkpoint.every_n_steps), always with
//!                                            optimiser state
//! <run>/checkpoints/latest.index.json        with sharded state (distributed.shard): the
//! <run>/checkpoints/epoch-0001.index.json    index of a sharded checkpoint, written last,
//!                                            and its shards, one a rank:
//! <run>/checkpoints/latest.step-00000120.rank-00000-of-00002.safetensors
//! <run>/checkpoints/.tmp-*                   in-flight writes; never read
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use train_ckpt::Error as FileError;

use tch::Tensor;
use train_ckpt::atomic::{self, TEMP_PREFIX};
use train_ckpt::names::{COMPRESSED_SUFFIX, PLAIN_SUFFIX};
use train_ckpt::sharded::{shard_stem, Index, INDEX_SUFFIX};
use train_ckpt::write::{emit, write_checkpoint_streamed};
use train_ckpt::{CheckpointFile, EncodeError, Meta};

use super::error::CheckpointError;
pub use super::plan::save::Slot;
use super::tensors;

/// Name of the sub-folder of a run that holds its checkpoints.
pub const DIR_NAME: &str = "checkpoints";
/// Stem of the checkpoint rewritten after every epoch.
pub const LATEST_STEM: &str = "latest";

/// The file name of a checkpoint.
pub fn file_name(slot: Slot, compressed: bool) -> String {
    let suffix = if compressed { COMPRESSED_SUFFIX } else { PLAIN_SUFFIX };
    format!("{}{suffix}", stem(slot))
}

/// The stem of a slot's names (`latest`, `epoch-0003`).
pub fn stem(slot: Slot) -> String {
    match slot {
        Slot::Epoch(e) => format!("epoch-{e:04}"),
        Slot::Latest => LATEST_STEM.into(),
    }
}

/// The index of a sharded checkpoint in this slot.
pub fn index_name(slot: Slot) -> String {
    format!("{}{INDEX_SUFFIX}", stem(slot))
}

/// The slot of a file name, or `None` when it is not a checkpoint of ours; the flag: the
/// compressed format. A sharded checkpoint is its index (never compressed itself); its
/// shard files are not checkpoints on their own.
pub fn parse_name(name: &str) -> Option<(Slot, bool)> {
    let (stem, compressed) = match name.strip_suffix(COMPRESSED_SUFFIX) {
        Some(stem) => (stem, true),
        None => match name.strip_suffix(INDEX_SUFFIX) {
            Some(stem) => (stem, false),
            None => (name.strip_suffix(PLAIN_SUFFIX)?, false),
        },
    };
    if stem == LATEST_STEM {
        return Some((Slot::Latest, compressed));
    }
    let digits = stem.strip_prefix("epoch-")?;
    (digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
        .map(|e| (Slot::Epoch(e), compressed))
}

/// The entries of `dir`, or `None` when it does not exist (yet).
fn entries_of(dir: &Path) -> Result<Option<fs::ReadDir>, CheckpointError> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Io { path: dir.to_path_buf(), source }.into()),
    }
}

/// Checkpoint files in `dir` (not recursive), in no particular order. A missing folder has none.
pub fn list(dir: &Path) -> Result<Vec<(PathBuf, Slot)>, CheckpointError> {
    let Some(entries) = entries_of(dir)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| FileError::Io { path: dir.to_path_buf(), source })?;
        let name = entry.file_name();
        if let Some((slot, _)) = name.to_str().and_then(parse_name) {
            out.push((entry.path(), slot));
        }
    }
    Ok(out)
}

/// Deletes `.tmp-*` files in `dir` (writes cut short by a crash or SIGKILL; they never
/// carry a final name, so nothing reads them). Call only while holding the run's lock.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize, CheckpointError> {
    let Some(entries) = entries_of(dir)? else { return Ok(0) };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) && entry.path().is_file() {
            fs::remove_file(entry.path()).map_err(|source| FileError::Io { path: entry.path(), source })?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The checkpoints of a folder, opened once and sorted for resuming.
#[derive(Default)]
pub struct Candidates {
    /// Best first: the furthest along (epoch, then step), and among equals one with
    /// optimiser state, then `latest`. Each is open, its metadata read and checked.
    pub loadable: Vec<CheckpointFile>,
    /// Files that cannot be opened or are not `train`'s, with the reason, for the caller
    /// to report.
    pub unreadable: Vec<CheckpointError>,
}

/// Opens the checkpoints in `dir` (headers only) and ranks them for resuming.
pub fn candidates(dir: &Path) -> Result<Candidates, CheckpointError> {
    let mut good = Vec::new();
    let mut unreadable = Vec::new();
    for (path, slot) in list(dir)? {
        match CheckpointFile::open(&path) {
            Ok(file) if file.meta().is_some() => good.push((file, slot)),
            Ok(_) => unreadable.push(
                FileError::Malformed {
                    path,
                    reason: "has no train metadata, so it was not written by this run".into(),
                }
                .into(),
            ),
            Err(e) => unreadable.push(e.into()),
        }
    }
    let key = |f: &CheckpointFile| {
        let m = f.meta().expect("kept only with metadata");
        (m.position.epoch, m.position.step, m.has_optimizer_state)
    };
    good.sort_by_key(|(f, slot)| std::cmp::Reverse((key(f), *slot)));
    Ok(Candidates { loadable: good.into_iter().map(|(f, _)| f).collect(), unreadable })
}

/// Writes a checkpoint to `dir/<name>` atomically and durably (see [`train_ckpt::atomic`]).
/// Returns the final path and its size in bytes.
pub fn write_atomic(
    dir: &Path,
    slot: Slot,
    compressed: bool,
    tensors: &[(String, Tensor)],
    meta: &Meta,
) -> Result<(PathBuf, u64), CheckpointError> {
    let written = write_named(dir, &file_name(slot, compressed), compressed, tensors, meta)?;
    // A `latest` of the other encoding (the run switched compression), or a sharded one
    // (the run stopped sharding), is now stale.
    if slot == Slot::Latest {
        remove_if_present(&dir.join(file_name(slot, !compressed)))?;
        remove_if_present(&dir.join(index_name(slot)))?;
    }
    Ok(written)
}

/// Deletes `path`; a missing file is no error.
pub fn remove_if_present(path: &Path) -> Result<(), CheckpointError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(FileError::Io { path: path.to_path_buf(), source: e }.into())
        }
        _ => Ok(()),
    }
}

/// Writes the index of a sharded checkpoint in `slot` atomically and durably, last of its
/// files: the checkpoint exists from then on. A replicated file of the slot's `latest` is
/// then stale and removed. Returns the path and size.
pub fn write_index(dir: &Path, slot: Slot, index: &Index) -> Result<(PathBuf, u64), CheckpointError> {
    let target = dir.join(index_name(slot));
    let json = index.to_json();
    let bytes = atomic::write_atomic(&target, |f| emit(f, json.as_bytes()))
        .map_err(|source| FileError::Io { path: target.clone(), source })?;
    if slot == Slot::Latest {
        for compressed in [false, true] {
            remove_if_present(&dir.join(file_name(slot, compressed)))?;
        }
    }
    Ok((target, bytes))
}

/// Deletes the shard files in `dir` that no index there names (the previous save's, or a
/// save cut short before its index was written). Call only while no save is being
/// written (rank 0, after a save every rank has finished). Returns how many.
pub fn remove_unreferenced_shards(dir: &Path) -> Result<usize, CheckpointError> {
    let mut named = std::collections::HashSet::new();
    let mut shards = Vec::new();
    let Some(entries) = entries_of(dir)? else { return Ok(0) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(INDEX_SUFFIX) {
            // An index that cannot be read keeps every shard: nothing is deleted on a guess.
            let Ok(index) = fs::read(entry.path()).map_err(|e| e.to_string()).and_then(|b| Index::parse(&b)) else {
                return Ok(0);
            };
            named.extend(index.shards.into_iter().map(|s| s.file));
        } else if shard_stem(&name).is_some() {
            shards.push((name, entry.path()));
        }
    }
    let mut removed = 0;
    for (name, path) in shards {
        if !named.contains(&name) {
            remove_if_present(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes a checkpoint file named `name` in `dir` atomically and durably.
pub fn write_named(
    dir: &Path,
    name: &str,
    compressed: bool,
    tensors: &[(String, Tensor)],
    meta: &Meta,
) -> Result<(PathBuf, u64), CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FileError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let target = dir.join(name);
    let bytes = if compressed {
        let host = tensors::on_host(&target, tensors)?;
        // The file system's refusal stays an I/O error; the encoder's is its own.
        atomic::write_atomic_with(&target, |f| tensors::write_compressed(f, &host, meta)).map_err(|e| match e {
            EncodeError::Io(source) => FileError::Io { path: target.clone(), source },
            source => FileError::Encode { path: target.clone(), source },
        })?
    } else {
        // Streamed from the tensors' own memory: no copy of the whole file is built first.
        let host = tensors::on_host(&target, tensors)?;
        let views: Vec<(&str, &tensors::HostTensor)> = host.iter().map(|(n, h)| (n.as_str(), h)).collect();
        let nothing_fails = std::cell::RefCell::new(None);
        write_checkpoint_streamed(&target, &views, meta.to_map(), false, &nothing_fails)?
    };
    Ok((target, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for slot in [Slot::Epoch(1), Slot::Epoch(12345), Slot::Latest] {
            for compressed in [false, true] {
                assert_eq!(parse_name(&file_name(slot, compressed)), Some((slot, compressed)));
            }
        }
    }

    #[test]
    fn temporary_and_foreign_files_are_not_checkpoints() {
        for name in
            [".tmp-abc", ".tmp-latest.safetensors", "epoch-1.safetensors", "epoch-00x1.safetensors", "model.bin"]
        {
            assert_eq!(parse_name(name), None, "{name}");
        }
    }
}
