//! Checkpoints, in two layers:
//! - the plan layer ([`plan`]): pure functions that decide what a checkpoint holds and who
//!   writes it ([`plan::save`]), how one is loaded ([`plan::load`], [`train_ckpt::strategy`]) and
//!   which old ones go ([`plan::retention`]); it knows no file and touches no tensor data;
//! - storage, which only carries plans out: the run folder's files ([`store`]), writing
//!   ([`saver`]), loading into a model ([`load`]) or initialising one ([`init`]), importing a
//!   PyTorch optimizer's state ([`import`]), and tch's tensors as bytes ([`tensors`]). The
//!   reading and writing of every kind of file is the `train-ckpt` crate's.
//!
//! The training step hands its state to the plan layer through one narrow interface,
//! [`state::TrainingState`], and knows no file format. The layout of a file is specified in
//! `docs/checkpoint-format.md`.

pub mod config;
mod error;
pub mod import;
pub mod init;
pub mod load;
pub mod plan;
pub mod saver;
pub mod state;
pub mod store;
pub mod tensors;

pub use error::CheckpointError;
pub use init::{init_from, InitOptions, InitReport};
pub use load::{load_into, LoadOutcome};
pub use state::TrainingState;
pub use train_ckpt::strategy::Strategy;
pub use train_ckpt::{
    CheckpointFile, Entry, FileKind, Integrity, Meta, Position, RngState, Role, Verification, FORMAT_NAME,
    FORMAT_VERSION, OPTIMIZER_PREFIX,
};
