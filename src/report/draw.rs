//! Drawing the report's picture with plotters: the 2×2 grid of panels (see the module
//! above), PNG or SVG, with the embedded font.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::curves::Curves;
use super::error::ReportError;

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

/// Picture size in pixels (SVG user units): four panels with room for their tick labels.
const SIZE: (u32, u32) = (1400, 900);
/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";

// Matplotlib's "tab10" colours: familiar to anyone who has looked at PyTorch training curves.
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);
const PURPLE: RGBColor = RGBColor(148, 103, 189);

pub(super) fn span(values: impl Iterator<Item = f64>, fallback: Range<f64>) -> Range<f64> {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return fallback;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1e-3) * 0.1 };
    lo - pad..hi + pad
}

/// The top of an axis that starts at zero: 10% above the largest value (1 without one).
pub(super) fn upper(points: &[(f64, f64)]) -> f64 {
    let max = points.iter().map(|p| p.1).filter(|v| v.is_finite()).fold(0.0, f64::max);
    if max > 0.0 {
        max * 1.1
    } else {
        1.0
    }
}

/// The picture as the bytes of a file of `format`; `path` only names it in errors.
pub(super) fn render(path: &Path, format: Format, title: &str, curves: &Curves) -> Result<Vec<u8>, ReportError> {
    let draw_error = |reason: String| ReportError::Draw { path: path.to_path_buf(), reason };
    register_embedded_font().map_err(|e| draw_error(e.to_string()))?;
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

/// The embedded font could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the embedded DejaVu Sans font does not parse")]
struct FontError;

/// Registers DejaVu Sans as [`FONT`] once per process (plotters keeps a global font table).
fn register_embedded_font() -> Result<(), FontError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    ok.then_some(()).ok_or(FontError)
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
pub(super) fn segments(points: &[(f64, f64)]) -> Vec<&[(f64, f64)]> {
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
