//! Data-parallel training on libtorch's own distributed engine, c10d, as PyTorch's DDP
//! does: a TCPStore rendezvous, a process group (Gloo on the CPU, NCCL on CUDA), and
//! gradients averaged over the ranks after each step's backward.
//!
//! - [`env`]: which rank of which job this process is (torchrun, srun), a pure function;
//! - [`config`]: the `distributed:` section;
//! - [`engine`]: the C++ shim's process group;
//! - [`Dist`] (`job.rs`): what a run asks of the group, with errors that say what was lost
//!   ([`DistError`], `error.rs`); `peer.rs`: the other ranks' processes;
//! - [`partition`]: how sharded state is split over the ranks (pure), and [`Zero`]
//!   (`zero.rs`): this rank's share of it, stepped and gathered (ZeRO-1 and 2).
//!
//! What the run does with it (sharding, who writes, the coordinated stop) is in
//! `crate::run::ranks` and the loop.

pub mod config;
pub mod engine;
pub mod env;
mod error;
mod hostlist;
mod job;
pub mod partition;
mod peer;
pub mod plan;
mod zero;

pub use config::ShardChoice;
pub use config::{BackendChoice, DistributedConfig, Timeout, TimeoutError};
pub use env::{Launch, LaunchError, Source};
pub use error::{name_list, DistError, Failure};
pub use hostlist::{first_host, HostListError};
pub use job::{CommTimes, Dist, BUCKET_BYTES};
pub use zero::{Stage, Zero};
