//! The crate's error: what can go wrong reading or writing a checkpoint file, each naming
//! the file and, where one is at fault, the tensor.

use std::path::PathBuf;

use safetensors::tensor::Dtype;

/// What can go wrong reading or writing a checkpoint file; each names the file and, where
/// one is at fault, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file system refused.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a checkpoint this version can read.
    #[error("checkpoint {path} is not readable: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor's bytes do not match its checksum: the file was damaged after it was written.
    #[error("checkpoint {path} is corrupt: tensor `{tensor}` fails its checksum")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The damaged tensor.
        tensor: String,
    },
    /// The output cannot be written in the format its name asks for.
    #[error("cannot write checkpoint {path}: {reason}")]
    Unwritable {
        /// The file.
        path: PathBuf,
        /// Why, and what to write instead.
        reason: String,
    },
    /// A PyTorch optimizer's state cannot be matched to the model's parameters.
    #[error("the optimizer state in {path} does not fit the model: {reason}")]
    OptimizerMismatch {
        /// The file.
        path: PathBuf,
        /// The first conflict.
        reason: String,
    },
    /// The compressed format's writer could not encode the tensors (a dtype it has no
    /// encoding for, a codec failure): told apart from the file system's refusals
    /// ([`Error::Io`]), which the same write can also meet.
    #[error("checkpoint {path}: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// What the encoder reported.
        source: EncodeError,
    },
    /// The metadata does not match its own checksum: it was altered after it was written.
    #[error("checkpoint {path} is corrupt: its metadata fails its checksum")]
    MetadataCorrupt {
        /// The file.
        path: PathBuf,
    },
}

/// Why tensors could not be written in the compressed format. Its text is the cause alone:
/// [`Error::Encode`] names the file.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The compressed format's writer refused or failed (its error names the tensor).
    #[error("{0}")]
    Codec(#[from] tckpt::Error),
    /// A tensor's dtype has no compressed encoding (the unsigned 16- to 64-bit types).
    #[error("tensor `{tensor}`: dtype {dtype:?} has no compressed encoding")]
    NoCompressedDtype {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
    },
    /// The file system refused (flushing, or reading back the file's size).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
