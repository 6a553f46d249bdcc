//! Why a run, an evaluation or a measurement did not complete ([`RunError`]), and why a
//! checkpoint's position does not fit a run ([`PositionError`]).

use std::path::PathBuf;

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::data::DataError;
use crate::distributed::DistError;
use crate::model::ModelError;

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data set could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The model cannot be built for the data.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The requested device does not exist.
    #[error("{0}")]
    Device(String),
    /// `--resume never` over a folder that holds an earlier run's checkpoints.
    #[error(
        "{dir} already holds checkpoints of an earlier run; use --resume auto to continue it, or another --output-dir"
    )]
    ExistingRun {
        /// The checkpoint folder.
        dir: PathBuf,
    },
    /// Out of device memory with no cheaper way left to load or train.
    #[error("{detail}: {}", OOM_ADVICE)]
    OutOfMemory {
        /// What ran out and where.
        detail: String,
    },
    /// `run.output_dir` names something that is not a folder.
    #[error("run.output_dir {path} exists and is not a folder; choose another --output-dir")]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
    /// The checkpoint `run.resume` names cannot be opened.
    #[error("run.resume: {0}")]
    ResumeFrom(CheckpointError),
    /// `model.init_from` names a file that cannot initialise the model.
    #[error("model.init_from: {0}")]
    InitFrom(CheckpointError),
    /// A checkpoint's position does not fit this run's epochs.
    #[error("cannot resume from {path}: {why}")]
    Position {
        /// The checkpoint.
        path: PathBuf,
        /// Why, and what to do.
        why: PositionError,
    },
    /// A step's loss was NaN or infinite and `training.on_nonfinite` is `stop`.
    #[error(
        "the loss diverged at step {step} (loss {loss}): stopped, `latest` holds the last finite state. Try a lower \
         training.optimizer.lr, training.clip_grad_norm, or training.on_nonfinite: skip_step"
    )]
    NonFinite {
        /// The optimiser step that diverged (1-based).
        step: u64,
        /// Its loss.
        loss: f64,
    },
    /// Weights loaded from a file (`--resume`, `--init-from`) hold NaN or infinite values.
    #[error(
        "{path}: tensor `{tensor}` holds {what} values, which no training can start from (a checkpoint of a diverged \
         run?); resume from an earlier checkpoint (--resume PATH) or start afresh"
    )]
    NonFiniteWeights {
        /// The file loaded.
        path: PathBuf,
        /// The first tensor (by name) that is not finite.
        tensor: String,
        /// `NaN` or `infinite`.
        what: &'static str,
    },
    /// libtorch raised an error in a training step or an evaluation (the model failed on
    /// this batch): the run cannot go on, and nothing is saved from the state it left.
    #[error("{during}: {message}")]
    Libtorch {
        /// Where: `training step 12`, `evaluation after epoch 2`.
        during: String,
        /// libtorch's message, on one line.
        message: String,
    },
    /// Another process holds the run folder.
    #[error("{dir} is in use by another train process; wait for it or choose another --output-dir")]
    Busy {
        /// The run folder.
        dir: PathBuf,
    },
    /// Between the ranks of a data-parallel job.
    #[error(transparent)]
    Distributed(#[from] DistError),
    /// Writing the run folder failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl RunError {
    /// Whether the user's input is at fault (exit code 2) rather than the run (exit code 1).
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Data(e) => e.is_usage(),
            Self::Model(e) => e.is_usage(),
            // An explicit --resume or --init-from file that is missing or does not fit the
            // model (an `auto` resume only tries the run's own files).
            Self::ResumeFrom(e) | Self::InitFrom(e) | Self::Checkpoint(e) => e.is_usage(),
            Self::Distributed(e) => e.is_usage(),
            _ => matches!(
                self,
                Self::Config(_)
                    | Self::Device(_)
                    | Self::ExistingRun { .. }
                    | Self::Busy { .. }
                    | Self::NotAFolder { .. }
                    | Self::Position { .. }
                    | Self::NonFiniteWeights { .. }
            ),
        }
    }
}

/// The seed guide's advice, for when no cheaper way to load or train is left.
const OOM_ADVICE: &str = "out of memory with no cheaper strategy left. Try, in order: a smaller \
training.batch_size; a larger training.grad_accum_steps (same effective batch, less memory); \
memory.checkpoint_memory_efficient: true; memory.load_optimizer_state: false (the \
ultra_low_memory profile); a smaller model";

/// Why a checkpoint taken mid-epoch cannot resume in this run (see
/// [`super::resume::check_position`]): it resumes at its batch, which only means the same
/// samples with the same `training.batch_size` and data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    /// Saved with another `training.batch_size`.
    #[error(
        "it was saved {batches_into_epoch} batches into epoch {epoch} with training.batch_size {saved}, and this \
         run uses {now}: resume with --set training.batch_size={saved}, or from an epoch checkpoint (--resume \
         <run>/checkpoints/epoch-NNNN...)"
    )]
    BatchSize {
        /// Batches of the epoch it had trained.
        batches_into_epoch: u64,
        /// The epoch it was saved in (1-based).
        epoch: u32,
        /// Its `training.batch_size`.
        saved: u32,
        /// This run's.
        now: u32,
    },
    /// Saved further into its epoch than an epoch now has batches.
    #[error(
        "it was saved {batches_into_epoch} batches into epoch {epoch}, but an epoch now has {batches} batches \
         (training.batch_size or data.train_limit changed): resume with the settings it was saved with, or from an \
         epoch checkpoint"
    )]
    PastEpochEnd {
        /// Batches of the epoch it had trained.
        batches_into_epoch: u64,
        /// The epoch it was saved in (1-based).
        epoch: u32,
        /// Batches in an epoch now.
        batches: u64,
    },
}

impl From<crate::training::EvalError> for RunError {
    fn from(e: crate::training::EvalError) -> Self {
        match e {
            crate::training::EvalError::Data(e) => e.into(),
            crate::training::EvalError::Dist(e) => e.into(),
        }
    }
}
