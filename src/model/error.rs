//! Why a model cannot be built.

use std::path::PathBuf;

use super::budget::{human, PARAMETER_BYTES, TRAINING_COPIES};

/// Why a model cannot be built for a data set.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The batch a module is tried on before training could not be read.
    #[error("reading the batch the model is tried on: {0}")]
    Data(Box<crate::data::DataError>),
    /// The model does not fit the data set's task or input shape.
    #[error("model.kind {kind} cannot learn this data: {reason}")]
    Incompatible {
        /// The configured kind.
        kind: String,
        /// Why.
        reason: String,
    },
    /// `model.torchscript.path` names no file.
    #[error("model.torchscript.path {path} not found")]
    TorchscriptMissing {
        /// The file.
        path: PathBuf,
    },
    /// `model.torchscript.path` is a `torch.save` file, not a TorchScript module.
    #[error("model.torchscript.path {path}: {reason}")]
    NotTorchscript {
        /// The file.
        path: PathBuf,
        /// What it is, and what to do.
        reason: String,
    },
    /// A TorchScript file could not be loaded or run.
    #[error("cannot load TorchScript module {path}: {reason}")]
    Torchscript {
        /// The file.
        path: PathBuf,
        /// libtorch's message, on one line.
        reason: String,
    },
    /// The configured model would not fit in memory.
    #[error(
        "{key} = {value} makes a model of {parameters} parameters ({}) for inputs {input_shape:?} and {outputs} \
         outputs; training holds at least {} (weights and gradients), more than {}",
        human(parameters.saturating_mul(PARAMETER_BYTES)),
        human(parameters.saturating_mul(PARAMETER_BYTES * TRAINING_COPIES)),
        limit
    )]
    TooLarge {
        /// The key that sizes the model (`model.mlp.hidden`, `model.cnn`, `model.gpt`).
        key: &'static str,
        /// Its value, as written in YAML.
        value: String,
        /// The model's parameter count.
        parameters: u128,
        /// Shape of one input.
        input_shape: Vec<i64>,
        /// Outputs per example.
        outputs: i64,
        /// What it does not fit in: the memory available, or the absolute cap.
        limit: String,
    },
}

impl ModelError {
    /// Whether the configuration is at fault (exit code 2) rather than a file (1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Incompatible { .. }
                | Self::TorchscriptMissing { .. }
                | Self::TooLarge { .. }
                | Self::NotTorchscript { .. }
        )
    }
}
