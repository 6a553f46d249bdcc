//! `train`: a training launcher for PyTorch-style models (libtorch through `tch`) that loads
//! and saves checkpoints with GPU memory in mind.
//!
//! The binary is a thin shell over this library. Its modules form layers, each importing
//! only from those below (ARCHITECTURE.md draws the map; `tests/architecture.rs` checks it):
//! - foundations: [`dtype`], [`shim`], [`fault`], [`progress`], [`metrics`], [`schedule`],
//!   [`serde_exact`], [`device`], [`logging`];
//! - features, each owning its config section: [`memory`] (probes), [`data`], [`model`],
//!   [`checkpoint`] (a plan layer that decides, storage that carries plans out), [`optim`],
//!   [`distributed`] (data-parallel jobs on libtorch's c10d);
//! - [`config`]: the sections composed, built-in profiles, layered resolution with provenance;
//! - [`training`]: the step; [`guide`]: the seed guide's helper functions;
//! - [`run`]: one run start to finish; [`report`]: a run's metrics drawn and summed up;
//! - [`cli`] and [`app`]: the command line.
#![warn(missing_docs)]

pub mod app;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod distributed;
pub mod dtype;
pub mod fault;
pub mod guide;
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
