//! Configuration: the schema, the built-in profiles, and the layering that merges them with
//! a YAML file, its experiment section, `TRAIN_*` environment variables and `--set` flags.
//!
//! Everything after [`resolve`] sees one validated [`Config`]; nothing downstream reads raw
//! flags, YAML or the environment.

mod error;
mod load;
mod profiles;
mod provenance;
mod schema;
mod validate;
mod yaml;

pub use error::ConfigError;
pub use load::{resolve, FlagOverride, Request, Resolved, ENV_PREFIX};
pub use profiles::{profile, Profile, PROFILES};
pub use provenance::Origin;
pub use schema::*;

// The sections the features own, re-exported so that a user of the library finds every
// section under `config`. Code inside `src/` imports each from its feature.
pub use crate::checkpoint::config::{CheckpointConfig, MemoryConfig, StrategyChoice};
pub use crate::data::config::{DataConfig, DataKind, DEFAULT_DATA_DIR};
pub use crate::device::DeviceSpec;
pub use crate::distributed::config::{BackendChoice, DistributedConfig, Timeout};
pub use crate::metrics::StopMetric;
pub use crate::model::config::{CnnConfig, GptConfig, MlpConfig, ModelConfig, ModelKind, TorchscriptConfig};
pub use crate::optim::config::{OptimizerConfig, OptimizerKind};
pub use crate::schedule::{ScheduleConfig, ScheduleKind};
pub use bytesize::ByteSize;
pub use validate::{MAX_LR, MAX_THREADS_PER_CORE};
