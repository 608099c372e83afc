//! Figures as SVG text (plotters' SVG backend; no fonts or system libraries
//! needed): density curves per group, line plots over training, and
//! matrices as heatmaps.

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
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
    /// What its colour shows (e.g. the run's final accuracy): curves are
    /// coloured on the viridis scale by it; `None` colours them in order.
    pub value: Option<f64>,
}

/// Each curve's colour: by its value where curves have one (low to high),
/// else by its place in order.
fn colours(curves: &[Curve]) -> Vec<RGBColor> {
    let values: Vec<f64> = curves.iter().filter_map(|c| c.value).filter(|v| v.is_finite()).collect();
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    curves
        .iter()
        .enumerate()
        .map(|(i, c)| match c.value {
            Some(v) if v.is_finite() && hi > lo => ViridisRGB::get_color(0.9 * (v - lo) / (hi - lo)),
            Some(v) if v.is_finite() => shade(0, 1),
            _ => shade(i, curves.len()),
        })
        .collect()
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

/// The range of the finite points of `curves`, padded; a unit square when
/// there are none.
fn extent<'a>(curves: impl Iterator<Item = &'a Curve>) -> ((f64, f64), (f64, f64)) {
    let pts = curves.flat_map(|c| c.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !(x0 <= x1 && y0 <= y1) {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| if a < b { (b - a) * 0.04 } else { 0.5 };
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    ((x0 - px, x1 + px), (y0 - py, y1 + py))
}

/// Curves in one panel, with the legend beside the plot (never over the
/// lines); coloured by their values where they have them (the legend's
/// title `colour` says what), else in order.
pub fn lines(title: &str, x_label: &str, y_label: &str, colour: &str, curves: &[Curve]) -> Result<String, String> {
    let ((x0, x1), (y0, y1)) = extent(curves.iter());
    let colors = colours(curves);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0 + 200, SIZE.1)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot, legend) = root.split_horizontally(SIZE.0);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        // Whole-number x values (epochs, steps) get whole-number ticks.
        let whole = |x: &f64| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_label).y_desc(y_label).light_line_style(WHITE.mix(0.0));
        if curves.iter().flat_map(|c| &c.points).all(|(x, _)| x.fract() == 0.0) {
            mesh.x_label_formatter(&whole);
        }
        mesh.draw().map_err(err)?;
        for (c, &color) in curves.iter().zip(&colors) {
            let series = LineSeries::new(
                c.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()),
                color.stroke_width(2),
            );
            chart.draw_series(series).map_err(err)?;
        }
        // The legend: at most 30 entries, then how many more.
        let font = ("sans-serif", 12).into_font();
        legend.draw(&Text::new(colour.to_string(), (8, 40), font.clone().style(FontStyle::Bold))).map_err(err)?;
        let shown = curves.len().min(30);
        for (k, (c, &color)) in curves.iter().zip(&colors).take(shown).enumerate() {
            let y = 58 + 15 * k as i32;
            legend.draw(&PathElement::new(vec![(8, y), (26, y)], color.stroke_width(3))).map_err(err)?;
            legend.draw(&Text::new(c.name.clone(), (32, y - 6), font.clone())).map_err(err)?;
        }
        if curves.len() > shown {
            let y = 58 + 15 * shown as i32;
            legend.draw(&Text::new(format!("... {} more", curves.len() - shown), (8, y - 6), font)).map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Densities of several groups as small multiples: one panel per group on a
/// shared x axis, each with its own y scale (so a narrow density never
/// flattens the others), titled with the group's name and size.
pub fn densities(title: &str, x_label: &str, y_label: &str, curves: &[Curve]) -> Result<String, String> {
    let ((x0, x1), _) = extent(curves.iter());
    let colors = colours(curves);
    let n = curves.len().max(1);
    let cols = n.clamp(1, 3);
    let rows = n.div_ceil(cols);
    let (w, h) = (300 * cols as u32, 48 + 210 * rows as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 18)).map_err(err)?;
        let panels = root.split_evenly((rows, cols));
        for ((c, &color), panel) in curves.iter().zip(&colors).zip(&panels) {
            let (_, (y0, y1)) = extent(std::iter::once(c));
            let mut chart = ChartBuilder::on(panel)
                .caption(&c.name, ("sans-serif", 13))
                .margin(6)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(x0..x1, 0f64.min(y0)..y1)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .x_labels(4)
                .y_labels(4)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(err)?;
            let pts: Vec<(f64, f64)> =
                c.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
            chart
                .draw_series(AreaSeries::new(pts, 0.0, color.mix(0.25)).border_style(color.stroke_width(2)))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// An axis of `n` unit cells over `[0, n]`, ticked at each cell's centre
/// (plotters' segmented axes hold a segment past the last value).
struct Cells(usize);

impl Ranged for Cells {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (from, to): (i32, i32)) -> i32 {
        from + (value / self.0 as f64 * f64::from(to - from)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _: Hint) -> Vec<f64> {
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.0 as f64
    }
}

impl ValueFormatter<f64> for Cells {
    fn format(value: &f64) -> String {
        value.to_string()
    }
}

/// A square matrix as a heatmap (darker = smaller), each cell's value
/// written in it, a colour bar beside it; an infinite cell is grey with a
/// dark outline and says `inf`, a NaN cell is light grey and says `NaN`
/// (never the colour of 0).
pub fn heatmap(title: &str, labels: &[String], values: &[Vec<f64>]) -> Result<String, String> {
    let n = labels.len();
    let max = values.iter().flatten().copied().filter(|v| v.is_finite()).fold(0.0f64, f64::max).max(f64::MIN_POSITIVE);
    let non_finite = values.iter().flatten().any(|v| !v.is_finite());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (660, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (matrix, bar) = root.split_horizontally(560);
        // Cell `(i, j)` is the square `[j, j + 1] x [i, i + 1]`; the labels
        // sit at the centres, and nothing lies past the last cell.
        let mut chart = ChartBuilder::on(&matrix)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(70)
            .y_label_area_size(110)
            .build_cartesian_2d(Cells(n), Cells(n))
            .map_err(err)?;
        let label = |v: &f64| labels.get(v.floor().max(0.0) as usize).cloned().unwrap_or_default();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_label_formatter(&label)
            .y_label_formatter(&label)
            .draw()
            .map_err(err)?;
        let grey = RGBColor(150, 150, 150);
        for (i, row) in values.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let (x, y) = (j as f64, i as f64);
                let corners = [(x, y), (x + 1.0, y + 1.0)];
                let (fill, text, ink) = if v.is_finite() {
                    let t = v / max;
                    (ViridisRGB::get_color(t), format!("{v:.3}"), if t > 0.6 { BLACK } else { WHITE })
                } else if v.is_nan() {
                    (RGBColor(225, 225, 225), "NaN".to_string(), BLACK)
                } else {
                    (RGBColor(190, 190, 190), "inf".to_string(), BLACK)
                };
                chart.draw_series(std::iter::once(Rectangle::new(corners, fill.filled()))).map_err(err)?;
                if v.is_infinite() {
                    chart.draw_series(std::iter::once(Rectangle::new(corners, grey.stroke_width(3)))).map_err(err)?;
                }
                let style = ("sans-serif", 12).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                chart.draw_series(std::iter::once(Text::new(text, (x + 0.5, y + 0.5), style))).map_err(err)?;
            }
        }
        // The colour bar: 0 at the bottom, the largest finite value at the top.
        let (top, bottom) = (60i32, 420i32);
        let steps = 60;
        for k in 0..steps {
            let t = k as f64 / (steps - 1) as f64;
            let y = bottom - ((bottom - top) as f64 * t) as i32;
            bar.draw(&Rectangle::new([(10, y - 7), (34, y)], ViridisRGB::get_color(t).filled())).map_err(err)?;
        }
        bar.draw(&Rectangle::new([(10, top - 7), (34, bottom)], BLACK.stroke_width(1))).map_err(err)?;
        let font = ("sans-serif", 12).into_font();
        bar.draw(&Text::new(format!("{max:.3}"), (38, top - 10), font.clone())).map_err(err)?;
        bar.draw(&Text::new("0".to_string(), (38, bottom - 8), font.clone())).map_err(err)?;
        if non_finite {
            bar.draw(&Rectangle::new([(10, bottom + 20), (34, bottom + 34)], RGBColor(190, 190, 190).filled()))
                .map_err(err)?;
            bar.draw(&Text::new("inf".to_string(), (38, bottom + 21), font.clone())).map_err(err)?;
            bar.draw(&Rectangle::new([(10, bottom + 40), (34, bottom + 54)], RGBColor(225, 225, 225).filled()))
                .map_err(err)?;
            bar.draw(&Text::new("NaN".to_string(), (38, bottom + 41), font)).map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts an SVG shows.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim().to_string()))
            .collect()
    }

    /// `(x, y, width, height)` of each rectangle an SVG draws.
    fn rects(svg: &str) -> Vec<[f64; 4]> {
        let attr = |t: &str, name: &str| -> f64 {
            let at = t.find(&format!(" {name}=\"")).expect("attribute") + name.len() + 3;
            t[at..].split('"').next().unwrap().parse().unwrap()
        };
        svg.split("<rect").skip(1).map(|t| ["x", "y", "width", "height"].map(|a| attr(t, a))).collect()
    }

    #[test]
    fn heatmap_cells_fill_the_axes() {
        for n in 1..=4 {
            let labels: Vec<String> = (0..n).map(|i| format!("g{i}")).collect();
            let values = vec![vec![0.5; n]; n];
            let svg = heatmap("t", &labels, &values).unwrap();
            // The matrix's cells: left of the colour bar, not the background.
            let cells: Vec<[f64; 4]> = rects(&svg).into_iter().filter(|r| r[0] > 0.0 && r[0] < 560.0).collect();
            assert_eq!(cells.len(), n * n, "{n} groups");
            // The x axis: the longest horizontal line.
            let axis_end = svg
                .split("points=\"")
                .skip(1)
                .filter_map(|p| {
                    let pts: Vec<[f64; 2]> = p
                        .split('"')
                        .next()?
                        .split_whitespace()
                        .map(|xy| {
                            let (x, y) = xy.split_once(',').unwrap();
                            [x.parse().unwrap(), y.parse().unwrap()]
                        })
                        .collect();
                    (pts.len() == 2 && pts[0][1] == pts[1][1]).then(|| (pts[1][0] - pts[0][0], pts[1][0]))
                })
                .fold((0.0, 0.0), |a: (f64, f64), b| if b.0 > a.0 { b } else { a })
                .1;
            let right = cells.iter().map(|r| r[0] + r[2]).fold(0.0, f64::max);
            assert!((right - axis_end).abs() <= 2.0, "{n} groups: cells end at {right}, the axis at {axis_end}");
        }
    }

    #[test]
    fn heatmaps_mark_infinite_and_nan_cells_and_have_a_colour_bar() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let svg = heatmap("t", &labels, &[vec![0.0, f64::INFINITY], vec![f64::NAN, 2.0]]).unwrap();
        let shown = texts(&svg);
        assert!(shown.iter().any(|t| t == "inf") && shown.iter().any(|t| t == "NaN"), "{shown:?}");
        // The colour of 0 (viridis' dark end) is not an infinite cell's.
        assert!(svg.contains("#BEBEBE") || svg.to_lowercase().contains("#bebebe"));
        assert!(shown.iter().filter(|t| *t == "2.000").count() == 2, "the cell and the colour bar's top: {shown:?}");
    }

    #[test]
    fn epochs_are_labelled_as_whole_numbers() {
        let run = |name: &str, x0: f64| Curve {
            name: name.into(),
            points: (0..8).map(|i| (x0 + i as f64, (i * i) as f64 / 700.0)).collect(),
            value: None,
        };
        let shown = texts(&lines("t", "epoch", "y", "run", &[run("a", 1.0)]).unwrap());
        assert!(shown.iter().any(|t| t == "1") && shown.iter().any(|t| t == "8"), "{shown:?}");
        // (the y axis, 0 to 0.07, has no label of the form "1.0")
        assert!(!shown.iter().any(|t| t == "1.0" || t == "8.0" || t == "1.5"), "{shown:?}");
        // Fractional x values keep the default labels.
        let shown = texts(&lines("t", "x", "y", "run", &[run("b", 0.25)]).unwrap());
        assert!(shown.iter().any(|t| t.contains('.') && t.parse::<f64>().is_ok_and(|v| v >= 0.25)), "{shown:?}");
    }

    #[test]
    fn densities_give_every_group_its_own_panel_and_scale() {
        let curve = |name: &str, peak: f64| Curve {
            name: name.into(),
            points: (0..50).map(|i| (i as f64, if i == 25 { peak } else { 0.001 })).collect(),
            value: None,
        };
        let svg =
            densities("t", "x", "density", &[curve("narrow (n = 3)", 5.0), curve("wide (n = 900)", 0.01)]).unwrap();
        let shown = texts(&svg);
        assert!(shown.iter().any(|t| t == "narrow (n = 3)") && shown.iter().any(|t| t == "wide (n = 900)"));
        // The wide group's panel has its own axis, up to its own peak (a
        // shared one would end at 5).
        let ticks: Vec<f64> = shown.iter().filter_map(|t| t.parse().ok()).collect();
        assert!(ticks.iter().any(|&v| v > 0.0 && v < 0.02), "{shown:?}");
    }
}
