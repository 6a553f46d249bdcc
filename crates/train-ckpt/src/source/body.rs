//! Where an open checkpoint's tensor bytes come from, and reading them: positioned reads of
//! a plain file (checked against its per-tensor checksums), the compressed format's
//! decoder (which checks its own), or a PyTorch archive.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use super::entry::Entry;
use crate::error::Error;
use crate::meta::checksum_hex;

/// Where an open checkpoint's tensor bytes come from.
pub(super) enum Body {
    /// A plain file, read with positioned reads (no mapping: only what is asked for is read,
    /// and nothing stays resident in this process afterwards).
    Plain { file: File, data_start: u64 },
    /// The compressed format, whose reader decodes (and checks) one tensor at a time.
    Compressed(Box<Mutex<tckpt::Reader<File>>>),
    /// A PyTorch archive.
    Pytorch(HashMap<String, pytorch_reader::Tensor>),
    /// A sharded checkpoint's index: its tensors are read from its shards, which
    /// `CheckpointFile` holds.
    Index,
}

impl Body {
    /// Reads tensor `e` of the file at `path` into `out` (exactly its size), checking it
    /// against `checksums` (a plain file of ours) or the compressed format's own.
    pub(super) fn read_into(
        &self,
        path: &Path,
        e: &Entry,
        checksums: Option<&HashMap<String, String>>,
        out: &mut [u8],
    ) -> Result<(), Error> {
        let name = e.name.as_str();
        let malformed = |reason: String| Error::Malformed { path: path.to_path_buf(), reason };
        match self {
            Body::Plain { file, data_start } => {
                std::os::unix::fs::FileExt::read_exact_at(file, out, data_start + e.begin)
                    .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
                if let Some(sums) = checksums {
                    if checksum_hex(out) != sums[name] {
                        return Err(Error::Corrupt { path: path.to_path_buf(), tensor: name.to_string() });
                    }
                }
                Ok(())
            }
            Body::Compressed(reader) => reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .read_tensor_into(name, out)
                .map_err(|err| codec_error(path, name, err)),
            Body::Index => Err(malformed(format!("tensor `{name}` is read through the index's shards"))),
            Body::Pytorch(tensors) => {
                let bytes = tensors[name].read().map_err(|err| malformed(format!("tensor `{name}`: {err}")))?;
                if bytes.len() != out.len() {
                    return Err(malformed(format!("tensor `{name}` holds {} bytes, not {}", bytes.len(), out.len())));
                }
                out.copy_from_slice(&bytes);
                Ok(())
            }
        }
    }
}

/// Bytes a plain file's tensor is read at a time to be checked ([`verify_plain`]).
const VERIFY_PIECE_BYTES: usize = 8 << 20;

/// Reads tensor `e` of a plain file a piece at a time and checks it against its checksum
/// (where the file has checksums), holding no buffer of the whole tensor.
pub(super) fn verify_plain(
    file: &File,
    data_start: u64,
    path: &Path,
    e: &Entry,
    checksums: Option<&HashMap<String, String>>,
) -> Result<(), Error> {
    scan_plain(file, data_start, path, e, checksums, 0, &mut [])
}

/// Reads bytes `offset .. offset + out.len()` of tensor `e` of a plain file into `out`,
/// checking the whole tensor against its checksum: the tensor is read a piece at a time and
/// hashed, and the asked range copied out as it passes (no buffer of the whole tensor).
pub(super) fn read_plain_range(
    file: &File,
    data_start: u64,
    path: &Path,
    e: &Entry,
    checksums: Option<&HashMap<String, String>>,
    offset: u64,
    out: &mut [u8],
) -> Result<(), Error> {
    if checksums.is_none() {
        return std::os::unix::fs::FileExt::read_exact_at(file, out, data_start + e.begin + offset)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source });
    }
    scan_plain(file, data_start, path, e, checksums, offset, out)
}

/// Reads all of tensor `e` a piece at a time, hashing it, copies its bytes `offset ..
/// offset + out.len()` into `out` as they pass, and checks the checksum, if any.
fn scan_plain(
    file: &File,
    data_start: u64,
    path: &Path,
    e: &Entry,
    checksums: Option<&HashMap<String, String>>,
    offset: u64,
    out: &mut [u8],
) -> Result<(), Error> {
    let end = offset + out.len() as u64;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut piece = vec![0u8; VERIFY_PIECE_BYTES.min(e.bytes as usize)];
    let mut done = 0u64;
    while done < e.bytes {
        let n = (e.bytes - done).min(piece.len() as u64) as usize;
        std::os::unix::fs::FileExt::read_exact_at(file, &mut piece[..n], data_start + e.begin + done)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        hasher.update(&piece[..n]);
        let (lo, hi) = (done.max(offset), (done + n as u64).min(end));
        if lo < hi {
            out[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&piece[(lo - done) as usize..(hi - done) as usize]);
        }
        done += n as u64;
    }
    match checksums {
        Some(sums) if format!("{:016x}", hasher.digest()) != sums[e.name.as_str()] => {
            Err(Error::Corrupt { path: path.to_path_buf(), tensor: e.name.clone() })
        }
        _ => Ok(()),
    }
}

/// Decodes tensor `name` of a compressed file a few chunks at a time, checking every
/// checksum, and copies its bytes `offset .. offset + out.len()` into `out`.
pub(super) fn read_compressed_range(
    reader: &Mutex<tckpt::Reader<File>>,
    path: &Path,
    name: &str,
    offset: u64,
    out: &mut [u8],
) -> Result<(), Error> {
    let mut reader = reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    reader.read_range_into(name, offset, out).map_err(|err| codec_error(path, name, err))
}

/// Decodes several tensors of a compressed file in parallel, across tensors as well as
/// within them, each into its buffer (exactly its size: the caller checked).
pub(super) fn read_compressed(
    reader: &Mutex<tckpt::Reader<File>>,
    path: &Path,
    targets: &mut [(&str, &mut [u8])],
) -> Result<(), Error> {
    let mut reader = reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    reader.read_tensors_into(targets).map_err(|err| {
        // The error names the damaged tensor among the many read.
        let tensor = match &err {
            tckpt::Error::ChecksumMismatch { name, .. } | tckpt::Error::Corrupt { name, .. } => name.clone(),
            _ => targets.first().map(|(n, _)| n.to_string()).unwrap_or_default(),
        };
        codec_error(path, &tensor, err)
    })
}

/// Decodes the tensors `names` of a compressed file and checks their checksums, a few
/// chunks at a time (no buffer of a whole tensor).
pub(super) fn verify_compressed(reader: &Mutex<tckpt::Reader<File>>, path: &Path, names: &[&str]) -> Result<(), Error> {
    let mut reader = reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    reader.verify_tensors(names).map_err(|err| {
        let tensor = match &err {
            tckpt::Error::ChecksumMismatch { name, .. } | tckpt::Error::Corrupt { name, .. } => name.clone(),
            _ => names.first().map(|n| n.to_string()).unwrap_or_default(),
        };
        codec_error(path, &tensor, err)
    })
}

/// A compressed-format read error as ours: damaged data is [`Error::Corrupt`]
/// (naming the tensor), anything else malformed.
fn codec_error(path: &Path, tensor: &str, err: tckpt::Error) -> Error {
    match err {
        tckpt::Error::ChecksumMismatch { .. } | tckpt::Error::Corrupt { .. } => {
            Error::Corrupt { path: path.to_path_buf(), tensor: tensor.to_string() }
        }
        other => Error::Malformed { path: path.to_path_buf(), reason: other.to_string() },
    }
}
