//! Checks a TorchScript archive's tensor storages before libtorch sees them.
//!
//! libtorch's loader trusts the archive: each tensor's storage is made as large as the
//! pickle declares (`numel` times the element size) around the bytes of its record, so a
//! record shorter than that (`data/0` cut to 4 bytes where the tensor needs 96) becomes a
//! storage whose tail is memory that belongs to something else. Training on it read
//! garbage (loss 6.6e32), saved checkpoints of it, and then died with SIGSEGV (the second
//! hardening report, item 4). So, before loading, this reads the archive's pickles
//! (`data.pkl` for the module's attributes, `constants.pkl` for its constants), collects
//! every storage they declare, and refuses the archive unless each record is there and
//! holds at least the declared bytes (the pickles are read by `pickle.rs`).
//!
//! The same look tells a `torch.save` file (a state dict, which has no `code/` folder) from
//! a TorchScript module, so a state dict given as `model.torchscript.path` is named as such
//! instead of reaching libtorch's "checkpoint file is corrupted".

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::pickle::{declared_storages, PickleError, Storage};

/// The largest pickle read (the module's structure and attributes, not its tensors: a few
/// KiB for a resnet, a few hundred KiB for a large transformer).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// What is wrong with an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file is a `torch.save` file, not a TorchScript module.
    #[error(
        "this is a torch.save file ({0}), not a TorchScript module: export the model with torch.jit.script and \
         torch.jit.save (README, \"Models and data\")"
    )]
    NotTorchscript(&'static str),
    /// The archive has no `data.pkl` at its root.
    #[error("the archive has no data.pkl")]
    NoDataPickle,
    /// A pickle is larger than what is read of one.
    #[error("{pickle} is {size} bytes, more than the {MAX_PICKLE_BYTES} read")]
    PickleTooLarge {
        /// `data.pkl` or `constants.pkl`.
        pickle: &'static str,
        /// Its uncompressed size.
        size: u64,
    },
    /// A pickle could not be read out of the archive.
    #[error("cannot read {pickle}: {source}")]
    Unreadable {
        /// `data.pkl` or `constants.pkl`.
        pickle: &'static str,
        /// Why (the zip reader's error as an I/O error, with its text).
        source: std::io::Error,
    },
    /// A pickle is not one TorchScript writes.
    #[error("{pickle}: {source}")]
    Pickle {
        /// `data.pkl` or `constants.pkl`.
        pickle: &'static str,
        /// What is wrong in it.
        source: PickleError,
    },
    /// A pickle declares a storage the archive has no record of.
    #[error("{pickle} declares storage `{key}` of {bytes} bytes, but the archive has no record {record}")]
    MissingRecord {
        /// `data.pkl` or `constants.pkl`.
        pickle: &'static str,
        /// The storage's key.
        key: String,
        /// Its declared size.
        bytes: u64,
        /// The record looked for.
        record: String,
    },
    /// A storage's record holds fewer bytes than its pickle declares.
    #[error(
        "record {record} holds {have} bytes, but {pickle} declares {} ({} elements of {} bytes): \
         the archive was cut or altered",
        storage.bytes, storage.numel, storage.element_size
    )]
    ShortRecord {
        /// `data.pkl` or `constants.pkl`.
        pickle: &'static str,
        /// The record.
        record: String,
        /// Bytes it holds.
        have: u64,
        /// What the pickle declares.
        storage: Storage,
    },
}

/// Checks that the TorchScript archive at `path` is one, and that every storage its pickles
/// declare has a record holding at least the declared bytes. A file that is not a zip
/// archive at all is left to libtorch to report.
pub fn check(path: &Path) -> Result<(), ArchiveError> {
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    if n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        // Before 1.6, torch.save wrote a bare pickle (PROTO 2); TorchScript never did.
        return Err(ArchiveError::NotTorchscript("a legacy pickle"));
    }
    let Ok(file) = std::fs::File::open(path) else { return Ok(()) };
    let Ok(mut zip) = zip::ZipArchive::new(file) else { return Ok(()) };
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    let Some(root) = names.iter().filter_map(|n| n.strip_suffix("data.pkl")).find(|r| r.is_empty() || r.ends_with('/'))
    else {
        return Err(ArchiveError::NoDataPickle);
    };
    let root = root.to_string();
    if !names.iter().any(|n| n.starts_with(&format!("{root}code/"))) {
        return Err(ArchiveError::NotTorchscript("a zip archive with data.pkl and no code/"));
    }
    let sizes: HashMap<&str, u64> =
        names.iter().filter_map(|n| Some((n.as_str(), zip.by_name(n).ok()?.size()))).collect();
    for (pickle, folder) in [("data.pkl", "data"), ("constants.pkl", "constants")] {
        let name = format!("{root}{pickle}");
        let Some(&size) = sizes.get(name.as_str()) else { continue };
        if size > MAX_PICKLE_BYTES {
            return Err(ArchiveError::PickleTooLarge { pickle, size });
        }
        let unreadable = |e: std::io::Error| ArchiveError::Unreadable { pickle, source: e };
        let mut bytes = Vec::with_capacity(size as usize);
        zip.by_name(&name)
            .map_err(|e| unreadable(e.into()))?
            .take(MAX_PICKLE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        for storage in declared_storages(&bytes).map_err(|source| ArchiveError::Pickle { pickle, source })? {
            let record = format!("{root}{folder}/{}", storage.key);
            match sizes.get(record.as_str()) {
                None => {
                    return Err(ArchiveError::MissingRecord { pickle, key: storage.key, bytes: storage.bytes, record })
                }
                Some(&have) if have < storage.bytes => {
                    return Err(ArchiveError::ShortRecord { pickle, record, have, storage })
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}
