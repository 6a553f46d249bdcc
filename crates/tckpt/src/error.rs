//! The crate's error type.

use std::io;

/// Everything that can go wrong writing or reading a checkpoint. Variants about a file's
/// contents carry the tensor name or the byte offsets involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying reader or writer failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with the format's magic bytes.
    #[error("not a train-ckpt file: the first 8 bytes are not the format's magic")]
    NotACheckpoint,
    /// The file is shorter than its header and trailer, or than its trailer says.
    #[error("truncated file: {len} bytes, but at least {need} are needed")]
    Truncated {
        /// The file's length in bytes.
        len: u64,
        /// The length the header or trailer implies.
        need: u64,
    },
    /// The last 8 bytes are not the trailer magic: the file was cut short or overwritten.
    #[error("bad trailer: the last 8 bytes are not the trailer magic (file truncated or damaged)")]
    BadTrailer,
    /// The file was written by a newer (or invalid) version of the format.
    #[error("unsupported format version {found} (this reader reads versions 1 to {supported})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this reader understands.
        supported: u32,
    },
    /// The reserved flags word is not zero: a feature this reader does not know is in use.
    #[error("unsupported flags {flags:#010x} (versions 1 to 3 define none)")]
    UnsupportedFlags {
        /// The flags word in the file.
        flags: u32,
    },
    /// The trailer places the index outside the file.
    #[error(
        "index at offset {offset} with length {len} does not end where the trailer starts (file is {file_len} bytes)"
    )]
    IndexOutOfBounds {
        /// The index offset from the trailer.
        offset: u64,
        /// The index length from the trailer.
        len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// The index is longer than [`crate::MAX_INDEX_LEN`].
    #[error("index of {len} bytes exceeds the limit of {max}")]
    IndexTooLarge {
        /// The index length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The index bytes do not match the checksum in the trailer.
    #[error("index checksum mismatch: trailer says {expected:016x}, index hashes to {found:016x}")]
    IndexChecksum {
        /// The checksum stored in the trailer.
        expected: u64,
        /// The checksum of the bytes read.
        found: u64,
    },
    /// The index is not the JSON document the format specifies.
    #[error("index is not valid: {0}")]
    IndexJson(#[from] serde_json::Error),
    /// More tensors than [`crate::MAX_TENSORS`].
    #[error("{count} tensors exceed the limit of {max}")]
    TooManyTensors {
        /// The number of tensors.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two tensors share a name.
    #[error("tensor {name:?} appears twice")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A tensor's entry is inconsistent (shape, lengths, chunks, offsets, checksum text).
    #[error("tensor {name:?}: {reason}")]
    InvalidTensor {
        /// The tensor's name.
        name: String,
        /// What is wrong, with the numbers involved.
        reason: String,
    },
    /// No tensor of that name is in the file.
    #[error("no tensor named {name:?}")]
    TensorNotFound {
        /// The name asked for.
        name: String,
    },
    /// The data passed to the writer, or the buffer passed to the reader, has the wrong length.
    #[error("tensor {name:?}: {expected} bytes expected for its dtype and shape, got {got}")]
    LengthMismatch {
        /// The tensor's name.
        name: String,
        /// The length its dtype and shape imply.
        expected: u64,
        /// The length given.
        got: u64,
    },
    /// A compressed plane could not be decoded, or decoded to the wrong length.
    #[error("tensor {name:?}: chunk {chunk}, plane {plane} at offset {offset} does not decode: {reason}")]
    Corrupt {
        /// The tensor's name.
        name: String,
        /// The chunk's position in the tensor.
        chunk: usize,
        /// The plane's position in the chunk.
        plane: usize,
        /// The plane's byte offset in the file.
        offset: u64,
        /// What the decoder reported.
        reason: String,
    },
    /// A tensor's decoded bytes do not hash to the checksum in the index.
    #[error("tensor {name:?}: checksum mismatch (index says {expected:016x}, data hashes to {found:016x})")]
    ChecksumMismatch {
        /// The tensor's name.
        name: String,
        /// The checksum stored in the index.
        expected: u64,
        /// The checksum of the decoded bytes.
        found: u64,
    },
    /// zstd failed to compress (out of memory, in practice).
    #[error("tensor {name:?}: compression failed: {source}")]
    Compress {
        /// The tensor's name.
        name: String,
        /// zstd's error.
        source: io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for [`Error::InvalidTensor`].
pub(crate) fn invalid(name: &str, reason: impl Into<String>) -> Error {
    Error::InvalidTensor { name: name.to_owned(), reason: reason.into() }
}
