//! PNG figures for the report: line panels (training curves) and grouped bars (per-label F1).
//! Text is drawn with a font compiled into the binary, so figures need no system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::error::{Error, Result};

/// One named line: `(x, y)` points.
pub type Series = (String, Vec<(f64, f64)>);

/// One panel of a line figure.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

pub(crate) const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

pub(crate) fn fonts() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // Only fails on a malformed font, and this one is compiled in.
        let _ = register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

pub(crate) fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

pub(crate) fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub(crate) fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    // A flat series (e.g. clip fractions of 0 when every ratio is 1) still gets a readable axis.
    let pad = if hi - lo < 1e-12 {
        (lo.abs() * 0.1).max(0.05)
    } else {
        (hi - lo) * 0.08
    };
    (lo - pad, hi + pad)
}

/// The chart of a line or scatter figure.
pub(crate) type XyChart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The legend of a line or scatter figure, on a light box at `position`.
pub(crate) fn draw_legend<'a, 'b: 'a>(
    chart: &mut XyChart<'a, 'b>,
    position: SeriesLabelPosition,
    path: &Path,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|e| plot_error(path, e))
}

/// A tick value without trailing zeros: `10`, `0.25`, `0.003`.
pub(crate) fn tick(v: f64) -> String {
    let text = format!("{v:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

/// A trailing mean over `window` points, for noisy per-step curves.
pub fn rolling_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let from = (i + 1).saturating_sub(window);
            let slice = &points[from..=i];
            (
                x,
                slice.iter().map(|p| p.1).sum::<f64>() / slice.len() as f64,
            )
        })
        .collect()
}

/// The share of a panel's plotting height its legend takes: about 8% a row plus the frame.
fn legend_share(rows: usize) -> f64 {
    (0.06 + 0.08 * rows as f64).min(0.6)
}

/// Panels side by side in rows of `columns`, each with its own axes and legend.
pub fn line_panels(path: &Path, title: &str, panels: &[Panel], columns: usize) -> Result<()> {
    fonts();
    create_parent(path)?;
    let columns = columns.max(1);
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (420 * columns as u32, 300 * rows as u32 + 40);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| plot_error(path, e))?;
    for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
        let points = || panel.series.iter().flat_map(|(_, p)| p.iter());
        let (x0, x1) = range(points().map(|p| p.0));
        let (y0, mut y1) = range(points().map(|p| p.1));
        if panel.series.len() > 1 {
            // Headroom above the data for the legend, which otherwise hides the curves' ends.
            let share = legend_share(panel.series.len());
            y1 += (y1 - y0) * share / (1.0 - share);
        }
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_error(path, e))?;
        chart
            .configure_mesh()
            .x_desc(panel.x_label.as_str())
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| plot_error(path, e))?;
        for (i, (name, points)) in panel.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let finite: Vec<(f64, f64)> = points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let style = colour.stroke_width(2);
            chart
                .draw_series(LineSeries::new(finite.clone(), style))
                .map_err(|e| plot_error(path, e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
            // Few points read better as markers.
            if finite.len() <= 12 {
                chart
                    .draw_series(finite.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| plot_error(path, e))?;
            }
        }
        if panel.series.len() > 1 {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, path)?;
        }
    }
    root.present().map_err(|e| plot_error(path, e))
}

/// Horizontal bars grouped by category (e.g. labels, top to bottom), one colour per group
/// (e.g. checkpoint), on [0, 1].
pub fn grouped_bars(
    path: &Path,
    title: &str,
    categories: &[String],
    groups: &[(String, Vec<f64>)],
) -> Result<()> {
    fonts();
    create_parent(path)?;
    let n = categories.len();
    let height = (n as u32 * (14 * groups.len().max(1) as u32 + 16)).max(300) + 130;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(190)
        .build_cartesian_2d(0f64..1.0f64, 0f64..n as f64)
        .map_err(|e| plot_error(path, e))?;
    let names = categories.to_vec();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE.mix(0.0))
        .y_labels(n * 2 + 1)
        .y_label_formatter(&move |y| {
            // Names sit at the centres of the rows (first category on top); other ticks stay
            // blank.
            let row = y.floor();
            if ((y - row) - 0.5).abs() < 1e-6 && row >= 0.0 && (row as usize) < n {
                names[n - 1 - row as usize].clone()
            } else {
                String::new()
            }
        })
        .y_label_style(("sans-serif", 13))
        .x_desc("F1")
        .draw()
        .map_err(|e| plot_error(path, e))?;
    let thickness = 0.8 / groups.len().max(1) as f64;
    for (g, (name, values)) in groups.iter().enumerate() {
        let colour = COLOURS[g % COLOURS.len()];
        chart
            .draw_series(values.iter().enumerate().map(|(c, v)| {
                let top = (n - c) as f64 - 0.1 - g as f64 * thickness;
                let v = if v.is_finite() { *v } else { 0.0 };
                Rectangle::new([(0.0, top - thickness), (v, top)], colour.filled())
            }))
            .map_err(|e| plot_error(path, e))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}
