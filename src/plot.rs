//! Figures as SVG text (plotters' SVG backend; no fonts or system libraries
//! needed): density curves per group, line plots over training, and
//! matrices as heatmaps.

use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Size of every figure, in pixels.
const SIZE: (u32, u32) = (720, 420);

/// One named curve.
pub struct Curve {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points in order.
    pub points: Vec<(f64, f64)>,
}

/// Colour `i` of `n` on the viridis scale (low to high).
fn shade(i: usize, n: usize) -> RGBColor {
    let t = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.5 };
    // Stop short of viridis' pale yellow end, which vanishes on white.
    ViridisRGB::get_color(0.9 * t)
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("plot: {e:?}")
}

/// Curves coloured in order on the viridis scale (for groups, low to high
/// accuracy), with a legend.
pub fn lines(title: &str, x_label: &str, y_label: &str, curves: &[Curve]) -> Result<String, String> {
    let pts = curves.iter().flat_map(|c| c.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !(x0 <= x1 && y0 <= y1) {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| if a < b { (b - a) * 0.04 } else { 0.5 };
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
            .map_err(err)?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).light_line_style(WHITE.mix(0.0)).draw().map_err(err)?;
        for (i, c) in curves.iter().enumerate() {
            let color = shade(i, curves.len());
            let series = LineSeries::new(
                c.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()),
                color.stroke_width(2),
            );
            chart
                .draw_series(series)
                .map_err(err)?
                .label(c.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A square matrix as a heatmap (darker = smaller), with each cell's value.
pub fn heatmap(title: &str, labels: &[String], values: &[Vec<f64>]) -> Result<String, String> {
    let n = labels.len();
    let max = values.iter().flatten().copied().filter(|v| v.is_finite()).fold(0.0f64, f64::max).max(f64::MIN_POSITIVE);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let n = n as i32;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(70)
            .y_label_area_size(110)
            .build_cartesian_2d((0..n).into_segmented(), (0..n).into_segmented())
            .map_err(err)?;
        let label = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(labels.len() + 1)
            .y_labels(labels.len() + 1)
            .x_label_formatter(&label)
            .y_label_formatter(&label)
            .draw()
            .map_err(err)?;
        for (i, row) in values.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let t = if v.is_finite() { v / max } else { 0.0 };
                let (x, y) = (j as i32, i as i32);
                let corners = [
                    (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                ];
                chart
                    .draw_series(std::iter::once(Rectangle::new(corners, ViridisRGB::get_color(t).filled())))
                    .map_err(err)?;
                let color = if t > 0.6 { BLACK } else { WHITE };
                let style = ("sans-serif", 12).into_font().color(&color).pos(Pos::new(HPos::Center, VPos::Center));
                let at = (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y));
                chart.draw_series(std::iter::once(Text::new(format!("{v:.3}"), at, style))).map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}
