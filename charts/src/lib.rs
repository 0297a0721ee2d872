//! SVG line charts for the reports `bench/run` and the reliability run
//! write: a few named series of (x, y) points, optionally on a log₂ x axis
//! (concurrency 1, 16, 64, 256 spreads evenly), drawn with plotters' SVG
//! backend. No fonts are loaded; the SVG names a generic sans-serif family.
//!
//! ```
//! let chart = iicp_charts::LineChart {
//!     title: "Throughput".into(),
//!     x_label: "concurrency".into(),
//!     y_label: "requests/s".into(),
//!     log2_x: true,
//!     series: vec![iicp_charts::Series::new("native", vec![(1.0, 900.0), (64.0, 9000.0)])],
//! };
//! let svg = iicp_charts::render_svg(&chart).unwrap();
//! assert!(svg.starts_with("<svg"));
//! ```

#![deny(missing_docs)]

use plotters::prelude::*;

/// Picture size, in SVG pixels.
const SIZE: (u32, u32) = (720, 400);
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

/// A line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Shown above the plot.
    pub title: String,
    /// The x axis' name and unit.
    pub x_label: String,
    /// The y axis' name and unit.
    pub y_label: String,
    /// Whether x is spaced by log₂ (for concurrency levels).
    pub log2_x: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// Renders `chart` as an SVG document. Errs when there is nothing to draw
/// or a value is not finite.
pub fn render_svg(chart: &LineChart) -> Result<String, String> {
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
    if chart.log2_x && points.iter().any(|(x, _)| *x <= 0.0) {
        return Err(format!("{}: a log-scale x must be positive", chart.title));
    }
    let to_x = |x: f64| if chart.log2_x { x.log2() } else { x };
    let (x_min, x_max) = bounds(points.iter().map(|(x, _)| to_x(*x)));
    let (_, y_max) = bounds(points.iter().map(|(_, y)| *y));
    let y_top = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let (x_min, x_max) = if x_max > x_min {
        (x_min, x_max)
    } else {
        (x_min - 1.0, x_max + 1.0)
    };
    // On a log₂ axis, one tick per power of two (1, 2, 4, … 256).
    let x_ticks = if chart.log2_x {
        (x_max - x_min).round() as usize + 1
    } else {
        7
    };
    let x_range = x_min..x_max;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut plot = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", 22))
            .margin(12)
            .margin_right(28)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range, 0.0..y_top)
            .map_err(|e| e.to_string())?;
        let log2_x = chart.log2_x;
        plot.configure_mesh()
            .x_desc(&chart.x_label)
            .y_desc(&chart.y_label)
            .x_labels(x_ticks)
            .x_label_formatter(&|x| {
                let value = if log2_x { x.exp2() } else { *x };
                compact(value)
            })
            .y_label_formatter(&|y| compact(*y))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| e.to_string())?;
        for (index, series) in chart.series.iter().enumerate() {
            let colour = PALETTE[index % PALETTE.len()];
            let line: Vec<(f64, f64)> = series.points.iter().map(|(x, y)| (to_x(*x), *y)).collect();
            plot.draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(&series.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            if line.len() <= 32 {
                plot.draw_series(line.iter().map(|p| Circle::new(*p, 3, colour.filled())))
                    .map_err(|e| e.to_string())?;
            }
        }
        plot.configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
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
            log2_x: true,
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
    }

    #[test]
    fn numbers_are_compact() {
        assert_eq!(compact(12345.0), "12k");
        assert_eq!(compact(1500.0), "1.5k");
        assert_eq!(compact(64.0), "64");
        assert_eq!(compact(0.25), "0.25");
    }
}
