//! The report's pictures, drawn from its own figures with `iicp-charts`:
//! throughput and p99 against concurrency for every case, and the server's
//! RSS during the nonce flood. They are written beside the Markdown report,
//! which embeds them by file name.
//!
//! `iicp-bench charts REPORT.md` redraws them from a report's own tables
//! (and adds the links if the report predates them), so a change of style
//! needs no new run.

use std::path::Path;

use iicp_charts::{render_svg, LineChart, Series};

use crate::report::{Report, Row};

/// File names of the pictures, relative to the report.
const THROUGHPUT: &str = "benchmarks-throughput.svg";
const P99: &str = "benchmarks-p99.svg";
const FLOOD_RSS: &str = "benchmarks-nonce-flood-rss.svg";

/// One line per case and load generator, in the order they first appear.
fn by_case(rows: &[Row], value: impl Fn(&Row) -> f64) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for row in rows {
        let label = format!("{} [{}]", row.case, row.generator);
        let point = (row.concurrency as f64, value(row));
        match series.iter_mut().find(|s| s.label == label) {
            Some(line) => line.points.push(point),
            None => series.push(Series::new(label, vec![point])),
        }
    }
    series
}

/// The pictures of `report`: (file name, alt text, chart).
fn charts(report: &Report) -> Vec<(&'static str, &'static str, LineChart)> {
    let mut charts = Vec::new();
    if !report.rows.is_empty() {
        charts.push((
            THROUGHPUT,
            "Throughput against concurrency",
            LineChart {
                title: "Throughput against concurrency (best round)".into(),
                x_label: "concurrent connections".into(),
                y_label: "tasks per second".into(),
                log2_x: true,
                series: by_case(&report.rows, |r| r.rps),
            },
        ));
        charts.push((
            P99,
            "p99 latency against concurrency",
            LineChart {
                title: "p99 latency against concurrency".into(),
                x_label: "concurrent connections".into(),
                y_label: "p99 latency (ms)".into(),
                log2_x: true,
                series: by_case(&report.rows, |r| r.p99_ms),
            },
        ));
    }
    if let Some((_, samples)) = &report.flood {
        if !samples.is_empty() {
            charts.push((
                FLOOD_RSS,
                "iicp-host RSS during the nonce flood",
                LineChart {
                    title: "iicp-host RSS during the nonce flood".into(),
                    x_label: "seconds".into(),
                    y_label: "RSS (MiB)".into(),
                    log2_x: false,
                    series: vec![Series::new(
                        "iicp-host",
                        samples
                            .iter()
                            .map(|(s, kib)| (*s as f64, *kib as f64 / 1024.0))
                            .collect(),
                    )],
                },
            ));
        }
    }
    charts
}

/// The Markdown that embeds the pictures.
pub fn markdown(report: &Report) -> String {
    let mut out = String::from("## Charts\n\n");
    for (file, alt, _) in charts(report) {
        out.push_str(&format!("![{alt}]({file})\n\n"));
    }
    out
}

/// Draws the pictures into `dir`.
pub fn write(report: &Report, dir: &Path) -> Result<(), String> {
    for (file, _, chart) in charts(report) {
        let svg = render_svg(&chart)?;
        let path = dir.join(file);
        std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("chart written to {}", path.display());
    }
    Ok(())
}

/// `iicp-bench charts REPORT.md`: redraws the pictures from the report's
/// throughput table and flood line; adds the links when missing.
pub fn redraw(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let report = Report::from_markdown(&text);
    if report.rows.is_empty() {
        return Err(format!("{}: no throughput table", path.display()));
    }
    write(&report, path.parent().unwrap_or(Path::new(".")))?;
    if !text.contains("## Charts") {
        let with_links = text.replacen(
            "## Ratios against native",
            &format!("{}## Ratios against native", markdown(&report)),
            1,
        );
        std::fs::write(path, with_links).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
