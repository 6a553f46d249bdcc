//! What can go wrong making a report.

use std::io;
use std::path::PathBuf;

/// Failures of `train report`; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The run folder is not there.
    #[error("run folder {0} not found")]
    MissingRunDir(PathBuf),
    /// The run folder has no metrics file.
    #[error("{0} not found: the run has logged nothing yet, or this is not a run folder")]
    MissingMetrics(PathBuf),
    /// The metrics file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The metrics file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line of the metrics file is not a metrics line.
    #[error("{path}: line {line} is not a metrics line: {source}")]
    BadLine {
        /// The metrics file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// The metrics file holds no line.
    #[error("{0} is empty: the run has logged nothing yet")]
    Empty(PathBuf),
    /// The output's name ends in neither `.png` nor `.svg`.
    #[error("cannot tell the picture format of {0}: the name must end in .png or .svg")]
    UnknownFormat(PathBuf),
    /// Drawing failed.
    #[error("cannot draw {path}: {reason}")]
    Draw {
        /// The picture being drawn.
        path: PathBuf,
        /// What plotters said.
        reason: String,
    },
    /// The picture could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The picture.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}
