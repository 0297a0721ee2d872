//! Formatting: console lines, ratios, and the Markdown report.

use std::fmt::Write;
use std::time::Duration;

use crate::load::LoadResult;
use crate::many::ManyRow;

/// One case at one concurrency.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub generator: &'static str,
    pub concurrency: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub requests: u64,
    pub errors: u64,
    /// Server CPU (user + system) over the measuring window ÷ requests.
    pub cpu_us_per_request: f64,
    pub peak_rss_kib: u64,
    pub idle_rss_kib: u64,
}

impl Row {
    pub fn header() -> String {
        format!(
            "{:<22} {:<7} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>10}",
            "case",
            "loadgen",
            "conc",
            "req/s",
            "p50_ms",
            "p99_ms",
            "p99.9_ms",
            "requests",
            "errors",
            "cpu_us/req",
            "peak_rss"
        )
    }

    pub fn line(&self) -> String {
        format!(
            "{:<22} {:<7} {:>5} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>7} {:>9.1} {:>7.1}MiB",
            self.case,
            self.generator,
            self.concurrency,
            self.rps,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.requests,
            self.errors,
            self.cpu_us_per_request,
            self.peak_rss_kib as f64 / 1024.0
        )
    }
}

/// Everything measured in one run.
pub struct Report {
    quick: bool,
    rounds: usize,
    warmup: Duration,
    measure: Duration,
    pub rows: Vec<Row>,
    pub startup: Vec<(String, Duration)>,
    pub flood: Option<(LoadResult, Vec<(u64, u64)>)>,
    pub many: Vec<ManyRow>,
    pub sandbox: String,
    /// CPU time counters when the run began, for the steal figure.
    started_cpu: Option<CpuTimes>,
}

/// The machine's CPU time counters (`/proc/stat`, all cores, in ticks).
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    total: u64,
    steal: u64,
}

impl CpuTimes {
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is
        // already inside user and nice).
        Some(Self {
            total: fields.iter().take(8).sum(),
            steal: *fields.get(7)?,
        })
    }

    /// The share of CPU time the hypervisor took from this machine since `self`.
    fn steal_since(self) -> Option<f64> {
        let now = Self::now()?;
        let total = now.total.checked_sub(self.total).filter(|&t| t > 0)?;
        Some(now.steal.saturating_sub(self.steal) as f64 / total as f64)
    }
}

fn ratio(large: Duration, small: Duration) -> f64 {
    large.as_secs_f64() / small.as_secs_f64().max(1e-9)
}

/// One many-plugins figure as a line.
pub fn many_line(row: &ManyRow) -> String {
    format!(
        "many plugins: {} N={}: ready in {:.1} ms, RSS {:.1} MiB, reload of one plugin: plugin dir {:.1} ms (node's prepare {:.1} ms), one file {:.1} ms ({:.1} ms)",
        row.artifact,
        row.plugins,
        row.startup.as_secs_f64() * 1000.0,
        row.rss_kib as f64 / 1024.0,
        row.plugin_dir.wall.as_secs_f64() * 1000.0,
        row.plugin_dir.prepare_ms,
        row.one_file.wall.as_secs_f64() * 1000.0,
        row.one_file.prepare_ms
    )
}

impl Report {
    pub fn new(quick: bool, rounds: usize, warmup: Duration, measure: Duration) -> Self {
        Self {
            quick,
            rounds,
            warmup,
            measure,
            rows: Vec::new(),
            startup: Vec::new(),
            flood: None,
            many: Vec::new(),
            sandbox: String::new(),
            started_cpu: CpuTimes::now(),
        }
    }

    /// The rows and flood samples of a report [`Report::markdown`] wrote
    /// (for redrawing its charts).
    pub fn from_markdown(text: &str) -> Self {
        let mut report = Self::new(false, 0, Duration::ZERO, Duration::ZERO);
        let table = text
            .split("## Throughput and latency")
            .nth(1)
            .unwrap_or_default();
        for line in table.lines().skip_while(|l| !l.starts_with("|---")).skip(1) {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let [generator, case, conc, rps, p50, p99, p999, errors, cpu, rss] = cells[..] else {
                break;
            };
            let Some(generator) = crate::Generator::from_name(generator) else {
                break;
            };
            let number = |cell: &str| cell.parse::<f64>().unwrap_or(f64::NAN);
            report.rows.push(Row {
                case: case.to_string(),
                generator: generator.name(),
                concurrency: conc.parse().unwrap_or(0),
                rps: number(rps),
                p50_ms: number(p50),
                p99_ms: number(p99),
                p999_ms: number(p999),
                requests: 0,
                errors: errors.parse().unwrap_or(0),
                cpu_us_per_request: number(cpu),
                peak_rss_kib: (number(rss) * 1024.0) as u64,
                idle_rss_kib: 0,
            });
        }
        let samples: Vec<(u64, u64)> = text
            .lines()
            .find_map(|l| l.strip_prefix("- nonce flood RSS: "))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|sample| {
                let (seconds, mib) = sample.split_once("s:")?;
                let mib: f64 = mib.strip_suffix("MiB")?.parse().ok()?;
                Some((seconds.parse().ok()?, (mib * 1024.0) as u64))
            })
            .collect();
        if !samples.is_empty() {
            report.flood = Some((LoadResult::default(), samples));
        }
        report
    }

    fn row(&self, generator: &str, case: &str, concurrency: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.generator == generator && r.case == case && r.concurrency == concurrency)
    }

    fn generators(&self) -> Vec<&'static str> {
        let mut generators = Vec::new();
        for row in &self.rows {
            if !generators.contains(&row.generator) {
                generators.push(row.generator);
            }
        }
        generators
    }

    fn host_cases(&self) -> Vec<String> {
        let mut cases: Vec<String> = Vec::new();
        for row in &self.rows {
            if !["native", "http-floor"].contains(&row.case.as_str()) && !cases.contains(&row.case)
            {
                cases.push(row.case.clone());
            }
        }
        cases
    }

    /// (concurrency, throughput ratio, p99 ratio, CPU-per-request ratio) of
    /// `case` against `base`, under `generator`.
    fn ratios(&self, generator: &str, case: &str, base: &str) -> Vec<(usize, f64, f64, f64)> {
        crate::CONCURRENCY
            .iter()
            .filter_map(|&c| {
                let (row, base) = (self.row(generator, case, c)?, self.row(generator, base, c)?);
                Some((
                    c,
                    row.rps / base.rps,
                    row.p99_ms / base.p99_ms,
                    row.cpu_us_per_request / base.cpu_us_per_request,
                ))
            })
            .collect()
    }

    pub fn ratio_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for generator in self.generators() {
            for case in self.host_cases() {
                for (c, throughput, p99, cpu) in self.ratios(generator, &case, "native") {
                    lines.push(format!(
                        "[{generator}] ratio {case} / native  conc={c:<4} throughput={throughput:.3} p99={p99:.3} cpu_per_request={cpu:.3}"
                    ));
                }
            }
            for case in ["iicp-host", "native"] {
                for (c, throughput, p99, _) in self.ratios(generator, case, "http-floor") {
                    lines.push(format!(
                        "[{generator}] fraction of the HTTP floor: {case} conc={c:<4} throughput={throughput:.3} p99={p99:.3}"
                    ));
                }
            }
            if let Some(base) = self.row(generator, "iicp-host", 64) {
                for case in ["iicp-host+nonce", "iicp-host+trace"] {
                    if let Some(row) = self.row(generator, case, 64) {
                        lines.push(format!(
                            "[{generator}] {case} / iicp-host throughput at conc=64: {:.3}",
                            row.rps / base.rps
                        ));
                    }
                }
            }
            for case in ["iicp-host python-echo", "iicp-host js-echo"] {
                let (Some(one), Some(sixteen), Some(rust)) = (
                    self.row(generator, case, 1),
                    self.row(generator, case, 16),
                    self.row(generator, "iicp-host", 1),
                ) else {
                    continue;
                };
                lines.push(format!(
                    "[{generator}] {case}: conc=1 throughput / Rust echo's = {:.3}; conc=16 / conc=1 = {:.3}",
                    one.rps / rust.rps,
                    sixteen.rps / one.rps
                ));
            }
        }
        lines
    }

    pub fn memory_line(&self) -> Option<String> {
        let row = self.row("harness", "iicp-host", 256)?;
        let extra = row.peak_rss_kib.saturating_sub(row.idle_rss_kib);
        let native = self.row("harness", "native", 256)?;
        Some(format!(
            "memory at conc=256: iicp-host peak {:.1} MiB (idle {:.1} MiB, {:.1} KiB per in-flight task beyond idle, {:.1} KiB per task of the whole peak); native peak {:.1} MiB",
            row.peak_rss_kib as f64 / 1024.0,
            row.idle_rss_kib as f64 / 1024.0,
            extra as f64 / 256.0,
            row.peak_rss_kib as f64 / 256.0,
            native.peak_rss_kib as f64 / 1024.0
        ))
    }

    pub fn flood_lines(&self) -> Vec<String> {
        let Some((result, samples)) = &self.flood else {
            return Vec::new();
        };
        let trace: Vec<String> = samples
            .iter()
            .map(|(s, kib)| format!("{s}s:{:.1}MiB", *kib as f64 / 1024.0))
            .collect();
        vec![
            format!(
                "nonce flood (conc=64, unique nonces, default 1000000-nonce cap): {:.0} req/s, {} requests, {} errors; by status: {} (503 = nonce_cache_full once the cap is reached)",
                result.rps(),
                result.requests,
                result.errors,
                result
                    .statuses
                    .iter()
                    .map(|(status, count)| format!("{status}: {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!("nonce flood RSS: {}", trace.join(" ")),
        ]
    }

    /// Per artifact: RSS per additional plugin and reload time, largest N
    /// against smallest.
    pub fn many_summary_lines(&self) -> Vec<String> {
        let mut artifacts: Vec<&str> = Vec::new();
        for row in &self.many {
            if !artifacts.contains(&row.artifact.as_str()) {
                artifacts.push(&row.artifact);
            }
        }
        artifacts
            .into_iter()
            .filter_map(|artifact| {
                let rows: Vec<&ManyRow> = self.many.iter().filter(|r| r.artifact == artifact).collect();
                let (small, large) = (rows.first()?, rows.last()?);
                let extra = large.plugins.checked_sub(small.plugins).filter(|&n| n > 0)?;
                Some(format!(
                    "many plugins: {artifact}: {:.1} KiB RSS per additional plugin (N={} -> {}), reload N={} / N={} = {:.2} (plugin dir), {:.2} (one file)",
                    large.rss_kib.saturating_sub(small.rss_kib) as f64 / extra as f64,
                    small.plugins,
                    large.plugins,
                    large.plugins,
                    small.plugins,
                    ratio(large.plugin_dir.wall, small.plugin_dir.wall),
                    ratio(large.one_file.wall, small.one_file.wall)
                ))
            })
            .collect()
    }

    pub fn summary_line(&self) -> String {
        let ratios: Vec<_> = self
            .generators()
            .into_iter()
            .flat_map(|g| self.ratios(g, "iicp-host", "native"))
            .collect();
        let throughput = ratios.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
        let p99 = ratios.iter().map(|r| r.2).fold(0.0, f64::max);
        format!("throughput_ratio={throughput:.3} p99_ratio={p99:.3}")
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Produced by `bench/run{}` — do not edit by hand.\n",
            if self.quick { " --quick" } else { "" }
        );
        let _ = writeln!(out, "## Machine\n\n{}\n", machine());
        if let Some(steal) = self.started_cpu.and_then(CpuTimes::steal_since) {
            // A virtual machine's neighbours take CPU time the figures cannot
            // see; every ratio below is within interleaved rounds, but the
            // absolute figures move with this.
            let _ = writeln!(
                out,
                "CPU time taken by the hypervisor (steal) during the load measurements: {:.1} %.\n",
                steal * 100.0
            );
        }
        let _ = writeln!(
            out,
            "## Method\n\n\
             Servers run one at a time on loopback, each with `max_concurrent` 256: the native reference \
             (`iicp-client =0.7.109` `IicpNode` with an in-process echo handler, `bench/native-node`), \
             the HTTP floor (`bench/http-floor`: a minimal hyper server answering the bytes iicp-host answers, \
             reading each request but parsing nothing) and `iicp-host` serving `plugins/echo` with a fresh \
             instance per task and default settings (`python-echo`/`js-echo`: the interpreter echo plugins, \
             conc 1 and 16). Two load generators, each sharing the machine's two cores with the server: \
             `harness` (`bench/harness`, one thread) and `wrk` (two threads, Lua script, same task; \
             latencies from its histogram). Each keeps \
             `conc` keep-alive connections busy with chat tasks for {:?} after {:?} of warm-up, bounded at {} \
             requests (harness). Server CPU per request is the server's user + system time over the \
             measuring window divided by the requests served in it. `+nonce` adds a unique `nonce` to every task, `+trace` a `traceparent` header. Every \
             point starts a fresh server (the plugin's compiled artifact is already cached). The cases are \
             interleaved at each concurrency, {} rounds in alternating order, and each point keeps its best \
             round by throughput — the same rule for native and iicp-host. Peak RSS is the server's VmHWM \
             during the point. Startup is the median time from process start to the first successful task.\n",
            self.measure,
            self.warmup,
            crate::MAX_REQUESTS,
            self.rounds
        );
        let _ = writeln!(out, "## Throughput and latency\n");
        let _ = writeln!(
            out,
            "| load generator | case | conc | req/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU µs/req | peak RSS MiB |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.1} | {:.1} |",
                r.generator,
                r.case,
                r.concurrency,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.errors,
                r.cpu_us_per_request,
                r.peak_rss_kib as f64 / 1024.0
            );
        }
        let _ = writeln!(out, "\n{}", crate::charts::markdown(self).trim_end());
        let _ = writeln!(out, "\n## Ratios against native and the HTTP floor\n");
        for line in self.ratio_lines() {
            let _ = writeln!(out, "- {line}");
        }
        let _ = writeln!(out, "\n## Startup to first served task\n");
        for (name, took) in &self.startup {
            let _ = writeln!(out, "- {name}: {:.1} ms", took.as_secs_f64() * 1000.0);
        }
        let _ = writeln!(out, "\n## Memory\n");
        if let Some(line) = self.memory_line() {
            let _ = writeln!(out, "- {line}");
        }
        for line in self.flood_lines() {
            let _ = writeln!(out, "- {line}");
        }
        if !self.many.is_empty() {
            let _ = writeln!(
                out,
                "\n## Many plugins per node\n\nN `[[plugin]]` tables on one artifact (distinct ids and intents); \
                 ready = process start to the first served task; RSS once serving; reload = one changed plugin \
                 through the admin API (median of seven after one unmeasured), with one file per plugin in a `node.plugin_dirs` \
                 directory (only the changed file is parsed) and with every table in one file (parsed whole).\n"
            );
            for row in &self.many {
                let _ = writeln!(out, "- {}", many_line(row));
            }
            for line in self.many_summary_lines() {
                let _ = writeln!(out, "- {line}");
            }
        }
        if !self.sandbox.trim().is_empty() {
            let _ = writeln!(
                out,
                "\n## Per-task sandbox cost (no HTTP)\n\n```\n{}\n```",
                self.sandbox.trim()
            );
        }
        let _ = writeln!(out, "\n## Summary\n\n`{}`", self.summary_line());
        out
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_string))
        .unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "- CPU: {cpu}, {cores} cores\n- {memory}\n- kernel {}\n- {rustc}\n- run at {date}",
        kernel.trim()
    )
}
