//! `train eval`: a checkpoint's loss and accuracy on the validation data (the test split of
//! IDX data), without training and without writing anything.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::error::RunError;
use super::job::UserConfig;
use super::setup::data_and_trainer;
use crate::checkpoint::{CheckpointFile, Strategy};

/// What an evaluation found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// The checkpoint evaluated.
    pub checkpoint: PathBuf,
    /// The epoch and step it records (0 for a file that records none).
    pub epoch: u32,
    /// The optimiser step it records.
    pub step: u64,
    /// Examples evaluated.
    pub examples: usize,
    /// Mean loss over them.
    pub loss: f64,
    /// Fraction predicted right; `None` for regression.
    pub accuracy: Option<f64>,
    /// Wall time of loading the weights and evaluating.
    pub seconds: f64,
}

/// Builds the configured model on its device, streams `path`'s weights into it (strictly:
/// every name and shape must match; optimizer state is not read) and evaluates it on the
/// validation split. One process: the user's configuration is the planned one.
pub fn evaluate(cfg: &UserConfig, path: &Path) -> Result<Evaluation, RunError> {
    let device = crate::device::select(cfg.run.device).map_err(|e| RunError::Device(e.to_string()))?;
    let file = CheckpointFile::open(path).map_err(|e| RunError::ResumeFrom(e.into()))?;
    let (data, trainer) = data_and_trainer(&cfg.plan(1), device, |_| Ok(()))?;
    let start = Instant::now();
    crate::checkpoint::load_into(&file, &trainer.variables(), device, Strategy::ModelOnly, true, false)
        .map_err(RunError::ResumeFrom)?;
    let stats = crate::fault::catch_oom(|| trainer.evaluate(&data.val))
        .map_err(|msg| RunError::OutOfMemory { detail: format!("evaluating: {msg}") })??;
    let meta = file.meta_or_imported();
    Ok(Evaluation {
        checkpoint: path.to_path_buf(),
        epoch: meta.epoch(),
        step: meta.step(),
        examples: data.val.len(),
        loss: stats.loss,
        accuracy: (!stats.accuracy.is_nan()).then_some(stats.accuracy),
        seconds: start.elapsed().as_secs_f64(),
    })
}
