//! The configuration schema: the root [`Config`], which composes the sections, and the
//! sections of the layers above the features (`run:`, `training:`). Each feature owns its
//! own section (`model:` in `model::config`, `data:`, `memory:` and `checkpoint:` in
//! `checkpoint::config`, `training.optimizer:` in `optim::config`, `distributed:`).
//!
//! The structs deny unknown fields so that a typo is an error (with the nearest valid key,
//! see [`super::load`]) rather than a silently ignored setting. Sections are flat structs
//! rather than tagged enums so that layers can change `model.kind` without the keys of the
//! other kinds becoming "unknown".
//! Validation across sections lives in `validate`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::checkpoint::config::{CheckpointConfig, MemoryConfig};
use crate::data::config::DataConfig;
use crate::device::DeviceSpec;
use crate::distributed::config::DistributedConfig;
use crate::metrics::StopMetric;
use crate::model::config::ModelConfig;
use crate::optim::config::OptimizerConfig;
use crate::schedule::ScheduleConfig;

/// The whole, validated configuration of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where and how the run executes.
    pub run: RunConfig,
    /// Which model to train and its size.
    pub model: ModelConfig,
    /// Where the data comes from.
    pub data: DataConfig,
    /// The optimisation loop.
    pub training: TrainingConfig,
    /// The seed guide's memory switches.
    pub memory: MemoryConfig,
    /// When checkpoints are written.
    pub checkpoint: CheckpointConfig,
    /// How the ranks of a data-parallel job talk to each other.
    pub distributed: DistributedConfig,
}

/// `run:` where and how the run executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// Output folder; `None` means `runs/<experiment>`.
    pub output_dir: Option<PathBuf>,
    /// `auto` (continue from the newest checkpoint of the run), `never`, or a checkpoint path.
    pub resume: ResumeSpec,
    /// libtorch intra-op threads; `None` leaves libtorch's default (one per core). At most
    /// [`super::MAX_THREADS_PER_CORE`] times the cores this process may use.
    pub threads: Option<u32>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { device: DeviceSpec::Auto, output_dir: None, resume: ResumeSpec::Auto, threads: None }
    }
}

/// `training:` the optimisation loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Total number of epochs of the run (a resumed run continues up to this count).
    pub epochs: u32,
    /// Examples per optimiser step.
    pub batch_size: u32,
    /// Seeds weight initialisation, the shuffling order and every random draw of a step.
    pub seed: u64,
    /// The optimiser and its hyper-parameters.
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule over optimiser steps.
    pub schedule: ScheduleConfig,
    /// Split each batch into this many micro-batches whose gradients are accumulated before
    /// one optimiser step: same update, a fraction of the activation memory.
    pub grad_accum_steps: u32,
    /// Clip the global gradient norm to this value before each step (`None`: no clipping).
    pub clip_grad_norm: Option<f64>,
    /// Log a progress line (and a `metrics.jsonl` step line) every N optimiser steps.
    pub log_every_n_steps: u64,
    /// `fp32`, or `bf16`: forward passes under CUDA autocast in bfloat16 (weights, gradients
    /// and optimizer state stay fp32). CUDA only.
    pub precision: Precision,
    /// Stop once this many optimiser steps have been taken in total (saving `latest` at the
    /// exact position, even mid-epoch); running again without it continues. `None`: no limit.
    pub max_steps: Option<u64>,
    /// What a step whose loss is NaN or infinite does (the update is not applied unless
    /// `continue`): `stop` the run (exit 3, `latest` left at the last finite state),
    /// `skip_step` (go on with the next batch), or `continue` (apply it anyway).
    pub on_nonfinite: OnNonfinite,
    /// End the run once the validation metric stops improving. `None`: train every epoch.
    pub early_stopping: Option<EarlyStopping>,
}

/// `training.early_stopping:` end the run when `metric` has not improved by more than
/// `min_delta` for `patience` epochs. The checkpoint of the best epoch is kept (retention's
/// `keep_best` follows the same metric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStopping {
    /// `val_loss` (lower is better) or `val_accuracy` (higher is better).
    pub metric: StopMetric,
    /// Epochs without improvement before stopping (at least 1).
    pub patience: u32,
    /// The smallest change that counts as an improvement (>= 0).
    pub min_delta: f64,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        Self { metric: StopMetric::ValLoss, patience: 3, min_delta: 0.0 }
    }
}

/// `training.on_nonfinite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNonfinite {
    /// End the run with exit code 3 and the step that diverged.
    Stop,
    /// Leave the weights as they were and go on with the next batch.
    SkipStep,
    /// Apply the update anyway (checkpoints are still never written with non-finite weights).
    Continue,
}

impl TrainingConfig {
    /// Optimiser steps in an epoch of `examples` training examples (the last batch may be short).
    pub fn batches_per_epoch(&self, examples: usize) -> u64 {
        examples.div_ceil(self.batch_size as usize) as u64
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 128,
            seed: 42,
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            grad_accum_steps: 1,
            clip_grad_norm: None,
            log_every_n_steps: 100,
            precision: Precision::Fp32,
            max_steps: None,
            on_nonfinite: OnNonfinite::Stop,
            early_stopping: None,
        }
    }
}

/// Numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// float32 throughout.
    Fp32,
    /// bfloat16 autocast on CUDA.
    Bf16,
}

/// `run.resume`: where a run continues from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ResumeSpec {
    /// The newest loadable checkpoint in the run's folder, or a fresh start when there is none.
    Auto,
    /// Always a fresh start; refuses to run over an earlier run's checkpoints.
    Never,
    /// This checkpoint file.
    Path(PathBuf),
}

impl From<String> for ResumeSpec {
    fn from(s: String) -> Self {
        match s.as_str() {
            "auto" => Self::Auto,
            "never" => Self::Never,
            _ => Self::Path(PathBuf::from(s)),
        }
    }
}

impl From<ResumeSpec> for String {
    fn from(r: ResumeSpec) -> String {
        match r {
            ResumeSpec::Auto => "auto".into(),
            ResumeSpec::Never => "never".into(),
            ResumeSpec::Path(p) => p.display().to_string(),
        }
    }
}
