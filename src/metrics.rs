//! `metrics.jsonl`: one JSON object per line, tagged by `kind` (`step`, `epoch`, `event`),
//! appended as the run goes; and the validation metric a run watches ([`StopMetric`]).
//!
//! Durability rules, so that a crash at any moment leaves a file `train report` reads:
//! - each line, newline included, goes out in one `write` on an `O_APPEND` file, so lines
//!   of two processes or two runs never interleave;
//! - a line is only a line once its newline is there: a last line without one is a torn
//!   write (a crash, or a run still writing it), which readers skip with a warning and the
//!   next append cuts off before writing; a line that does not parse is an error for
//!   `train report` (naming it) and skipped with a warning by the run's own decisions
//!   (early stopping on resume);
//! - only a regular file is read (a FIFO would block the reader);
//! - JSON has no NaN, so a NaN loss is written as `null`, and read back as NaN.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

/// The metric early stopping and `keep_best` watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StopMetric {
    /// Validation loss; lower is better.
    #[default]
    ValLoss,
    /// Validation accuracy; higher is better.
    ValAccuracy,
}

impl StopMetric {
    /// This metric's value among an epoch's validation results.
    pub fn value(self, val_loss: f64, val_accuracy: f64) -> f64 {
        match self {
            Self::ValLoss => val_loss,
            Self::ValAccuracy => val_accuracy,
        }
    }

    /// How good `value` (a value of this metric) is, on one scale for every metric: higher
    /// is better (a loss enters negated, exactly). `None` for NaN (not measured, as accuracy
    /// in regression, or diverged): never better than anything. The one place that knows
    /// each metric's direction, for early stopping, `keep_best` and the run's history.
    pub fn rank(self, value: f64) -> Option<f64> {
        if value.is_nan() {
            return None;
        }
        Some(match self {
            Self::ValLoss => -value,
            Self::ValAccuracy => value,
        })
    }

    /// [`Self::rank`] of this metric's value among an epoch's results (NaN for one missing).
    pub fn score(self, val_loss: f64, val_accuracy: f64) -> Option<f64> {
        self.rank(self.value(val_loss, val_accuracy))
    }
}

/// Reads a number that may be `null` (how serde_json writes NaN and infinities) as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

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
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Learning rate of this step.
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Training examples per second so far this epoch.
    #[serde(deserialize_with = "nan_if_null")]
    pub samples_per_sec: f64,
    /// Seconds since this process started training.
    #[serde(deserialize_with = "nan_if_null")]
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
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Mean loss on the validation split.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss: f64,
    /// Fraction of the validation split classified correctly.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_accuracy: f64,
    /// Learning rate in force.
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Wall time of the epoch's training steps.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_seconds: f64,
    /// Training examples per second over the epoch.
    #[serde(deserialize_with = "nan_if_null")]
    pub samples_per_sec: f64,
    /// Wall time of evaluation.
    #[serde(deserialize_with = "nan_if_null")]
    pub eval_seconds: f64,
    /// Time the training thread was blocked by this epoch's checkpoint (the snapshot, plus
    /// any wait for the previous save; the writing itself runs in the background).
    #[serde(deserialize_with = "nan_if_null")]
    pub checkpoint_blocked_seconds: f64,
    /// Resident host memory of the process at the end of the epoch, when known.
    pub host_rss_bytes: Option<u64>,
    /// Of `train_seconds`, the time the training loop waited for its next batch: the data
    /// pipeline starved the step this long (0 in logs written before it was recorded).
    #[serde(default)]
    pub data_wait_seconds: f64,
    /// Examples left out of this epoch's training batches as unreadable
    /// (`data.on_bad_sample: skip`).
    #[serde(default)]
    pub skipped_samples: u64,
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

    /// Appends one line (an epoch's line is flushed to disk; step lines are not, for speed),
    /// in one write. A torn last line left by a crash is cut off first.
    pub fn append(&self, m: &MetricsLine) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(m).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new().create(true).read(true).append(true).open(&self.path)?;
        cut_torn_tail(&mut f, &self.path)?;
        f.write_all(&line)?;
        if matches!(m, MetricsLine::Epoch(_)) {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Drops lines written after optimiser step `step` (before a crash whose checkpoint did
    /// not survive), so a resumed run logs no step twice, and a torn last line. Rewrites
    /// atomically.
    pub fn truncate_after(&self, step: u64) -> std::io::Result<()> {
        let text = match read_regular(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let (whole, torn) = split_torn(&text);
        let kept: Vec<&str> = whole
            .lines()
            .filter(|l| serde_json::from_str::<MetricsLine>(l).map_or(true, |m| m.step() <= step))
            .collect();
        if kept.len() == whole.lines().count() && torn.is_empty() {
            return Ok(());
        }
        write_atomic(&self.path, (kept.join("\n") + if kept.is_empty() { "" } else { "\n" }).as_bytes())
    }

    /// Every line in the file. A line that does not parse fails the read with an
    /// [`std::io::ErrorKind::InvalidData`] error carrying a [`BadLine`] (its line number);
    /// a last line without its newline is a torn write, skipped with a warning.
    pub fn read_all(path: &Path) -> std::io::Result<Vec<MetricsLine>> {
        Self::parse(path, false)
    }

    /// The lines of the file; `lenient`: a line that does not parse (garbage from a disk
    /// error, an editor, another program) is skipped with a warning naming its number, as a
    /// torn last line is, instead of failing the read.
    fn parse(path: &Path, lenient: bool) -> std::io::Result<Vec<MetricsLine>> {
        let text = read_regular(path)?;
        let (whole, torn) = split_torn(&text);
        if !torn.is_empty() {
            tracing::warn!(
                path = %path.display(),
                line = whole.lines().count() + 1,
                bytes = torn.len(),
                "skipping the last line of the metrics: it has no newline (a write cut short, or still going on)"
            );
        }
        let mut lines = Vec::new();
        for (i, l) in whole.lines().enumerate() {
            match serde_json::from_str(l) {
                Ok(line) => lines.push(line),
                Err(source) if lenient => tracing::warn!(
                    path = %path.display(),
                    line = i + 1,
                    "skipping line {} of the metrics: it does not parse ({source})",
                    i + 1
                ),
                Err(source) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, BadLine { line: i + 1, source }))
                }
            }
        }
        Ok(lines)
    }

    /// The epoch lines in the file, for decisions such as early stopping: a line that does
    /// not parse is skipped with a warning naming it rather than refusing the run.
    pub fn read(path: &Path) -> std::io::Result<Vec<EpochMetrics>> {
        Ok(Self::parse(path, true)?
            .into_iter()
            .filter_map(|l| match l {
                MetricsLine::Epoch(m) => Some(m),
                MetricsLine::Step(_) | MetricsLine::Event(_) => None,
            })
            .collect())
    }
}

/// The text of `path`, which must be a regular file: reading a FIFO would block until a
/// writer comes (`train report` on one hung forever).
fn read_regular(path: &Path) -> std::io::Result<String> {
    if !fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or folder); the metrics are a file that train writes",
        ));
    }
    fs::read_to_string(path)
}

/// `text` as its whole lines (each ending in a newline) and what follows the last newline.
fn split_torn(text: &str) -> (&str, &str) {
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text.split_at(end)
}

/// Cuts `f` (opened for reading and appending) back to its last newline, so a line torn by
/// a crash does not join the next line written.
fn cut_torn_tail(f: &mut fs::File, path: &Path) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Search backwards, a block at a time, for the newline that ends the last whole line.
    const BLOCK: u64 = 64 * 1024;
    let mut end = len;
    let keep = loop {
        let start = end.saturating_sub(BLOCK);
        let mut buf = vec![0u8; (end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    tracing::warn!(path = %path.display(), bytes = len - keep, "cutting off a torn last line of the metrics");
    f.set_len(keep)
}

/// Replaces `path` with `bytes` atomically and durably (see [`train_ckpt::atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    train_ckpt::atomic::write_atomic(path, |f| f.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_higher_score_is_better_for_every_metric_and_nan_scores_nothing() {
        let loss = StopMetric::ValLoss;
        assert!(loss.score(0.5, f64::NAN) > loss.score(0.7, 0.9), "a lower loss is better");
        assert_eq!(loss.score(0.5, f64::NAN), Some(-0.5));
        assert_eq!(loss.score(f64::NAN, 0.9), None);
        let accuracy = StopMetric::ValAccuracy;
        assert!(accuracy.score(9.0, 0.9) > accuracy.score(0.1, 0.8), "a higher accuracy is better");
        assert_eq!(accuracy.score(0.1, f64::NAN), None, "regression has no accuracy");
        assert_eq!(accuracy.value(0.1, 0.8), 0.8);
        assert_eq!(loss.value(0.1, 0.8), 0.1);
        // Negation is exact, so a loss compared on its score keeps every tie and margin.
        let (a, b, delta) = (0.8_f64, 0.795_f64, 0.01_f64);
        assert_eq!(loss.rank(b).unwrap() > loss.rank(a).unwrap() + delta, b < a - delta);
    }
}
