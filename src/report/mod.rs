//! `train report RUN_DIR`: a run's `metrics.jsonl` drawn as one picture (PNG or SVG) and
//! summed up in a few numbers. Nothing here touches libtorch: the report reads only the
//! metrics file, so it works on a finished, running or interrupted run, on any machine.
//! (Past our ~450-line habit only by its unit tests, a third of the file; drawing is in
//! `draw`.)
//!
//! The picture is a 2×2 grid of panels:
//!
//! ```text
//! +--------------------------------+--------------------------------+
//! | loss vs optimizer step         | learning rate vs step          |
//! |  every logged step (thin),     |                                |
//! |  epoch train and val loss      |                                |
//! +--------------------------------+--------------------------------+
//! | host RSS (MiB) vs step         | validation accuracy vs epoch   |
//! +--------------------------------+--------------------------------+
//! ```
//!
//! Text is drawn with DejaVu Sans, embedded in the binary by the `dejavu` crate and handed
//! to plotters' `ab_glyph` renderer: no system font, fontconfig or apt package is needed
//! where the report runs.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::metrics::{BadLine, MetricsLine, MetricsLog};
use crate::run::METRICS_FILE;
use train_ckpt::atomic;

mod curves;
mod draw;
mod error;

use curves::{epoch_lines, host_rss, step_lines, Curves, MIB};
use draw::render;
pub use draw::Format;
pub use error::ReportError;

/// The picture written when no output is named, inside the run folder.
pub const DEFAULT_PICTURE: &str = "report.png";

/// What `train report` prints; the field names are the stable `--json` keys. `None` (JSON
/// `null`) where the metrics do not tell, e.g. losses before the first epoch ends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The picture written.
    pub picture: PathBuf,
    /// Epochs completed (the highest epoch with an epoch line).
    pub epochs_completed: u32,
    /// Optimizer steps taken (the highest step of any line).
    pub steps: u64,
    /// Lowest validation loss of any epoch.
    pub best_val_loss: Option<f64>,
    /// The epoch that had it (the first, on a tie).
    pub best_val_loss_epoch: Option<u32>,
    /// Training loss of the last epoch.
    pub final_train_loss: Option<f64>,
    /// Validation loss of the last epoch.
    pub final_val_loss: Option<f64>,
    /// Validation accuracy of the last epoch.
    pub final_val_accuracy: Option<f64>,
    /// Training examples per second over all completed epochs (their examples over their
    /// training seconds); before the first epoch ends, the latest step line's figure.
    pub mean_samples_per_sec: Option<f64>,
    /// Highest resident host memory of any line.
    pub peak_host_rss_bytes: Option<u64>,
    /// Time the training thread spent blocked on checkpoints, all epochs together.
    pub checkpoint_blocked_seconds: f64,
}

impl Summary {
    /// Sums up `lines` (in file order) of the run in `run_dir`, drawn to `picture`.
    pub fn of(lines: &[MetricsLine], run_dir: &Path, picture: &Path) -> Self {
        let epochs: Vec<_> = epoch_lines(lines).collect();
        let best = epochs.iter().filter(|e| !e.val_loss.is_nan()).min_by(|a, b| a.val_loss.total_cmp(&b.val_loss));
        let last = epochs.last();
        let train_seconds: f64 = epochs.iter().map(|e| e.train_seconds).sum();
        let mean_samples_per_sec = if train_seconds > 0.0 {
            Some(epochs.iter().map(|e| e.samples_per_sec * e.train_seconds).sum::<f64>() / train_seconds)
        } else {
            last.map(|e| e.samples_per_sec).or_else(|| step_lines(lines).last().map(|s| s.samples_per_sec))
        };
        Self {
            run_dir: run_dir.to_path_buf(),
            picture: picture.to_path_buf(),
            epochs_completed: epochs.iter().map(|e| e.epoch).max().unwrap_or(0),
            steps: lines.iter().map(MetricsLine::step).max().unwrap_or(0),
            best_val_loss: best.map(|e| e.val_loss),
            best_val_loss_epoch: best.map(|e| e.epoch),
            final_train_loss: last.map(|e| e.train_loss),
            final_val_loss: last.map(|e| e.val_loss),
            final_val_accuracy: last.map(|e| e.val_accuracy),
            mean_samples_per_sec,
            peak_host_rss_bytes: lines.iter().filter_map(host_rss).max(),
            checkpoint_blocked_seconds: epochs.iter().map(|e| e.checkpoint_blocked_seconds).fold(0.0, |a, b| a + b),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn or_dash<T>(v: Option<T>, show: impl Fn(T) -> String) -> String {
            v.map_or_else(|| "-".to_string(), show)
        }
        let best = match (self.best_val_loss, self.best_val_loss_epoch) {
            (Some(loss), Some(epoch)) => format!("{loss:.4} (epoch {epoch})"),
            _ => "-".to_string(),
        };
        let rows = [
            ("run folder", self.run_dir.display().to_string()),
            ("epochs completed", self.epochs_completed.to_string()),
            ("optimizer steps", self.steps.to_string()),
            ("best val_loss", best),
            ("final train_loss", or_dash(self.final_train_loss, |v| format!("{v:.4}"))),
            ("final val_loss", or_dash(self.final_val_loss, |v| format!("{v:.4}"))),
            ("final val_accuracy", or_dash(self.final_val_accuracy, |v| format!("{v:.4}"))),
            ("mean samples/s", or_dash(self.mean_samples_per_sec, |v| format!("{v:.1}"))),
            ("peak host RSS", or_dash(self.peak_host_rss_bytes, |v| format!("{:.1} MiB", v as f64 / MIB))),
            ("checkpoint blocked", format!("{:.2} s", self.checkpoint_blocked_seconds)),
            ("picture", self.picture.display().to_string()),
        ];
        for (name, value) in rows {
            writeln!(f, "{name:20}{value}")?;
        }
        Ok(())
    }
}

/// Reads the metrics of the run in `run_dir`, draws them to `output` (default
/// `RUN_DIR/report.png`; PNG or SVG by extension) and returns the summary.
pub fn report(run_dir: &Path, output: Option<&Path>) -> Result<Summary, ReportError> {
    let picture = output.map_or_else(|| run_dir.join(DEFAULT_PICTURE), Path::to_path_buf);
    let format = Format::of(&picture)?;
    if !run_dir.is_dir() {
        return Err(ReportError::MissingRunDir(run_dir.to_path_buf()));
    }
    let lines = read_metrics(&run_dir.join(METRICS_FILE))?;
    let summary = Summary::of(&lines, run_dir, &picture);
    let bytes = render(&picture, format, &title(&summary), &Curves::of(&lines))?;
    atomic::write_atomic(&picture, |f| f.write_all(&bytes))
        .map_err(|source| ReportError::Write { path: picture.clone(), source })?;
    tracing::info!(path = %picture.display(), bytes = bytes.len(), "report picture written");
    Ok(summary)
}

/// Every line of the metrics file at `path`; an empty file is an error.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>, ReportError> {
    let lines = MetricsLog::read_all(path).map_err(|e| read_error(path, e))?;
    if lines.is_empty() {
        return Err(ReportError::Empty(path.to_path_buf()));
    }
    Ok(lines)
}

fn read_error(path: &Path, e: io::Error) -> ReportError {
    let path = path.to_path_buf();
    if e.kind() == io::ErrorKind::NotFound {
        return ReportError::MissingMetrics(path);
    }
    if e.get_ref().is_some_and(|inner| inner.is::<BadLine>()) {
        let bad = e.into_inner().and_then(|inner| inner.downcast::<BadLine>().ok()).expect("checked above");
        return ReportError::BadLine { path, line: bad.line, source: bad.source };
    }
    ReportError::Read { path, source: e }
}

/// The range of `values` with 5% room on each side; `fallback` when there are none, and a
/// range of positive width around a single value.
fn title(summary: &Summary) -> String {
    let name = summary
        .run_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| summary.run_dir.display().to_string());
    format!("{name}: {} epochs, {} optimizer steps", summary.epochs_completed, summary.steps)
}

#[cfg(test)]
mod tests {
    use super::draw::{segments, span, upper};
    use super::*;
    use crate::metrics::{EpochMetrics, StepMetrics};

    fn step(epoch: u32, step: u64, loss: f64, rss_mib: Option<u64>) -> MetricsLine {
        MetricsLine::Step(StepMetrics {
            epoch,
            step,
            loss,
            lr: 1e-3,
            samples_per_sec: 100.0 * step as f64,
            elapsed_seconds: step as f64,
            host_rss_bytes: rss_mib.map(|m| m << 20),
            device_allocated_bytes: None,
            device_peak_allocated_bytes: None,
        })
    }

    fn epoch(epoch: u32, step: u64, val_loss: f64, train_seconds: f64, samples_per_sec: f64) -> MetricsLine {
        MetricsLine::Epoch(EpochMetrics {
            epoch,
            step,
            train_loss: val_loss - 0.1,
            val_loss,
            val_accuracy: 0.5 + f64::from(epoch) / 10.0,
            lr: 5e-4,
            train_seconds,
            samples_per_sec,
            eval_seconds: 0.5,
            checkpoint_blocked_seconds: 0.25,
            host_rss_bytes: Some(150 << 20),
            data_wait_seconds: 0.0,
            skipped_samples: 0,
        })
    }

    fn run() -> Vec<MetricsLine> {
        vec![
            step(1, 10, 2.0, Some(100)),
            step(1, 20, 1.5, Some(120)),
            epoch(1, 20, 0.9, 1.0, 1000.0),
            step(2, 30, 1.0, None),
            step(2, 40, f64::NAN, Some(200)),
            epoch(2, 40, 0.7, 3.0, 2000.0),
            epoch(3, 60, 0.8, 0.0, 0.0),
        ]
    }

    #[test]
    fn summary_of_a_run_finds_best_and_final_epoch_peak_memory_and_totals() {
        let s = Summary::of(&run(), Path::new("runs/a"), Path::new("runs/a/report.png"));
        assert_eq!(s.epochs_completed, 3);
        assert_eq!(s.steps, 60);
        assert_eq!((s.best_val_loss, s.best_val_loss_epoch), (Some(0.7), Some(2)));
        assert_eq!(s.final_val_loss, Some(0.8));
        assert!((s.final_train_loss.unwrap() - 0.7).abs() < 1e-12);
        assert!((s.final_val_accuracy.unwrap() - 0.8).abs() < 1e-12);
        // Weighted by training time: (1000·1 + 2000·3) / 4 examples per second.
        assert_eq!(s.mean_samples_per_sec, Some(1750.0));
        assert_eq!(s.peak_host_rss_bytes, Some(200 << 20));
        assert_eq!(s.checkpoint_blocked_seconds, 0.75);
    }

    #[test]
    fn summary_before_the_first_epoch_has_steps_but_no_losses() {
        let s = Summary::of(&run()[..2], Path::new("r"), Path::new("r/report.png"));
        assert_eq!((s.epochs_completed, s.steps), (0, 20));
        assert_eq!((s.best_val_loss, s.final_val_loss, s.final_val_accuracy), (None, None, None));
        assert_eq!(s.mean_samples_per_sec, Some(2000.0), "the latest step line's running figure");
        assert!(s.checkpoint_blocked_seconds.is_sign_positive(), "0.00 s, not -0.00 s");
        let text = s.to_string();
        assert!(text.contains("best val_loss       -\n"), "{text}");
    }

    #[test]
    fn summary_json_has_the_documented_field_names() {
        let s = Summary::of(&run(), Path::new("r"), Path::new("r/report.png"));
        let json = serde_json::to_value(&s).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "run_dir",
                "picture",
                "epochs_completed",
                "steps",
                "best_val_loss",
                "best_val_loss_epoch",
                "final_train_loss",
                "final_val_loss",
                "final_val_accuracy",
                "mean_samples_per_sec",
                "peak_host_rss_bytes",
                "checkpoint_blocked_seconds"
            ]
        );
    }

    #[test]
    fn curves_keep_non_finite_values_as_gaps_and_skip_missing_memory() {
        let c = Curves::of(&run());
        assert_eq!(c.step_loss[..3], [(10.0, 2.0), (20.0, 1.5), (30.0, 1.0)]);
        assert!(c.step_loss.len() == 4 && c.step_loss[3].0 == 40.0 && c.step_loss[3].1.is_nan());
        assert_eq!(segments(&c.step_loss), [&c.step_loss[..3]]);
        assert_eq!(c.val_loss, [(20.0, 0.9), (40.0, 0.7), (60.0, 0.8)]);
        assert_eq!(c.val_accuracy.iter().map(|p| p.0).collect::<Vec<_>>(), [1.0, 2.0, 3.0]);
        let rss_steps: Vec<f64> = c.rss_mib.iter().map(|p| p.0).collect();
        assert_eq!(rss_steps, [10.0, 20.0, 20.0, 40.0, 40.0, 60.0]);
        assert_eq!(c.lr.len(), run().len());
    }

    #[test]
    fn a_line_is_broken_where_a_value_is_not_finite() {
        let nan = f64::NAN;
        let points = [(1.0, 1.0), (2.0, nan), (3.0, 3.0), (4.0, 4.0), (5.0, f64::INFINITY), (6.0, nan), (7.0, 7.0)];
        assert_eq!(segments(&points), [&points[..1], &points[2..4], &points[6..]]);
        let y = span(points.iter().map(|p| p.1), 0.0..1.0);
        assert!(y.start > 0.6 && y.start < 1.0 && y.end > 7.0 && y.end < 7.4, "{y:?}");
        assert!((upper(&points) - 7.7).abs() < 1e-9);
        assert!(segments(&[(1.0, nan)]).is_empty());
    }

    #[test]
    fn format_is_chosen_by_extension() {
        assert_eq!(Format::of(Path::new("a/report.png")).unwrap(), Format::Png);
        assert_eq!(Format::of(Path::new("REPORT.PNG")).unwrap(), Format::Png);
        assert_eq!(Format::of(Path::new("r.svg")).unwrap(), Format::Svg);
        for bad in ["r.jpg", "report", "png"] {
            assert!(matches!(Format::of(Path::new(bad)), Err(ReportError::UnknownFormat(p)) if p == Path::new(bad)));
        }
    }

    #[test]
    fn empty_metrics_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        std::fs::write(&path, "").unwrap();
        assert!(matches!(read_metrics(&path), Err(ReportError::Empty(p)) if p == path));
    }

    #[test]
    fn unparsable_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let good = serde_json::to_string(&run()[0]).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"kind\": \"step\", \"epo\n")).unwrap();
        let err = read_metrics(&path).unwrap_err();
        assert!(matches!(err, ReportError::BadLine { line: 2, .. }), "{err:?}");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn missing_metrics_and_run_folder_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = report(dir.path(), None).unwrap_err();
        assert!(matches!(&err, ReportError::MissingMetrics(p) if p == &dir.path().join(METRICS_FILE)), "{err:?}");
        let gone = dir.path().join("gone");
        assert!(matches!(report(&gone, None), Err(ReportError::MissingRunDir(p)) if p == gone));
    }

    #[test]
    fn renders_png_and_svg_with_text() {
        let curves = Curves::of(&run());
        let png = render(Path::new("r.png"), Format::Png, "t", &curves).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let svg = String::from_utf8(render(Path::new("r.svg"), Format::Svg, "t", &curves).unwrap()).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<text") && svg.contains("optimizer step"), "{svg}");
    }
}
