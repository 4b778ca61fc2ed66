//! The sweep's scatter: each run's SFT → GRPO change in distribution against its change
//! cross-site, one colour per cell, so the spread over seeds is seen beside the means.

use std::path::Path;

use plotters::prelude::*;

use crate::error::Result;
use crate::study::plots::{COLOURS, create_parent, draw_legend, fonts, plot_error, range, tick};

/// One cell's points.
pub struct ScatterGroup {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A scatter of `groups` with the axes' zero lines drawn, titled `title`.
pub fn delta_scatter(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    groups: &[ScatterGroup],
) -> Result<()> {
    fonts();
    create_parent(path)?;
    let all = || groups.iter().flat_map(|g| g.points.iter());
    // Zero is always on both axes: the question is which side of it the points fall.
    let (x0, x1) = range(all().map(|p| p.0).chain([0.0]));
    let (y0, y1) = range(all().map(|p| p.1).chain([0.0]));
    let legend = 0.08 * groups.len() as f64 + 0.06;
    let y1 = y1 + (y1 - y0) * legend / (1.0 - legend).max(0.2);
    let root = BitMapBackend::new(path, (760, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| tick(*x))
        .y_label_formatter(&|y| tick(*y))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    let axis = BLACK.mix(0.4);
    chart
        .draw_series(LineSeries::new([(0.0, y0), (0.0, y1)], axis))
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(LineSeries::new([(x0, 0.0), (x1, 0.0)], axis))
        .map_err(|e| plot_error(path, e))?;
    for (i, group) in groups.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let finite: Vec<(f64, f64)> = group
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(finite.iter().map(|&p| Circle::new(p, 5, colour.filled())))
            .map_err(|e| plot_error(path, e))?
            .label(group.name.as_str())
            .legend(move |(x, y)| Circle::new((x + 6, y), 5, colour.filled()));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft, path)?;
    root.present().map_err(|e| plot_error(path, e))
}
