//! The series `train report` draws, read from a run's metrics lines.

use crate::metrics::{EpochMetrics, MetricsLine, StepMetrics};

/// Bytes in a MiB.
pub(super) const MIB: f64 = 1024.0 * 1024.0;

pub(super) fn epoch_lines(lines: &[MetricsLine]) -> impl Iterator<Item = &EpochMetrics> {
    lines.iter().filter_map(|l| match l {
        MetricsLine::Epoch(e) => Some(e),
        MetricsLine::Step(_) | MetricsLine::Event(_) => None,
    })
}

pub(super) fn step_lines(lines: &[MetricsLine]) -> impl Iterator<Item = &StepMetrics> {
    lines.iter().filter_map(|l| match l {
        MetricsLine::Step(s) => Some(s),
        MetricsLine::Epoch(_) | MetricsLine::Event(_) => None,
    })
}

pub(super) fn host_rss(line: &MetricsLine) -> Option<u64> {
    match line {
        MetricsLine::Step(s) => s.host_rss_bytes,
        MetricsLine::Epoch(e) => e.host_rss_bytes,
        MetricsLine::Event(_) => None,
    }
}

fn lr(line: &MetricsLine) -> Option<f64> {
    match line {
        MetricsLine::Step(s) => Some(s.lr),
        MetricsLine::Epoch(e) => Some(e.lr),
        MetricsLine::Event(_) => None,
    }
}

/// The points of each panel, `(x, y)` in drawing order. A non-finite value (a NaN loss,
/// logged as `null`) stays in as a gap: the line stops before it and starts again after,
/// and it never sets an axis range (it would flatten every other point against an axis).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Curves {
    /// Loss of each logged step, by step.
    pub(super) step_loss: Vec<(f64, f64)>,
    /// Epoch training loss, at the epoch's last step.
    pub(super) train_loss: Vec<(f64, f64)>,
    /// Epoch validation loss, at the epoch's last step.
    pub(super) val_loss: Vec<(f64, f64)>,
    /// Learning rate by step (step and epoch lines).
    pub(super) lr: Vec<(f64, f64)>,
    /// Host RSS in MiB by step (step and epoch lines that have it).
    pub(super) rss_mib: Vec<(f64, f64)>,
    /// Validation accuracy by epoch.
    pub(super) val_accuracy: Vec<(f64, f64)>,
}

impl Curves {
    pub(super) fn of(lines: &[MetricsLine]) -> Self {
        let at_step = |f: &dyn Fn(&MetricsLine) -> Option<f64>| -> Vec<(f64, f64)> {
            let mut points: Vec<_> = lines.iter().filter_map(|l| Some((l.step() as f64, f(l)?))).collect();
            // Step and epoch lines of one step may come in either order: keep each series
            // monotone in x (a stable sort keeps file order within a step).
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            points
        };
        let epoch = |f: &dyn Fn(&EpochMetrics) -> f64, by_epoch: bool| -> Vec<(f64, f64)> {
            epoch_lines(lines).map(|e| (if by_epoch { f64::from(e.epoch) } else { e.step as f64 }, f(e))).collect()
        };
        Self {
            step_loss: at_step(&|l| match l {
                MetricsLine::Step(s) => Some(s.loss),
                MetricsLine::Epoch(_) | MetricsLine::Event(_) => None,
            }),
            train_loss: epoch(&|e| e.train_loss, false),
            val_loss: epoch(&|e| e.val_loss, false),
            lr: at_step(&lr),
            rss_mib: at_step(&|l| host_rss(l).map(|b| b as f64 / MIB)),
            val_accuracy: epoch(&|e| e.val_accuracy, true),
        }
    }
}
