//! Checkpoints: what a checkpoint file holds and how it is written ([`format`]), the one
//! reader of every kind of checkpoint file ([`source`]), how a run folder keeps them
//! ([`store`], [`saver`], [`retention`]), loading one into a model and optimiser ([`load`]),
//! and the `train ckpt` tools ([`tools`]).
//!
//! The layout of a file is specified in `docs/checkpoint-format.md`.

pub mod format;
pub use train_store::{source, tools};
pub mod load;
pub mod retention;
pub mod saver;
pub mod store;

use std::path::PathBuf;

pub use format::{Meta, Position, RngState, FORMAT_NAME, FORMAT_VERSION, OPTIMIZER_PREFIX};
pub use load::{load_checkpoint_memory_efficient, load_into, load_model_only, LoadOutcome, Strategy};
pub use source::{CheckpointFile, Entry, FileKind, Integrity, Verification};

impl From<train_store::Error> for CheckpointError {
    fn from(e: train_store::Error) -> Self {
        match e {
            train_store::Error::Io { path, source } => Self::Io { path, source },
            train_store::Error::Malformed { path, reason } => Self::Malformed { path, reason },
            train_store::Error::Corrupt { path, tensor } => Self::Corrupt { path, tensor },
            train_store::Error::MetadataCorrupt { path } => Self::MetadataCorrupt { path },
            train_store::Error::Unwritable { path, reason } => Self::Unwritable { path, reason },
        }
    }
}

/// Everything that can go wrong reading or writing a checkpoint; each names the file and,
/// where one is at fault, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
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
    /// The metadata does not match its own checksum: it was altered after it was written.
    #[error("checkpoint {path} is corrupt: its metadata fails its checksum")]
    MetadataCorrupt {
        /// The file.
        path: PathBuf,
    },
    /// The output cannot be written in the format its name asks for.
    #[error("cannot write checkpoint {path}: {reason}")]
    Unwritable {
        /// The file.
        path: PathBuf,
        /// Why, and what to write instead.
        reason: String,
    },
    /// Not enough free disk space to write a checkpoint; nothing was written.
    #[error(
        "not enough disk space in {dir} for a checkpoint: need about {needed} bytes, {available} available; earlier checkpoints are untouched"
    )]
    DiskFull {
        /// The checkpoint folder.
        dir: PathBuf,
        /// Estimated bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The model has a parameter the checkpoint lacks.
    #[error("checkpoint {path} has no tensor `{tensor}`, which the model needs")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The parameter's name.
        tensor: String,
    },
    /// The checkpoint has a weight the model does not.
    #[error("checkpoint {path} holds tensor `{tensor}`, which the model does not have")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// Shape or dtype differ between the checkpoint and the model.
    #[error("checkpoint {path}: tensor `{tensor}` is {found}, the model needs {expected}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What the model has.
        expected: String,
        /// What the file has.
        found: String,
    },
    /// The optimiser rejected the saved state.
    #[error("checkpoint {path}: {source}")]
    Optimizer {
        /// The file.
        path: PathBuf,
        /// The optimiser's complaint (names the tensor).
        source: crate::optim::OptimError,
    },
    /// libtorch failed while moving tensors.
    #[error("checkpoint {path}: libtorch: {source}")]
    Torch {
        /// The file.
        path: PathBuf,
        /// libtorch's error.
        source: tch::TchError,
    },
}
