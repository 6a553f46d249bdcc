//! `train`'s checkpoint files, without libtorch: what a checkpoint holds and how its
//! metadata is sealed ([`format`], spec in `docs/checkpoint-format.md`), the one reader of
//! every kind of checkpoint file ([`source`]: ours, foreign safetensors, `torch.save`
//! files, the compressed format of `train-ckpt`), the `ckpt` tools ([`tools`], [`cli`]), and
//! atomic writes ([`atomic`]).
//!
//! Apart from the `train` crate so that the `train-ckpt` binary, which runs the `ckpt`
//! commands, starts in milliseconds instead of loading libtorch (~0.25 s before `main`),
//! and so that the reader can be fuzzed without libtorch.
#![warn(missing_docs)]

pub mod atomic;
pub mod cli;
pub mod dtype;
pub mod format;
pub mod source;
pub mod tools;

use std::path::PathBuf;

pub use format::{
    optimizer_entry, optimizer_key, Meta, Position, RngState, Role, FORMAT_NAME, FORMAT_VERSION, OPTIMIZER_PREFIX,
};
pub use source::{
    Assigned, CheckpointFile, Entry, FileKind, Integrity, OptimizerSummary, ParamGroup, ParamState, PytorchOptimizer,
    Verification,
};

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
    /// The metadata does not match its own checksum: it was altered after it was written.
    #[error("checkpoint {path} is corrupt: its metadata fails its checksum")]
    MetadataCorrupt {
        /// The file.
        path: PathBuf,
    },
}
