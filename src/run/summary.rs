//! What a run did ([`RunSummary`]).

use std::path::PathBuf;

use crate::metrics::EpochMetrics;

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub output_dir: PathBuf,
    /// The checkpoint it resumed from, if any.
    pub resumed_from: Option<PathBuf>,
    /// Epochs trained by this invocation.
    pub epochs_trained: u32,
    /// The metrics of the last epoch trained, if any.
    pub last: Option<EpochMetrics>,
    /// Stopped early by SIGTERM/SIGINT (after saving `latest`, when there was anything to save).
    pub interrupted: bool,
}

impl RunSummary {
    /// A run that stopped before training: nothing trained, nothing resumed.
    pub(crate) fn stopped_early(output_dir: PathBuf, interrupted: bool) -> Self {
        Self { output_dir, resumed_from: None, epochs_trained: 0, last: None, interrupted }
    }
}
