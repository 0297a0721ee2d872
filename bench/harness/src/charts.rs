//! The report's pictures, drawn from the results file with `iicp-charts`,
//! one question each: throughput against concurrency, p99 against
//! concurrency (the Rust echo's cases and the baselines, harness load), the
//! interpreter plugins, many plugins per node, and the server's RSS during
//! the nonce flood. They are written beside the Markdown report, which
//! embeds them by file name; `iicp-bench render RESULTS.json` redraws them.

use std::path::Path;

use iicp_charts::{render_svg, LineChart, Series, XScale};

use crate::results::{load_key, Results, INTERPRETERS as INTERPRETER_CASES};

/// File names of the pictures, relative to the report.
const THROUGHPUT: &str = "benchmarks-throughput.svg";
const P99: &str = "benchmarks-p99.svg";
const INTERPRETERS: &str = "benchmarks-interpreters.svg";
const MANY: &str = "benchmarks-many-plugins.svg";
const FLOOD_RSS: &str = "benchmarks-nonce-flood-rss.svg";

/// The load generator the concurrency charts show (wrk's figures are in the
/// table); one generator keeps each chart to six lines.
const CHART_GENERATOR: &str = "harness";

/// One line per case of `cases` under `generator`, `metric` against
/// concurrency; cases without figures are left out.
fn by_case(results: &Results, generator: &str, cases: &[&str], metric: &str) -> Vec<Series> {
    cases
        .iter()
        .filter_map(|case| {
            let points: Vec<(f64, f64)> = (results.layout.points.iter())
                .filter(|(g, c, _)| g == generator && c == case)
                .filter_map(|(g, c, conc)| {
                    Some((*conc as f64, results.get(&load_key(g, c, *conc, metric))?))
                })
                .collect();
            let label = case.strip_prefix("iicp-host ").unwrap_or(case);
            (!points.is_empty()).then(|| Series::new(label, points))
        })
        .collect()
}

fn concurrency_chart(title: &str, y_label: &str, series: Vec<Series>) -> LineChart {
    LineChart {
        title: title.into(),
        x_label: "concurrent connections".into(),
        y_label: y_label.into(),
        x_scale: XScale::Log2,
        series,
    }
}

/// The pictures of `results`: (file name, alt text, chart).
fn charts(results: &Results) -> Vec<(&'static str, &'static str, LineChart)> {
    let mut charts = Vec::new();
    // The Rust echo's cases and the two baselines; the interpreters have a
    // chart of their own (their throughput is two orders of magnitude lower).
    let mut cases = vec!["native", "http-floor"];
    cases.extend(
        results
            .host_cases()
            .into_iter()
            .filter(|c| !c.contains("python") && !c.contains("js")),
    );
    let throughput = by_case(results, CHART_GENERATOR, &cases, "req_per_s");
    if !throughput.is_empty() {
        charts.push((
            THROUGHPUT,
            "Throughput against concurrency",
            concurrency_chart(
                "Throughput against concurrency (harness, best round)",
                "tasks per second",
                throughput,
            ),
        ));
        charts.push((
            P99,
            "p99 latency against concurrency",
            concurrency_chart(
                "p99 latency against concurrency (harness)",
                "p99 latency (ms)",
                by_case(results, CHART_GENERATOR, &cases, "p99_ms"),
            ),
        ));
    }
    // Three plugins (Python, JS on SpiderMonkey, JS on QuickJS) under both
    // generators: six lines.
    let mut series = Vec::new();
    for generator in ["harness", "wrk"] {
        for mut line in by_case(results, generator, &INTERPRETER_CASES, "req_per_s") {
            line.label = format!("{} [{generator}]", line.label);
            series.push(line);
        }
    }
    if !series.is_empty() {
        charts.push((
            INTERPRETERS,
            "Interpreter plugins: throughput at 1 and 16 connections",
            concurrency_chart(
                "Python and JS echo over HTTP, fresh instance per task",
                "tasks per second",
                series,
            ),
        ));
    }
    let mut many = Vec::new();
    let mut artifacts: Vec<&str> = Vec::new();
    for (artifact, _) in &results.layout.many {
        if !artifacts.contains(&artifact.as_str()) {
            artifacts.push(artifact);
        }
    }
    for artifact in artifacts {
        for (layout, label) in [("plugin_dir", "plugin dir"), ("one_file", "one file")] {
            let points: Vec<(f64, f64)> = (results.layout.many.iter())
                .filter(|(a, _)| a == artifact)
                .filter_map(|(a, n)| {
                    Some((
                        *n as f64,
                        results.get(&format!("many/{a}/{n}/reload_{layout}_ms"))?,
                    ))
                })
                .collect();
            if !points.is_empty() {
                many.push(Series::new(format!("{artifact}, {label}"), points));
            }
        }
    }
    if !many.is_empty() {
        charts.push((
            MANY,
            "Reload of one plugin against plugins per node",
            LineChart {
                title: "Reload of one plugin among N".into(),
                x_label: "plugins per node (N)".into(),
                y_label: "reload (ms)".into(),
                x_scale: XScale::Log10,
                series: many,
            },
        ));
    }
    let flood = results.flood_rss();
    if !flood.is_empty() {
        charts.push((
            FLOOD_RSS,
            "iicp-host RSS during the nonce flood",
            LineChart {
                title: "iicp-host RSS during the nonce flood".into(),
                x_label: "seconds".into(),
                y_label: "RSS (MiB)".into(),
                x_scale: XScale::Linear,
                series: vec![Series::new(
                    "iicp-host",
                    flood.iter().map(|(s, mib)| (*s as f64, *mib)).collect(),
                )],
            },
        ));
    }
    charts
}

/// The Markdown that embeds the pictures.
pub fn markdown(results: &Results) -> String {
    let mut out = String::from("## Charts\n\n");
    for (file, alt, _) in charts(results) {
        out.push_str(&format!("![{alt}]({file})\n\n"));
    }
    out
}

/// Draws the pictures into `dir`.
pub fn write(results: &Results, dir: &Path) -> Result<(), String> {
    for (file, _, chart) in charts(results) {
        let svg = render_svg(&chart)?;
        let path = dir.join(file);
        std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("chart written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python and JS on both engines, under both load generators: six lines,
    /// the most the interpreters chart draws legibly.
    #[test]
    fn the_interpreters_chart_has_a_line_per_plugin_and_generator() {
        let mut results = Results::default();
        for generator in ["harness", "wrk"] {
            for case in INTERPRETER_CASES {
                for conc in [1, 16] {
                    let point = (generator.to_string(), case.to_string(), conc);
                    results.layout.points.push(point);
                    let key = load_key(generator, case, conc, "req_per_s");
                    results.figures.insert(key, 100.0 * conc as f64);
                }
            }
        }
        let charts = charts(&results);
        let (_, _, chart) = (charts.iter())
            .find(|(file, _, _)| *file == INTERPRETERS)
            .expect("an interpreters chart");
        let labels: Vec<&str> = chart.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "python-echo [harness]",
                "js-echo [harness]",
                "js-echo-quickjs [harness]",
                "python-echo [wrk]",
                "js-echo [wrk]",
                "js-echo-quickjs [wrk]",
            ]
        );
        // The Rust echo's charts leave the interpreters out.
        assert!(charts.iter().all(|(file, _, chart)| *file == INTERPRETERS
            || chart.series.iter().all(|s| !s.label.contains("echo"))));
    }
}
