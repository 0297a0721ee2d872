//! The LLM-gateway case's results file, `docs/results/llm-<date>-<time>.json`
//! (machine, date, commit, every figure under a flat key), and the page drawn
//! from it, `docs/benchmarks-llm.md`. As with the main run's results
//! ([`crate::results`]), the page prints only what the file holds, so a page
//! quoting a key and the page agree.
//!
//! Keys: `llm/<latency_ms>/<concurrency>/<node>/<metric>` for each measured
//! point (`node` is `native` or `iicp-host`), with `metric` one of
//! [`POINT_METRICS`]; `llm/<latency_ms>/<concurrency>/iicp-host/<throughput|cpu_per_task>_vs_native`
//! for the ratios; `llm/summary/<throughput_ratio|p99_overhead_ms>` for the
//! run's worst.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::results::Run;

/// The figures of one measured point, in the page's column order.
pub const POINT_METRICS: [&str; 8] = [
    "tasks_per_s",
    "p50_overhead_ms",
    "p99_overhead_ms",
    "cpu_us_per_task",
    "rss_kib_per_task",
    "backend_connections_per_task",
    "errors",
    "tasks",
];

/// One node's figures at one point, in [`POINT_METRICS`] order.
pub struct PointFigures {
    pub node: String,
    pub latency_ms: u64,
    pub concurrency: usize,
    pub values: [f64; POINT_METRICS.len()],
}

/// An LLM-gateway results file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmResults {
    pub run: Run,
    /// (latency ms, concurrency, node) in table order.
    pub points: Vec<(u64, usize, String)>,
    /// Every figure, by key.
    pub figures: BTreeMap<String, f64>,
}

/// `llm/<latency_ms>/<concurrency>/<node>/<metric>`.
pub fn point_key(latency_ms: u64, concurrency: usize, node: &str, metric: &str) -> String {
    format!("llm/{latency_ms}/{concurrency}/{node}/{metric}")
}

impl LlmResults {
    /// The figures of a finished run, ratios and summary included.
    pub fn new(run: Run, points: &[PointFigures]) -> Self {
        let mut results = Self {
            run,
            ..Self::default()
        };
        for point in points {
            for (metric, value) in POINT_METRICS.iter().zip(point.values) {
                results.figures.insert(
                    point_key(point.latency_ms, point.concurrency, &point.node, metric),
                    value,
                );
            }
            results
                .points
                .push((point.latency_ms, point.concurrency, point.node.clone()));
        }
        results.derive();
        results
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.figures.get(key).copied()
    }

    fn point(&self, latency_ms: u64, concurrency: usize, node: &str, metric: &str) -> Option<f64> {
        self.get(&point_key(latency_ms, concurrency, node, metric))
    }

    /// Ratios of iicp-host to native at each point, and the run's worst.
    fn derive(&mut self) {
        let (mut worst_ratio, mut worst_p99) = (None::<f64>, None::<f64>);
        let hosts: Vec<(u64, usize)> = (self.points.iter())
            .filter(|(_, _, node)| node == "iicp-host")
            .map(|(latency, c, _)| (*latency, *c))
            .collect();
        for (latency, c) in hosts {
            let figure = |node: &str, metric: &str| self.point(latency, c, node, metric);
            let mut derived = Vec::new();
            let positive = |v: Option<f64>| v.filter(|v| *v > 0.0);
            if let (Some(host), Some(native)) = (
                figure("iicp-host", "tasks_per_s"),
                positive(figure("native", "tasks_per_s")),
            ) {
                let ratio = host / native;
                worst_ratio = Some(worst_ratio.map_or(ratio, |w| w.min(ratio)));
                derived.push(("throughput_vs_native", ratio));
            }
            // CPU time is read in clock ticks (10 ms): a point of a few
            // tasks may read 0 and has no ratio.
            if let (Some(host), Some(native)) = (
                figure("iicp-host", "cpu_us_per_task"),
                positive(figure("native", "cpu_us_per_task")),
            ) {
                derived.push(("cpu_per_task_vs_native", host / native));
            }
            if let Some(p99) = figure("iicp-host", "p99_overhead_ms") {
                worst_p99 = Some(worst_p99.map_or(p99, |w| w.max(p99)));
            }
            for (metric, value) in derived {
                self.figures
                    .insert(point_key(latency, c, "iicp-host", metric), value);
            }
        }
        if let Some(ratio) = worst_ratio {
            self.figures
                .insert("llm/summary/throughput_ratio".into(), ratio);
        }
        if let Some(p99) = worst_p99 {
            self.figures
                .insert("llm/summary/p99_overhead_ms".into(), p99);
        }
    }

    /// The console's and the page's last line.
    pub fn summary_line(&self) -> String {
        let show = |key: &str, decimals: usize| {
            self.get(key)
                .map_or("n/a".to_string(), |v| format!("{v:.decimals$}"))
        };
        format!(
            "llm_throughput_ratio={} llm_p99_overhead_ms={}",
            show("llm/summary/throughput_ratio", 3),
            show("llm/summary/p99_overhead_ms", 2)
        )
    }

    /// `docs/benchmarks-llm.md`, linking its results file as `results_link`.
    pub fn markdown(&self, results_link: &str) -> String {
        let run = &self.run;
        let mut out = crate::results::page_head("LLM-gateway benchmark", run, results_link);
        let _ = writeln!(
            out,
            "## Method\n\n\
             `bench/llm` starts `bench/mock-llm`, a mock OpenAI-compatible backend answering every \
             completion after a fixed latency, then per latency and concurrency (closed-loop consumers, \
             one keep-alive connection each) starts each node fresh and measures them alternately \
             (warm-up 2 × latency + 1.5 s, then 5 × latency but at least 6 s; with `--quick` 2 × latency + 1 s \
             and 3 × latency but at least 3 s), best of {} round(s) by completed tasks/s: iicp-host running `plugins/openai-chat` with a \
             fresh instance per task, and `bench/native-node`'s gateway handler making the same backend \
             call through one shared client. Overheads are above the backend's latency; CPU per task is \
             the node's user + system time over the measuring window ÷ tasks completed in it (read in \
             10 ms clock ticks, so a point of a few tasks has no meaningful CPU figure); RSS per \
             in-flight task is (peak − idle) ÷ concurrency; backend connections per task 1.0 means no \
             reuse.\n",
            run.rounds
        );
        out.push_str(&self.targets_markdown());
        let _ = writeln!(out, "## Points\n");
        let _ = writeln!(
            out,
            "| latency | c | node | tasks/s | ×native | p50 + ms | p99 + ms | CPU/task µs | ×native | RSS/in-flight KiB | backend conns/task | errors |"
        );
        let _ = writeln!(
            out,
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (latency, c, node) in &self.points {
            let figure = |metric: &str| self.point(*latency, *c, node, metric);
            let shown = |metric: &str, decimals: usize| {
                figure(metric).map_or(String::new(), |v| format!("{v:.decimals$}"))
            };
            let _ = writeln!(
                out,
                "| {latency} ms | {c} | {node} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                shown("tasks_per_s", 1),
                shown("throughput_vs_native", 2),
                shown("p50_overhead_ms", 2),
                shown("p99_overhead_ms", 2),
                shown("cpu_us_per_task", 1),
                shown("cpu_per_task_vs_native", 2),
                shown("rss_kib_per_task", 1),
                shown("backend_connections_per_task", 3),
                shown("errors", 0),
            );
        }
        let _ = writeln!(out, "\n{}", self.summary_line());
        out
    }

    /// Issue 23's targets for this workload against the run's figures:
    /// each iicp-host point's figure, then met or missed.
    fn targets_markdown(&self) -> String {
        let hosts: Vec<(u64, usize)> = (self.points.iter())
            .filter(|(_, _, node)| node == "iicp-host")
            .map(|(latency, c, _)| (*latency, *c))
            .collect();
        let mut out = String::from(
            "## Targets\n\n| target | iicp-host's figures (latency ms/c) | |\n|---|---|---|\n",
        );
        // (target, metric, decimals shown, the lowest concurrency it
        // applies to, whether a figure meets it)
        type Check = (&'static str, &'static str, usize, usize, fn(f64) -> bool);
        let targets: [Check; 4] = [
            (
                "2,000 tasks in flight, a fresh instance each: no errors",
                "errors",
                0,
                2000,
                |v| v == 0.0,
            ),
            (
                "throughput ≥ 0.95× native",
                "throughput_vs_native",
                2,
                1,
                |v| v >= 0.95,
            ),
            ("p99 overhead ≤ 5 ms", "p99_overhead_ms", 1, 1, |v| {
                v <= 5.0
            }),
            // RSS per task is (peak − idle) ÷ c: at c=1 the idle noise is the figure.
            (
                "RSS per in-flight task ≤ 256 KiB",
                "rss_kib_per_task",
                0,
                64,
                |v| v <= 256.0,
            ),
        ];
        for (name, metric, decimals, from_c, meets) in targets {
            let figures: Vec<(String, f64)> = (hosts.iter())
                .filter(|(_, c)| *c >= from_c)
                .filter_map(|(latency, c)| {
                    let value = self.point(*latency, *c, "iicp-host", metric)?;
                    Some((format!("{latency}/{c} {value:.decimals$}"), value))
                })
                .collect();
            let verdict = match figures.is_empty() {
                true => "not measured in this run",
                false if figures.iter().all(|(_, v)| meets(*v)) => "met",
                false => "missed",
            };
            let shown: Vec<&str> = figures.iter().map(|(text, _)| text.as_str()).collect();
            let _ = writeln!(out, "| {name} | {} | {verdict} |", shown.join(", "));
        }
        out.push('\n');
        out
    }

    /// Reads a page written by `iicp-bench llm --report` before results
    /// files existed (its table rows) back into a results file.
    pub fn import_markdown(text: &str, source: &str, run: Run) -> Result<Self, String> {
        let mut points = Vec::new();
        // A point's row begins with its latency: `| 200 ms | …`.
        let is_row = |l: &&str| {
            (l.strip_prefix("| ").and_then(|r| r.split_once(" ms |")))
                .is_some_and(|(latency, _)| latency.parse::<u64>().is_ok())
        };
        for line in text.lines().filter(is_row) {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let [latency, c, node, tasks, _, p50, p99, cpu, _, rss, conns, errors] = cells[..]
            else {
                return Err(format!("a table row without 12 cells: {line}"));
            };
            let number = |cell: &str| {
                cell.parse::<f64>()
                    .map_err(|_| format!("not a number: {cell:?} in {line}"))
            };
            let values = [
                number(tasks)?,
                number(p50)?,
                number(p99)?,
                number(cpu)?,
                number(rss)?,
                number(conns)?,
                number(errors)?,
                // The old table did not show the task count.
                f64::NAN,
            ];
            points.push(PointFigures {
                node: node.to_string(),
                latency_ms: number(latency.trim_end_matches(" ms"))? as u64,
                concurrency: number(c)? as usize,
                values,
            });
        }
        if points.is_empty() {
            return Err(format!("{source}: no table rows"));
        }
        let mut results = Self::new(
            Run {
                imported_from: Some(source.to_string()),
                ..run
            },
            &points,
        );
        results.figures.retain(|_, v| !v.is_nan());
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(node: &str, tasks_per_s: f64, cpu: f64, p99: f64) -> PointFigures {
        PointFigures {
            node: node.into(),
            latency_ms: 200,
            concurrency: 64,
            values: [tasks_per_s, 1.0, p99, cpu, 150.0, 0.001, 0.0, 1000.0],
        }
    }

    #[test]
    fn ratios_and_summary_come_from_the_points() {
        let results = LlmResults::new(
            Run::default(),
            &[
                point("native", 320.0, 100.0, 9.0),
                point("iicp-host", 240.0, 300.0, 12.5),
            ],
        );
        assert_eq!(
            results.get("llm/200/64/iicp-host/throughput_vs_native"),
            Some(0.75)
        );
        assert_eq!(
            results.get("llm/200/64/iicp-host/cpu_per_task_vs_native"),
            Some(3.0)
        );
        assert_eq!(results.get("llm/summary/p99_overhead_ms"), Some(12.5));
        assert_eq!(
            results.summary_line(),
            "llm_throughput_ratio=0.750 llm_p99_overhead_ms=12.50"
        );
    }

    #[test]
    fn an_old_page_reads_back_into_the_same_table() {
        let results = LlmResults::new(
            Run::default(),
            &[
                point("native", 320.0, 100.0, 9.0),
                point("iicp-host", 240.0, 300.0, 12.5),
            ],
        );
        let page = results.markdown("x.json");
        let back = LlmResults::import_markdown(&page, "old.md", Run::default()).unwrap();
        assert_eq!(back.points, results.points);
        assert_eq!(
            back.get("llm/200/64/iicp-host/throughput_vs_native"),
            Some(0.75)
        );
        assert_eq!(back.get("llm/200/64/iicp-host/tasks"), None);
    }

    /// The committed page is what its results file renders, byte for byte.
    #[test]
    fn the_committed_page_is_rendered_from_its_results_file() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        let page = std::fs::read_to_string(docs.join("benchmarks-llm.md")).unwrap();
        let link = page
            .split("[`")
            .nth(1)
            .and_then(|l| l.split('`').next())
            .expect("the page names its results file");
        let results: LlmResults =
            serde_json::from_str(&std::fs::read_to_string(docs.join(link)).unwrap()).unwrap();
        assert_eq!(results.markdown(link), page);
    }
}
