//! One training run, start to finish, in phases ([`orchestrator::execute`]):
//!
//! 1. signal handlers ([`signals`]), the user's and the planned configuration ([`job`]),
//!    device, the data-parallel job joined if the launcher started one ([`ranks`]), then
//!    the run folder locked ([`folder`]) by rank 0;
//! 2. under the lock, where to start from ([`resume::plan`]); a refusal leaves the disk as it
//!    was found;
//! 3. data and model ([`setup`]), and the resume itself ([`resume`]);
//! 4. the epochs ([`train_loop`]), whose saves and stops follow [`policy`];
//! 5. the last save waited for.
//!
//! [`measure`] serves `train plan`: model sizes and a measured load, without training;
//! [`evaluate`] serves `train eval`. Errors are [`RunError`] ([`error`]); a run's outcome
//! is a [`RunSummary`] ([`summary`]).

pub mod error;
pub mod evaluate;
pub mod folder;
pub mod job;
pub mod measure;
pub mod orchestrator;
pub mod policy;
pub mod ranks;
pub mod resume;
pub mod setup;
pub mod signals;
pub mod summary;
pub mod train_loop;

pub use error::{PositionError, RunError};
pub use folder::{output_dir, RunFolder, CONFIG_FILE, DEFAULT_RUN_NAME, METRICS_FILE};
pub use job::{config_sha256, PlannedConfig, UserConfig};
pub use orchestrator::execute;
pub use resume::ResumePlan;
pub use summary::RunSummary;
