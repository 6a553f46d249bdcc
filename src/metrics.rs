//! `metrics.jsonl`: one JSON object per line, tagged by `kind` (`step`, `epoch`, `event`),
//! appended as the run goes.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsLine {
    /// Every `log_every_n_steps` optimiser steps.
    Step(StepMetrics),
    /// After each epoch's evaluation.
    Epoch(EpochMetrics),
    /// Something the run did about itself, e.g. recovering from running out of memory.
    Event(EventMetrics),
}

/// A record of something the run did about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMetrics {
    /// The optimiser step it happened at (the step being attempted).
    pub step: u64,
    /// What: `oom_recovery`.
    pub event: String,
    /// Micro-batches per step from now on.
    pub grad_accum_steps: u32,
    /// Examples per micro-batch from now on.
    pub micro_batch: u32,
    /// The error that prompted it.
    pub detail: String,
}

impl MetricsLine {
    /// The optimiser step the line was written at.
    pub fn step(&self) -> u64 {
        match self {
            Self::Step(m) => m.step,
            Self::Epoch(m) => m.step,
            Self::Event(m) => m.step,
        }
    }
}

/// The record of a logged step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// The epoch in progress (1-based).
    pub epoch: u32,
    /// Optimiser steps taken since the start of the run.
    pub step: u64,
    /// Mean loss of this step's batch.
    pub loss: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Training examples per second so far this epoch.
    pub samples_per_sec: f64,
    /// Seconds since this process started training.
    pub elapsed_seconds: f64,
    /// Resident host memory of the process, when known.
    pub host_rss_bytes: Option<u64>,
    /// Bytes libtorch's caching allocator has in live tensors on the CUDA device (`None` on the CPU).
    #[serde(default)]
    pub device_allocated_bytes: Option<u64>,
    /// Peak of that since the run started.
    #[serde(default)]
    pub device_peak_allocated_bytes: Option<u64>,
}

/// The record of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// The epoch just completed (1-based).
    pub epoch: u32,
    /// Optimiser steps taken since the start of the run.
    pub step: u64,
    /// Mean training loss over the epoch's examples.
    pub train_loss: f64,
    /// Mean loss on the validation split.
    pub val_loss: f64,
    /// Fraction of the validation split classified correctly.
    pub val_accuracy: f64,
    /// Learning rate in force.
    pub lr: f64,
    /// Wall time of the epoch's training steps.
    pub train_seconds: f64,
    /// Training examples per second over the epoch.
    pub samples_per_sec: f64,
    /// Wall time of evaluation.
    pub eval_seconds: f64,
    /// Time the training thread was blocked by this epoch's checkpoint (the snapshot, plus
    /// any wait for the previous save; the writing itself runs in the background).
    pub checkpoint_blocked_seconds: f64,
    /// Resident host memory of the process at the end of the epoch, when known.
    pub host_rss_bytes: Option<u64>,
}

/// A line of `metrics.jsonl` that is not a [`MetricsLine`].
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {source}")]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// What the JSON parser said.
    pub source: serde_json::Error,
}

/// The metrics file of a run.
#[derive(Debug, Clone)]
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// The log at `path` (created on first append).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (an epoch's line is flushed to disk; step lines are not, for speed).
    pub fn append(&self, m: &MetricsLine) -> std::io::Result<()> {
        let mut f = OpenOptions::new().create(true).append(true).open(&self.path)?;
        let line = serde_json::to_string(m).map_err(std::io::Error::other)?;
        writeln!(f, "{line}")?;
        if matches!(m, MetricsLine::Epoch(_)) {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Drops lines written after optimiser step `step` (before a crash whose checkpoint did
    /// not survive), so a resumed run logs no step twice. Rewrites atomically.
    pub fn truncate_after(&self, step: u64) -> std::io::Result<()> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| serde_json::from_str::<MetricsLine>(l).map_or(true, |m| m.step() <= step))
            .collect();
        if kept.len() == text.lines().count() {
            return Ok(());
        }
        write_atomic(&self.path, (kept.join("\n") + if kept.is_empty() { "" } else { "\n" }).as_bytes())
    }

    /// Every line in the file. A line that does not parse fails the read with an
    /// [`std::io::ErrorKind::InvalidData`] error carrying a [`BadLine`] (its line number).
    pub fn read_all(path: &Path) -> std::io::Result<Vec<MetricsLine>> {
        fs::read_to_string(path)?
            .lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|source| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, BadLine { line: i + 1, source })
                })
            })
            .collect()
    }

    /// The epoch lines in the file.
    pub fn read(path: &Path) -> std::io::Result<Vec<EpochMetrics>> {
        Ok(Self::read_all(path)?
            .into_iter()
            .filter_map(|l| match l {
                MetricsLine::Epoch(m) => Some(m),
                MetricsLine::Step(_) | MetricsLine::Event(_) => None,
            })
            .collect())
    }
}

/// Replaces `path` with `bytes` atomically and durably (see [`crate::atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::atomic::write_atomic(path, |f| f.write_all(bytes))
}
