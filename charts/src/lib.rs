//! SVG line charts for the reports `bench/run` and the reliability run
//! write: at most six named series of (x, y) points, each with its own
//! colour and marker, the legend beside the plot (never over the data),
//! optionally on a log₂ x axis (concurrency 1, 16, 64, 256 spreads evenly)
//! or a log₁₀ one (10, 100, 1000 plugins), drawn with plotters' SVG
//! backend. No fonts are loaded; the SVG names a generic sans-serif family.
//!
//! ```
//! let chart = iicp_charts::LineChart {
//!     title: "Throughput".into(),
//!     x_label: "concurrency".into(),
//!     y_label: "requests/s".into(),
//!     x_scale: iicp_charts::XScale::Log2,
//!     series: vec![iicp_charts::Series::new("native", vec![(1.0, 900.0), (64.0, 9000.0)])],
//! };
//! let svg = iicp_charts::render_svg(&chart).unwrap();
//! assert!(svg.starts_with("<svg"));
//! ```

#![deny(missing_docs)]

use plotters::prelude::*;

/// Picture size, in SVG pixels.
const SIZE: (u32, u32) = (900, 400);
/// Width of the legend column right of the plot.
const LEGEND_WIDTH: u32 = 210;
/// Series colours, in order (colour-blind-safe Okabe–Ito hues).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// One named line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// Its points, in x order.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series called `label`.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.into(),
            points,
        }
    }
}

/// How the x axis is spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XScale {
    /// Evenly.
    Linear,
    /// By log₂ (concurrency levels), one tick per power of two.
    Log2,
    /// By log₁₀ (counts spanning decades), one tick per power of ten.
    Log10,
}

impl XScale {
    fn axis_at(self, x: f64) -> f64 {
        match self {
            XScale::Linear => x,
            XScale::Log2 => x.log2(),
            XScale::Log10 => x.log10(),
        }
    }

    fn value_at(self, x: f64) -> f64 {
        match self {
            XScale::Linear => x,
            XScale::Log2 => x.exp2(),
            XScale::Log10 => 10f64.powf(x),
        }
    }
}

/// Marker shapes, in series order: with the palette, no two series look
/// alike even in grey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Circle,
    Square,
    Triangle,
    Cross,
    HollowCircle,
    HollowSquare,
}

const MARKERS: [Marker; 6] = [
    Marker::Circle,
    Marker::Square,
    Marker::Triangle,
    Marker::Cross,
    Marker::HollowCircle,
    Marker::HollowSquare,
];

/// Expands `$draw!(shape)` with the shape of `$marker` in `$colour`, its
/// centre at the element's anchor (offsets in pixels). A macro, not a
/// function: plotters draws each shape type through its own generic path.
macro_rules! with_marker_shape {
    ($marker:expr, $colour:expr, $draw:ident) => {{
        let (filled, line) = ($colour.filled(), $colour.stroke_width(2));
        match $marker {
            Marker::Circle => $draw!(Circle::new((0, 0), 4, filled)),
            Marker::HollowCircle => $draw!(Circle::new((0, 0), 4, line)),
            Marker::Square => $draw!(Rectangle::new([(-4, -4), (4, 4)], filled)),
            Marker::HollowSquare => $draw!(Rectangle::new([(-4, -4), (4, 4)], line)),
            Marker::Triangle => $draw!(TriangleMarker::new((0, 0), 5, filled)),
            Marker::Cross => $draw!(Cross::new((0, 0), 4, line)),
        }
    }};
}

/// A line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Shown above the plot.
    pub title: String,
    /// The x axis' name and unit.
    pub x_label: String,
    /// The y axis' name and unit.
    pub y_label: String,
    /// How x is spaced.
    pub x_scale: XScale,
    /// The lines.
    pub series: Vec<Series>,
}

/// Renders `chart` as an SVG document. Errs when there is nothing to draw,
/// a value is not finite, or there are more series than colours and
/// markers (six): split such a chart by question instead.
pub fn render_svg(chart: &LineChart) -> Result<String, String> {
    if chart.series.len() > PALETTE.len() {
        return Err(format!(
            "{}: {} series; at most {} stay apart",
            chart.title,
            chart.series.len(),
            PALETTE.len()
        ));
    }
    let points: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    if points.is_empty() {
        return Err(format!("{}: no points to draw", chart.title));
    }
    if points.iter().any(|(x, y)| !x.is_finite() || !y.is_finite()) {
        return Err(format!("{}: a value is not finite", chart.title));
    }
    let scale = chart.x_scale;
    if scale != XScale::Linear && points.iter().any(|(x, _)| *x <= 0.0) {
        return Err(format!("{}: a log-scale x must be positive", chart.title));
    }
    let (x_min, x_max) = bounds(points.iter().map(|(x, _)| scale.axis_at(*x)));
    let (_, y_max) = bounds(points.iter().map(|(_, y)| *y));
    let y_top = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let (x_min, x_max) = if x_max > x_min {
        (x_min, x_max)
    } else {
        (x_min - 1.0, x_max + 1.0)
    };
    // On a log axis, one tick per power of its base (1, 2, 4, … 256).
    let x_ticks = match scale {
        XScale::Linear => 7,
        _ => (x_max - x_min).round() as usize + 1,
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
        let mut plot = ChartBuilder::on(&plot_area)
            .caption(&chart.title, ("sans-serif", 20))
            .margin(12)
            .margin_right(16)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x_min..x_max, 0.0..y_top)
            .map_err(|e| e.to_string())?;
        plot.configure_mesh()
            .x_desc(&chart.x_label)
            .y_desc(&chart.y_label)
            .x_labels(x_ticks)
            .x_label_formatter(&|x| compact(scale.value_at(*x)))
            .y_label_formatter(&|y| compact(*y))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| e.to_string())?;
        for (index, series) in chart.series.iter().enumerate() {
            let (colour, marker) = (PALETTE[index], MARKERS[index]);
            let line: Vec<(f64, f64)> = (series.points.iter())
                .map(|(x, y)| (scale.axis_at(*x), *y))
                .collect();
            plot.draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            if line.len() <= 32 {
                macro_rules! on_plot {
                    ($shape:expr) => {
                        plot.draw_series(line.iter().map(|p| EmptyElement::at(*p) + $shape))
                            .map(|_| ())
                    };
                }
                with_marker_shape!(marker, colour, on_plot).map_err(|e| e.to_string())?;
            }
        }
        // The legend: its own column right of the plot, one row per series
        // with its line and marker, so it never hides a point.
        let top = 48;
        for (index, series) in chart.series.iter().enumerate() {
            let (colour, marker) = (PALETTE[index], MARKERS[index]);
            let y = top + 26 * index as i32;
            legend_area
                .draw(&PathElement::new(
                    vec![(4, y), (34, y)],
                    colour.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            macro_rules! on_legend {
                ($shape:expr) => {
                    legend_area.draw(&(EmptyElement::at((19, y)) + $shape))
                };
            }
            with_marker_shape!(marker, colour, on_legend).map_err(|e| e.to_string())?;
            legend_area
                .draw(&Text::new(
                    series.label.clone(),
                    (42, y - 8),
                    ("sans-serif", 14).into_font().color(&BLACK),
                ))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// 1234 → "1.2k", 0.25 → "0.25", 12 → "12".
fn compact(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if magnitude >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if magnitude >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else if magnitude >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>) -> LineChart {
        LineChart {
            title: "Throughput".into(),
            x_label: "concurrency".into(),
            y_label: "req/s".into(),
            x_scale: XScale::Log2,
            series,
        }
    }

    #[test]
    fn every_series_and_label_is_drawn() {
        let svg = render_svg(&chart(vec![
            Series::new(
                "native",
                vec![(1.0, 1000.0), (16.0, 8000.0), (256.0, 9000.0)],
            ),
            Series::new(
                "iicp-host",
                vec![(1.0, 900.0), (16.0, 7000.0), (256.0, 9500.0)],
            ),
        ]))
        .unwrap();
        if let Some(path) = std::env::var_os("IICP_CHARTS_SAMPLE") {
            std::fs::write(path, &svg).unwrap();
        }
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "Throughput",
            "concurrency",
            "req/s",
            "native",
            "iicp-host",
            "\n256\n",
            "\n16\n",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Each series in its own colour.
        assert!(svg.contains("#0072B2") && svg.contains("#D55E00"), "{svg}");
    }

    #[test]
    fn nothing_or_nonsense_is_an_error() {
        assert!(render_svg(&chart(vec![])).is_err());
        assert!(render_svg(&chart(vec![Series::new("x", vec![(0.0, 1.0)])])).is_err());
        assert!(render_svg(&chart(vec![Series::new("x", vec![(1.0, f64::NAN)])])).is_err());
        let seven = (0..7)
            .map(|i| Series::new(format!("s{i}"), vec![(1.0, 1.0)]))
            .collect();
        assert!(
            render_svg(&chart(seven)).is_err(),
            "more series than colours and markers"
        );
    }

    #[test]
    fn numbers_are_compact() {
        assert_eq!(compact(12345.0), "12k");
        assert_eq!(compact(1500.0), "1.5k");
        assert_eq!(compact(64.0), "64");
        assert_eq!(compact(0.25), "0.25");
    }
}
