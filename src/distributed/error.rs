//! What went wrong between the ranks, and how a message names many parameters.

use super::config::Timeout;
use super::engine::EngineError;
use super::env::LaunchError;
use crate::shim::ShimError;

/// What went wrong between the ranks.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launch environment is unusable.
    #[error("data-parallel launch: {0}")]
    Launch(#[from] LaunchError),
    /// The store could not be set up: address, port, or peers not arriving.
    #[error(
        "cannot meet the other ranks at {addr}:{port} as rank {rank} of {world} (within distributed.timeout \
         {timeout}): {source}"
    )]
    Rendezvous {
        /// MASTER_ADDR.
        addr: String,
        /// MASTER_PORT.
        port: u16,
        /// This rank.
        rank: u32,
        /// The world.
        world: u32,
        /// The timeout.
        timeout: Timeout,
        /// c10d's message.
        source: EngineError,
    },
    /// The backend asked for does not fit the device.
    #[error("distributed.backend: {0}")]
    Backend(String),
    /// NCCL was asked for and this build has none.
    #[error("distributed.backend: {0}")]
    NoNccl(ShimError),
    /// A collective (or the store after the start) failed: a rank died, hung past the
    /// timeout, or the network failed.
    #[error("rank {rank}: {what} failed{lost}: {source}")]
    Lost {
        /// This rank.
        rank: u32,
        /// Which operation.
        what: String,
        /// `, rank N (pid P) is gone` when a rank on this host has exited; else empty.
        lost: String,
        /// c10d's (or libtorch's) message.
        source: Failure,
    },
    /// Rank 0 could not start the run, so neither can this rank.
    #[error("rank 0 could not start the run: {0}")]
    LeaderFailed(String),
    /// With DDP's Reducer and `distributed.find_unused_parameters` off, parameters got no
    /// gradient in a step's backward: their bucket was never all-reduced, and the step
    /// would have applied this rank's own gradients (different weights on each rank).
    #[error(
        "rank {rank}, step {step}: {names} received no gradient (not used to compute the loss on this rank), so \
         DDP's Reducer cannot average the step's gradients over the ranks; set distributed.find_unused_parameters: \
         true, or use every parameter in forward"
    )]
    UnusedParameters {
        /// This rank.
        rank: u32,
        /// The step (1-based).
        step: u64,
        /// The parameters, by name.
        names: String,
    },
    /// The ranks were started with different settings (the keys named).
    #[error("the ranks were started with different configurations: {0}")]
    ConfigMismatch(String),
}

impl DistError {
    /// Whether the user's settings are at fault (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Launch(_) | Self::Rendezvous { .. } | Self::Backend(_) | Self::NoNccl(_) | Self::ConfigMismatch(_)
        )
    }
}

/// Why a collective, the store or a backward with the all-reduce failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The process group (c10d).
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// libtorch (a backward, a copy of a reduced tensor).
    #[error("{0}")]
    Torch(#[from] tch::TchError),
}

/// At most this many names in a message; then how many more.
const NAMES_SHOWN: usize = 8;

/// `names` for a message: the first [`NAMES_SHOWN`], then how many more.
pub fn name_list(names: &[&str]) -> String {
    let shown = names.iter().take(NAMES_SHOWN).copied().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(NAMES_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}
