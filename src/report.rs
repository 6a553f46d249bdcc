//! `train report RUN_DIR`: a run's `metrics.jsonl` drawn as one picture (PNG or SVG) and
//! summed up in a few numbers. Nothing here touches libtorch: the report reads only the
//! metrics file, so it works on a finished, running or interrupted run, on any machine.
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
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use crate::atomic;
use crate::metrics::{BadLine, EpochMetrics, MetricsLine, MetricsLog, StepMetrics};
use crate::run::METRICS_FILE;

/// The picture written when no output is named, inside the run folder.
pub const DEFAULT_PICTURE: &str = "report.png";
/// Picture size in pixels (SVG user units): four panels with room for their tick labels.
const SIZE: (u32, u32) = (1400, 900);
/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";
const MIB: f64 = 1024.0 * 1024.0;

// Matplotlib's "tab10" colours: familiar to anyone who has looked at PyTorch training curves.
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);
const PURPLE: RGBColor = RGBColor(148, 103, 189);

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

/// Picture formats, told apart by the output file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.png`: a bitmap.
    Png,
    /// `.svg`: vector graphics, text as text.
    Svg,
}

impl Format {
    /// The format of `path`, from its extension (any case).
    pub fn of(path: &Path) -> Result<Self, ReportError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(Self::Png),
            Some("svg") => Ok(Self::Svg),
            _ => Err(ReportError::UnknownFormat(path.to_path_buf())),
        }
    }
}

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

fn epoch_lines(lines: &[MetricsLine]) -> impl Iterator<Item = &EpochMetrics> {
    lines.iter().filter_map(|l| match l {
        MetricsLine::Epoch(e) => Some(e),
        MetricsLine::Step(_) | MetricsLine::Event(_) => None,
    })
}

fn step_lines(lines: &[MetricsLine]) -> impl Iterator<Item = &StepMetrics> {
    lines.iter().filter_map(|l| match l {
        MetricsLine::Step(s) => Some(s),
        MetricsLine::Epoch(_) | MetricsLine::Event(_) => None,
    })
}

fn host_rss(line: &MetricsLine) -> Option<u64> {
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
struct Curves {
    /// Loss of each logged step, by step.
    step_loss: Vec<(f64, f64)>,
    /// Epoch training loss, at the epoch's last step.
    train_loss: Vec<(f64, f64)>,
    /// Epoch validation loss, at the epoch's last step.
    val_loss: Vec<(f64, f64)>,
    /// Learning rate by step (step and epoch lines).
    lr: Vec<(f64, f64)>,
    /// Host RSS in MiB by step (step and epoch lines that have it).
    rss_mib: Vec<(f64, f64)>,
    /// Validation accuracy by epoch.
    val_accuracy: Vec<(f64, f64)>,
}

impl Curves {
    fn of(lines: &[MetricsLine]) -> Self {
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

/// The range of `values` with 5% room on each side; `fallback` when there are none, and a
/// range of positive width around a single value.
fn span(values: impl Iterator<Item = f64>, fallback: Range<f64>) -> Range<f64> {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return fallback;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1e-3) * 0.1 };
    lo - pad..hi + pad
}

/// The top of an axis that starts at zero: 10% above the largest value (1 without one).
fn upper(points: &[(f64, f64)]) -> f64 {
    let max = points.iter().map(|p| p.1).filter(|v| v.is_finite()).fold(0.0, f64::max);
    if max > 0.0 {
        max * 1.1
    } else {
        1.0
    }
}

fn title(summary: &Summary) -> String {
    let name = summary
        .run_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| summary.run_dir.display().to_string());
    format!("{name}: {} epochs, {} optimizer steps", summary.epochs_completed, summary.steps)
}

/// The picture as the bytes of a file of `format`; `path` only names it in errors.
fn render(path: &Path, format: Format, title: &str, curves: &Curves) -> Result<Vec<u8>, ReportError> {
    let draw_error = |reason: String| ReportError::Draw { path: path.to_path_buf(), reason };
    register_embedded_font().map_err(draw_error)?;
    match format {
        Format::Png => {
            let (w, h) = SIZE;
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                draw(&root, title, curves).and_then(|()| root.present()).map_err(|e| draw_error(e.to_string()))?;
            }
            encode_png(&rgb, SIZE).map_err(|e| draw_error(e.to_string()))
        }
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
                draw(&root, title, curves).and_then(|()| root.present()).map_err(|e| draw_error(e.to_string()))?;
            }
            Ok(svg.into_bytes())
        }
    }
}

/// Registers DejaVu Sans as [`FONT`] once per process (plotters keeps a global font table).
fn register_embedded_font() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    ok.then_some(()).ok_or_else(|| "the embedded DejaVu Sans font does not parse".to_string())
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type DrawResult<T, DB> = Result<T, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Axis descriptions and tick formats of one panel.
struct Axes<'a> {
    caption: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    x: Range<f64>,
    y: Range<f64>,
    x_ticks: &'a dyn Fn(&f64) -> String,
    y_ticks: &'a dyn Fn(&f64) -> String,
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, c: &Curves) -> DrawResult<(), DB> {
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(44);
    top.draw(&Text::new(title, (24, 12), (FONT, 24).into_font().color(&BLACK)))?;
    let panels = body.split_evenly((2, 2));

    let steps = 0.0..c.step_loss.iter().chain(&c.lr).chain(&c.rss_mib).map(|p| p.0).fold(1.0, f64::max);
    let whole = |v: &f64| if v.fract() == 0.0 { format!("{v:.0}") } else { String::new() };

    let loss_points = [&c.step_loss, &c.train_loss, &c.val_loss].iter().map(|s| finite(s)).sum::<usize>();
    let losses = c.step_loss.iter().chain(&c.train_loss).chain(&c.val_loss).map(|p| p.1);
    let loss_axes = Axes {
        caption: "Loss",
        x_desc: "optimizer step",
        y_desc: "loss",
        x: steps.clone(),
        y: span(losses, 0.0..1.0),
        x_ticks: &whole,
        y_ticks: &|v| format!("{v:.2}"),
    };
    let mut chart = panel(&panels[0], loss_axes, loss_points > 0)?;
    series(&mut chart, &c.step_loss, BLUE.mix(0.45).stroke_width(1), 0, "step loss")?;
    series(&mut chart, &c.train_loss, ORANGE.filled().stroke_width(2), 4, "train loss (epoch)")?;
    series(&mut chart, &c.val_loss, GREEN.filled().stroke_width(2), 4, "val loss (epoch)")?;
    if loss_points > 0 {
        legend(&mut chart)?;
    }
    no_data(&panels[0], loss_points == 0, "no finite loss logged")?;

    let lr_axes = Axes {
        caption: "Learning rate",
        x_desc: "optimizer step",
        y_desc: "learning rate",
        x: steps.clone(),
        // From zero, so that a warm-up or a decay to zero reads as such.
        y: 0.0..upper(&c.lr),
        x_ticks: &whole,
        y_ticks: &|v| format!("{v:.1e}"),
    };
    one_curve(&panels[1], lr_axes, &c.lr, PURPLE.stroke_width(2), 0, "no learning rate logged")?;

    let rss_axes = Axes {
        caption: "Host memory (resident set)",
        x_desc: "optimizer step",
        y_desc: "MiB",
        x: steps,
        // From zero: memory is read as an amount, and a zoomed axis makes a few MiB of
        // allocator noise look like a leak.
        y: 0.0..upper(&c.rss_mib),
        x_ticks: &whole,
        y_ticks: &|v| format!("{v:.0}"),
    };
    one_curve(&panels[2], rss_axes, &c.rss_mib, RED.stroke_width(2), 0, "no memory figures logged")?;

    let epochs = c.val_accuracy.iter().map(|p| p.0).fold(1.0, f64::max);
    let accuracy = span(c.val_accuracy.iter().map(|p| p.1), 0.0..1.0);
    let accuracy_axes = Axes {
        caption: "Validation accuracy",
        x_desc: "epoch",
        y_desc: "accuracy",
        x: 0.5..epochs + 0.5,
        y: accuracy.start.max(0.0)..accuracy.end.min(1.0),
        x_ticks: &whole,
        y_ticks: &|v| format!("{v:.3}"),
    };
    let style = GREEN.filled().stroke_width(2);
    one_curve(&panels[3], accuracy_axes, &c.val_accuracy, style, 4, "no epoch completed yet")
}

/// A panel holding one unlabelled curve, or `missing` when it has no point.
fn one_curve<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    axes: Axes<'_>,
    points: &[(f64, f64)],
    style: ShapeStyle,
    marker: u32,
    missing: &str,
) -> DrawResult<(), DB> {
    let empty = finite(points) == 0;
    let mut chart = panel(area, axes, !empty)?;
    series(&mut chart, points, style, marker, "")?;
    no_data(area, empty, missing)
}

/// A panel's frame, caption, grid and labelled axes.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    axes: Axes<'_>,
    has_data: bool,
) -> DrawResult<Chart<'a, DB>, DB> {
    let mut chart = ChartBuilder::on(area)
        .caption(axes.caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(axes.x, axes.y)?;
    chart
        .configure_mesh()
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
        .axis_desc_style((FONT, 15))
        .label_style((FONT, 13))
        .x_label_formatter(axes.x_ticks)
        .y_label_formatter(axes.y_ticks)
        // Without data the y range is a placeholder: its ticks would only mislead.
        .y_labels(if has_data { 10 } else { 0 })
        .light_line_style(BLACK.mix(0.05))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    Ok(chart)
}

/// How many of `points` have a finite value.
fn finite(points: &[(f64, f64)]) -> usize {
    points.iter().filter(|p| p.1.is_finite()).count()
}

/// The runs of consecutive finite points: the pieces of a line broken by non-finite values.
fn segments(points: &[(f64, f64)]) -> Vec<&[(f64, f64)]> {
    points.split(|p| !p.1.is_finite()).filter(|s| !s.is_empty()).collect()
}

/// Draws `points` as a line broken at non-finite values (with markers of radius `marker`
/// when non-zero; a point standing alone between gaps always gets one), in the legend under
/// `label` unless it is empty.
fn series<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    points: &[(f64, f64)],
    style: ShapeStyle,
    marker: u32,
    label: &str,
) -> DrawResult<(), DB> {
    for (i, piece) in segments(points).into_iter().enumerate() {
        let size = if piece.len() == 1 { marker.max(2) } else { marker };
        let drawn = chart.draw_series(LineSeries::new(piece.iter().copied(), style).point_size(size))?;
        if i == 0 && !label.is_empty() {
            drawn.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style.stroke_width(2)));
        }
    }
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>) -> DrawResult<(), DB> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
}

/// Writes `message` in the middle of a panel that has nothing to show.
fn no_data<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, empty: bool, message: &str) -> DrawResult<(), DB> {
    if !empty {
        return Ok(());
    }
    let (w, h) = area.dim_in_pixel();
    let grey = BLACK.mix(0.5);
    let style = TextStyle::from((FONT, 16).into_font()).color(&grey).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(message, (w as i32 / 2, h as i32 / 2), style))
}

#[cfg(test)]
mod tests {
    use super::*;

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
