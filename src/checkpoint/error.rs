//! What can go wrong reading or writing a checkpoint.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing a checkpoint; each names the file and,
/// where one is at fault, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the file itself (I/O, a malformed or damaged file, an unwritable
    /// format): `train-ckpt`'s error, which names the file and the tensor.
    #[error(transparent)]
    File(#[from] train_ckpt::Error),
    /// Not enough free disk space to write a checkpoint; nothing was written.
    #[error(
        "not enough disk space in {dir} for a checkpoint: need about {needed} bytes, {available} available; earlier checkpoints are untouched"
    )]
    DiskFull {
        /// The checkpoint folder.
        dir: PathBuf,
        /// Estimated bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The model has a parameter the checkpoint lacks.
    #[error("checkpoint {path} has no tensor `{tensor}`, which the model needs{hint}")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The parameter's name.
        tensor: String,
        /// What to do instead, when there is something (empty otherwise).
        hint: &'static str,
    },
    /// The checkpoint has a weight the model does not.
    #[error("checkpoint {path} holds tensor `{tensor}`, which the model does not have{hint}")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What to do instead, when there is something (empty otherwise).
        hint: &'static str,
    },
    /// Shape or dtype differ between the checkpoint and the model.
    #[error("checkpoint {path}: tensor `{tensor}` is {found}, the model needs {expected}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What the model has.
        expected: String,
        /// What the file has.
        found: String,
    },
    /// `model.init_strict` and the file does not match the model exactly.
    #[error("{path} does not match the model (model.init_strict is on):\n{table}")]
    InitMismatch {
        /// The file.
        path: PathBuf,
        /// Every difference, as [`crate::checkpoint::InitReport::table`] lays them out.
        table: String,
    },
    /// `model.init_from` would load too little of the model (`model.init_min_loaded`).
    #[error(
        "{path} would load {loaded} of the model's {total} tensors, fewer than model.init_min_loaded ({min}) \
         asks{hint}; to load what matches anyway, set model.init_min_loaded: 0"
    )]
    InitTooFew {
        /// The file.
        path: PathBuf,
        /// Model tensors the file would load.
        loaded: usize,
        /// The model's tensors.
        total: usize,
        /// `model.init_min_loaded`.
        min: f64,
        /// The prefix mapping that would fit, when there is one (else empty).
        hint: String,
    },
    /// The optimiser rejected the saved state.
    #[error("checkpoint {path}: {source}")]
    Optimizer {
        /// The file.
        path: PathBuf,
        /// The optimiser's complaint (names the tensor).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The ranks of a job could not agree on a sharded save (the store, a lost rank).
    #[error("sharded checkpoint {key}: {message}")]
    Exchange {
        /// The save.
        key: String,
        /// What failed.
        message: String,
    },
    /// libtorch failed while moving tensors.
    #[error("checkpoint {path}: libtorch: {source}")]
    Torch {
        /// The file.
        path: PathBuf,
        /// libtorch's error.
        source: tch::TchError,
    },
}

impl CheckpointError {
    /// Whether the file cannot fit this model or is not there, rather than being damaged
    /// or failing to read: the command is at fault (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            Self::MissingTensor { .. }
            | Self::UnexpectedTensor { .. }
            | Self::Mismatch { .. }
            | Self::InitMismatch { .. }
            | Self::InitTooFew { .. } => true,
            Self::File(train_ckpt::Error::Io { source, .. }) => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}
