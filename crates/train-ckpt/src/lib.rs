//! `train`'s checkpoint files, without libtorch: what a checkpoint's names say ([`names`])
//! and how its metadata is sealed ([`meta`], spec in `docs/checkpoint-format.md`), writing
//! one ([`write`]), the one reader of
//! every kind of checkpoint file ([`source`]: ours, foreign safetensors, `torch.save`
//! files, the compressed format of `tckpt`), the `ckpt` tools ([`tools`], [`cli`]),
//! atomic writes ([`atomic`]), and the rule that chooses how a checkpoint is loaded
//! ([`strategy`]) with the host memory figure it is fed on a CPU ([`host`]).
//!
//! Apart from the `train` crate so that the `train-ckpt` binary, which runs the `ckpt`
//! commands, starts in milliseconds instead of loading libtorch (~0.25 s before `main`),
//! and so that the reader can be fuzzed without libtorch.
#![warn(missing_docs)]

pub mod atomic;
pub mod cli;
pub mod dtype;
mod error;
pub mod host;
pub mod meta;
pub mod names;
pub mod sharded;
pub mod source;
pub mod strategy;
pub mod tools;
pub mod write;

pub use error::{EncodeError, Error};
pub use meta::{Meta, Position, RngState, FORMAT_NAME, FORMAT_VERSION};
pub use names::{optimizer_entry, optimizer_key, Role, OPTIMIZER_PREFIX};
pub use source::{
    Assigned, CheckpointFile, Entry, FileKind, Integrity, OptimizerSummary, ParamGroup, ParamState, PytorchOptimizer,
    Verification,
};
