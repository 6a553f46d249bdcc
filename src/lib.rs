//! `train`: a training launcher for PyTorch-style models (libtorch through `tch`) that loads
//! and saves checkpoints with GPU memory in mind.
//!
//! The binary is a thin shell over this library:
//! - [`config`]: the schema, built-in profiles and layered resolution with provenance;
//! - [`data`], [`model`], [`optim`], [`training`]: data sets, models, optimisers with
//!   exportable state, and the loop;
//! - [`checkpoint`]: the file format, the run folder's checkpoints, and loading strategies;
//! - [`distributed`]: data-parallel jobs on libtorch's c10d (torchrun, srun);
//! - [`run`]: one run start to finish; [`report`]: a run's metrics drawn and summed up;
//!   [`app`] and [`cli`]: the command line.
#![warn(missing_docs)]

pub mod app;
pub use train_store::atomic;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod distributed;
pub mod dtype;
pub mod fault;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod progress;
pub mod report;
pub mod run;
pub mod schedule;
pub mod serde_exact;
pub mod shim;
pub mod training;
