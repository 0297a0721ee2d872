//! One run's figures as a results file, `docs/results/benchmarks-<date>.json`
//! (machine, date, commit, and every figure under a flat key), and everything
//! drawn from it: the console's summary lines, `docs/benchmarks.md` and its
//! charts. The report never computes a figure itself — it prints what the
//! results file holds — so a page quoting a key and the report agree.
//!
//! A run's measurements ([`Report`]) become figures once, in
//! [`Results::from_report`], ratios included; `iicp-bench import REPORT.md`
//! reads a report written before results files existed back into one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::Report;
use crate::CONCURRENCY;

/// Who ran, where, when, on which commit, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// `bench/run` or `bench/run --quick`.
    pub tool: String,
    /// When the run began, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// The commit measured (`-dirty` when the tree had changes).
    pub commit: String,
    /// CPU and cores, memory, kernel, compiler: one line each.
    pub machine: Vec<String>,
    /// Best-of rounds per point.
    pub rounds: usize,
    /// Warm-up and measuring window per point, in seconds.
    pub warmup_s: f64,
    pub measure_s: f64,
    /// Request bound per point (harness).
    pub max_requests: u64,
    /// Set when the file was read back from an older Markdown report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
}

impl Run {
    /// A run of `tool` beginning now on this machine, at the checked-out
    /// commit; the measuring parameters are the caller's to fill in.
    pub fn began_now(tool: &str) -> Self {
        Self {
            tool: tool.to_string(),
            date: iicp_run_info::now_utc(),
            commit: iicp_run_info::commit(),
            machine: iicp_run_info::machine(),
            ..Self::default()
        }
    }
}

/// The order figures are shown in (keys alone do not keep it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    /// (load generator, case, concurrency) in table order.
    pub points: Vec<(String, String, usize)>,
    /// Startup cases in order.
    pub startup: Vec<String>,
    /// (artifact, plugins) in order.
    pub many: Vec<(String, usize)>,
}

/// A results file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub run: Run,
    pub layout: Layout,
    /// Every figure, by key (see the key functions below).
    pub figures: BTreeMap<String, f64>,
    /// The per-task sandbox bench's own output, as printed (its figures are
    /// also under `sandbox/…`).
    pub sandbox: String,
}

/// `load/<generator>/<case>/<conc>/<metric>`.
pub fn load_key(generator: &str, case: &str, conc: usize, metric: &str) -> String {
    format!("load/{generator}/{case}/{conc}/{metric}")
}

fn ratio_key(generator: &str, case: &str, base: &str, conc: usize, metric: &str) -> String {
    format!("ratio/{generator}/{case}/{base}/{conc}/{metric}")
}

fn many_key(artifact: &str, plugins: usize, metric: &str) -> String {
    format!("many/{artifact}/{plugins}/{metric}")
}

const LOAD_METRICS: [&str; 9] = [
    "req_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "errors",
    "cpu_us_per_request",
    "peak_rss_mib",
    "idle_rss_mib",
    "requests",
];
const MANY_METRICS: [&str; 6] = [
    "ready_ms",
    "rss_mib",
    "reload_plugin_dir_ms",
    "prepare_plugin_dir_ms",
    "reload_one_file_ms",
    "prepare_one_file_ms",
];
/// The interpreter echo plugins' cases over HTTP: Python, and JS on each
/// engine (`js-echo` is the default SpiderMonkey build).
pub const INTERPRETERS: [&str; 3] = [
    "iicp-host python-echo",
    "iicp-host js-echo",
    "iicp-host js-echo-quickjs",
];

/// The interpreter targets per fresh task against the Rust echo (issue 23):
/// (sandbox plugin name, what it is, bound). The JS target holds for each
/// engine the bench measures.
const INTERPRETER_TARGETS: [(&str, &str, f64); 3] = [
    ("python-echo", "Python echo", 20.0),
    ("js-echo", "JS echo, SpiderMonkey (default build)", 10.0),
    ("js-echo-quickjs", "JS echo, QuickJS build", 10.0),
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Results {
    /// The figures of a finished run, ratios included.
    pub fn from_report(report: &Report, run: Run) -> Self {
        let mut results = Self {
            run,
            sandbox: report.sandbox.trim().to_string(),
            ..Self::default()
        };
        for r in &report.rows {
            let values = [
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.errors as f64,
                r.cpu_us_per_request,
                r.peak_rss_kib as f64 / 1024.0,
                r.idle_rss_kib as f64 / 1024.0,
                r.requests as f64,
            ];
            for (metric, value) in LOAD_METRICS.iter().zip(values) {
                results.set(load_key(r.generator, &r.case, r.concurrency, metric), value);
            }
            results
                .layout
                .points
                .push((r.generator.to_string(), r.case.clone(), r.concurrency));
        }
        for (name, took) in &report.startup {
            results.set(format!("startup/{name}/ms"), ms(*took));
            results.layout.startup.push(name.clone());
        }
        if let Some(flood) = &report.flood {
            results.set("flood/req_per_s", flood.rps);
            results.set("flood/requests", flood.requests as f64);
            results.set("flood/errors", flood.errors as f64);
            for (status, count) in &flood.statuses {
                results.set(format!("flood/status/{status}"), *count as f64);
            }
            for (seconds, kib) in &flood.rss_kib {
                results.set(format!("flood/rss_mib/{seconds}"), *kib as f64 / 1024.0);
            }
        }
        for row in &report.many {
            let values = [
                ms(row.startup),
                row.rss_kib as f64 / 1024.0,
                ms(row.plugin_dir.wall),
                row.plugin_dir.prepare_ms,
                ms(row.one_file.wall),
                row.one_file.prepare_ms,
            ];
            for (metric, value) in MANY_METRICS.iter().zip(values) {
                results.set(many_key(&row.artifact, row.plugins, metric), value);
            }
            results
                .layout
                .many
                .push((row.artifact.clone(), row.plugins));
        }
        if let Some(steal) = report.steal() {
            results.set("steal_percent", steal * 100.0);
        }
        results.derive();
        results.figures.extend(sandbox_figures(&results.sandbox));
        results
    }

    fn set(&mut self, key: impl Into<String>, value: f64) {
        self.figures.insert(key.into(), value);
    }

    /// The figure under `key`, when there is one.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.figures.get(key).copied()
    }

    fn load(&self, generator: &str, case: &str, conc: usize, metric: &str) -> Option<f64> {
        self.get(&load_key(generator, case, conc, metric))
    }

    fn generators(&self) -> Vec<&str> {
        let mut generators: Vec<&str> = Vec::new();
        for (generator, _, _) in &self.layout.points {
            if !generators.contains(&generator.as_str()) {
                generators.push(generator);
            }
        }
        generators
    }

    /// The iicp-host cases, in table order.
    pub fn host_cases(&self) -> Vec<&str> {
        let mut cases: Vec<&str> = Vec::new();
        for (_, case, _) in &self.layout.points {
            if !["native", "http-floor"].contains(&case.as_str()) && !cases.contains(&case.as_str())
            {
                cases.push(case);
            }
        }
        cases
    }

    /// The `--instance-reuse N` case, when the run had one.
    fn reuse_case(&self) -> Option<String> {
        (self.host_cases().into_iter())
            .find(|case| case.starts_with("iicp-host+reuse"))
            .map(str::to_string)
    }

    fn artifacts(&self) -> Vec<&str> {
        let mut artifacts: Vec<&str> = Vec::new();
        for (artifact, _) in &self.layout.many {
            if !artifacts.contains(&artifact.as_str()) {
                artifacts.push(artifact);
            }
        }
        artifacts
    }

    /// Ratios, fractions, memory per task, many-plugin growth and the
    /// summary, computed once from the measured figures.
    fn derive(&mut self) {
        let mut derived: Vec<(String, f64)> = Vec::new();
        for generator in self.generators() {
            let mut pairs: Vec<(String, &str)> = self
                .host_cases()
                .into_iter()
                .map(|case| (case.to_string(), "native"))
                .collect();
            pairs.extend(["iicp-host", "native"].map(|case| (case.to_string(), "http-floor")));
            for (case, base) in pairs {
                for c in CONCURRENCY {
                    let metric = |m| {
                        Some((
                            self.load(generator, &case, c, m)?,
                            self.load(generator, base, c, m)?,
                        ))
                    };
                    let (Some(rps), Some(p99)) = (metric("req_per_s"), metric("p99_ms")) else {
                        continue;
                    };
                    derived.push((
                        ratio_key(generator, &case, base, c, "throughput"),
                        rps.0 / rps.1,
                    ));
                    derived.push((ratio_key(generator, &case, base, c, "p99"), p99.0 / p99.1));
                    if let (Some(cpu), "native") = (metric("cpu_us_per_request"), base) {
                        derived.push((
                            ratio_key(generator, &case, base, c, "cpu_per_request"),
                            cpu.0 / cpu.1,
                        ));
                    }
                }
            }
            // Issue 23's first target: a fresh instance per task as fast as
            // one reused for many tasks.
            if let Some(reuse) = self.reuse_case() {
                for c in CONCURRENCY {
                    if let (Some(fresh), Some(reused)) = (
                        self.load(generator, "iicp-host", c, "req_per_s"),
                        self.load(generator, &reuse, c, "req_per_s"),
                    ) {
                        derived.push((
                            ratio_key(generator, "iicp-host", &reuse, c, "throughput"),
                            fresh / reused,
                        ));
                    }
                }
            }
            for case in ["iicp-host+nonce", "iicp-host+trace"] {
                if let (Some(row), Some(base)) = (
                    self.load(generator, case, 64, "req_per_s"),
                    self.load(generator, "iicp-host", 64, "req_per_s"),
                ) {
                    derived.push((
                        ratio_key(generator, case, "iicp-host", 64, "throughput"),
                        row / base,
                    ));
                }
            }
            for case in INTERPRETERS {
                let (Some(one), Some(sixteen), Some(rust)) = (
                    self.load(generator, case, 1, "req_per_s"),
                    self.load(generator, case, 16, "req_per_s"),
                    self.load(generator, "iicp-host", 1, "req_per_s"),
                ) else {
                    continue;
                };
                derived.push((
                    ratio_key(generator, case, "iicp-host", 1, "throughput"),
                    one / rust,
                ));
                derived.push((
                    format!("scaling/{generator}/{case}/16_over_1"),
                    sixteen / one,
                ));
            }
        }
        if let (Some(peak), Some(idle), Some(native)) = (
            self.load("harness", "iicp-host", 256, "peak_rss_mib"),
            self.load("harness", "iicp-host", 256, "idle_rss_mib"),
            self.load("harness", "native", 256, "peak_rss_mib"),
        ) {
            derived.push((
                "memory/kib_per_task_beyond_idle".into(),
                (peak - idle).max(0.0) * 1024.0 / 256.0,
            ));
            derived.push(("memory/kib_per_task_of_peak".into(), peak * 1024.0 / 256.0));
            derived.push(("memory/native_peak_mib".into(), native));
        }
        for artifact in self.artifacts() {
            let sizes: Vec<usize> = (self.layout.many.iter())
                .filter(|(a, _)| a == artifact)
                .map(|(_, n)| *n)
                .collect();
            let (Some(&small), Some(&large)) = (sizes.first(), sizes.last()) else {
                continue;
            };
            let figure = |n: usize, m: &str| self.get(&many_key(artifact, n, m));
            let (Some(rss_small), Some(rss_large)) =
                (figure(small, "rss_mib"), figure(large, "rss_mib"))
            else {
                continue;
            };
            if large <= small {
                continue;
            }
            let growth = format!("many/{artifact}/growth");
            derived.push((format!("{growth}/from_n"), small as f64));
            derived.push((format!("{growth}/to_n"), large as f64));
            derived.push((
                format!("{growth}/kib_per_plugin"),
                (rss_large - rss_small).max(0.0) * 1024.0 / (large - small) as f64,
            ));
            for layout in ["plugin_dir", "one_file"] {
                let key = format!("reload_{layout}_ms");
                if let (Some(a), Some(b)) = (figure(small, &key), figure(large, &key)) {
                    derived.push((format!("{growth}/reload_ratio_{layout}"), b / a.max(1e-9)));
                }
            }
        }
        let ratios: Vec<(&str, f64)> = derived
            .iter()
            .filter(|(k, _)| {
                k.starts_with("ratio/")
                    && k.contains("/iicp-host/native/")
                    && !k.ends_with("/cpu_per_request")
            })
            .map(|(k, v)| (if k.ends_with("/throughput") { "t" } else { "p" }, *v))
            .collect();
        if !ratios.is_empty() {
            let throughput = ratios
                .iter()
                .filter(|r| r.0 == "t")
                .map(|r| r.1)
                .fold(f64::INFINITY, f64::min);
            let p99 = ratios
                .iter()
                .filter(|r| r.0 == "p")
                .map(|r| r.1)
                .fold(0.0, f64::max);
            derived.push(("summary/throughput_ratio".into(), throughput));
            derived.push(("summary/p99_ratio".into(), p99));
        }
        self.figures.extend(derived);
    }

    /// Ratio lines, as the console and the report print them.
    pub fn ratio_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for generator in self.generators() {
            for case in self.host_cases() {
                for c in CONCURRENCY {
                    let r = |m| self.get(&ratio_key(generator, case, "native", c, m));
                    if let (Some(t), Some(p), Some(cpu)) =
                        (r("throughput"), r("p99"), r("cpu_per_request"))
                    {
                        lines.push(format!(
                            "[{generator}] ratio {case} / native  conc={c:<4} throughput={t:.3} p99={p:.3} cpu_per_request={cpu:.3}"
                        ));
                    }
                }
            }
            for case in ["iicp-host", "native"] {
                for c in CONCURRENCY {
                    let r = |m| self.get(&ratio_key(generator, case, "http-floor", c, m));
                    if let (Some(t), Some(p)) = (r("throughput"), r("p99")) {
                        lines.push(format!(
                            "[{generator}] fraction of the HTTP floor: {case} conc={c:<4} throughput={t:.3} p99={p:.3}"
                        ));
                    }
                }
            }
            for case in ["iicp-host+nonce", "iicp-host+trace"] {
                if let Some(t) =
                    self.get(&ratio_key(generator, case, "iicp-host", 64, "throughput"))
                {
                    lines.push(format!(
                        "[{generator}] {case} / iicp-host throughput at conc=64: {t:.3}"
                    ));
                }
            }
            for case in INTERPRETERS {
                if let (Some(rust), Some(scaling)) = (
                    self.get(&ratio_key(generator, case, "iicp-host", 1, "throughput")),
                    self.get(&format!("scaling/{generator}/{case}/16_over_1")),
                ) {
                    lines.push(format!(
                        "[{generator}] {case}: conc=1 throughput / Rust echo's = {rust:.3}; conc=16 / conc=1 = {scaling:.3}"
                    ));
                }
            }
        }
        lines
    }

    pub fn memory_line(&self) -> Option<String> {
        let peak = self.load("harness", "iicp-host", 256, "peak_rss_mib")?;
        let idle = self.load("harness", "iicp-host", 256, "idle_rss_mib")?;
        Some(format!(
            "memory at conc=256: iicp-host peak {peak:.1} MiB (idle {idle:.1} MiB, {:.1} KiB per in-flight task beyond idle, {:.1} KiB per task of the whole peak); native peak {:.1} MiB",
            self.get("memory/kib_per_task_beyond_idle")?,
            self.get("memory/kib_per_task_of_peak")?,
            self.get("memory/native_peak_mib")?
        ))
    }

    /// The flood's RSS samples: (seconds, MiB), in time order.
    pub fn flood_rss(&self) -> Vec<(u64, f64)> {
        let mut samples: Vec<(u64, f64)> = (self.figures.iter())
            .filter_map(|(k, v)| Some((k.strip_prefix("flood/rss_mib/")?.parse().ok()?, *v)))
            .collect();
        samples.sort_by_key(|s| s.0);
        samples
    }

    pub fn flood_lines(&self) -> Vec<String> {
        let (Some(rps), Some(requests), Some(errors)) = (
            self.get("flood/req_per_s"),
            self.get("flood/requests"),
            self.get("flood/errors"),
        ) else {
            return Vec::new();
        };
        let mut statuses: Vec<(u16, f64)> = (self.figures.iter())
            .filter_map(|(k, v)| Some((k.strip_prefix("flood/status/")?.parse().ok()?, *v)))
            .collect();
        statuses.sort_by_key(|s| s.0);
        let trace: Vec<String> = (self.flood_rss().iter())
            .map(|(s, mib)| format!("{s}s:{mib:.1}MiB"))
            .collect();
        vec![
            format!(
                "nonce flood (conc=64, unique nonces, default 1000000-nonce cap): {rps:.0} req/s, {requests} requests, {errors} errors; by status: {} (503 = nonce_cache_full once the cap is reached)",
                statuses
                    .iter()
                    .map(|(status, count)| format!("{status}: {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!("nonce flood RSS: {}", trace.join(" ")),
        ]
    }

    pub fn many_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (artifact, n) in &self.layout.many {
            let f: Vec<f64> = (MANY_METRICS.iter())
                .map(|m| self.get(&many_key(artifact, *n, m)).unwrap_or(f64::NAN))
                .collect();
            lines.push(format!(
                "many plugins: {artifact} N={n}: ready in {:.1} ms, RSS {:.1} MiB, reload of one plugin: plugin dir {:.1} ms (node's prepare {:.1} ms), one file {:.1} ms ({:.1} ms)",
                f[0], f[1], f[2], f[3], f[4], f[5]
            ));
        }
        for artifact in self.artifacts() {
            let g = |m: &str| self.get(&format!("many/{artifact}/growth/{m}"));
            let (Some(kib), Some(from), Some(to), Some(dir), Some(file)) = (
                g("kib_per_plugin"),
                g("from_n"),
                g("to_n"),
                g("reload_ratio_plugin_dir"),
                g("reload_ratio_one_file"),
            ) else {
                continue;
            };
            lines.push(format!(
                "many plugins: {artifact}: {kib:.1} KiB RSS per additional plugin (N={from} -> {to}), reload N={to} / N={from} = {dir:.2} (plugin dir), {file:.2} (one file)"
            ));
        }
        lines
    }

    pub fn summary_line(&self) -> String {
        let t = self.get("summary/throughput_ratio").unwrap_or(f64::NAN);
        let p = self.get("summary/p99_ratio").unwrap_or(f64::NAN);
        format!("throughput_ratio={t:.3} p99_ratio={p:.3}")
    }

    /// `docs/benchmarks.md`, every figure from this results file, which it
    /// names (`results_link`, relative to the report).
    pub fn markdown(&self, results_link: &str) -> String {
        let run = &self.run;
        let mut out = page_head("Benchmarks", run, results_link);
        if let Some(steal) = self.get("steal_percent") {
            // A virtual machine's neighbours take CPU time the figures cannot
            // see; every ratio below is within interleaved rounds, but the
            // absolute figures move with this.
            let _ = writeln!(
                out,
                "CPU time taken by the hypervisor (steal) during the load measurements: {steal:.1} %.\n"
            );
        }
        let _ = writeln!(
            out,
            "## Method\n\n\
             Servers run one at a time on loopback, each with `max_concurrent` 256: the native reference \
             (`iicp-client =0.7.109` `IicpNode` with an in-process echo handler, `bench/native-node`), \
             the HTTP floor (`bench/http-floor`: a minimal hyper server answering the bytes iicp-host answers, \
             reading each request but parsing nothing) and `iicp-host` serving `plugins/echo` with a fresh \
             instance per task and default settings (`python-echo`/`js-echo`/`js-echo-quickjs`: the interpreter echo plugins, JS on SpiderMonkey and on QuickJS, \
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
            Duration::from_secs_f64(run.measure_s),
            Duration::from_secs_f64(run.warmup_s),
            run.max_requests,
            run.rounds
        );
        out.push_str(&self.targets_markdown());
        let _ = writeln!(out, "## Throughput and latency\n");
        let _ = writeln!(
            out,
            "| load generator | case | conc | req/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU µs/req | peak RSS MiB |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (generator, case, c) in &self.layout.points {
            let f = |m| self.load(generator, case, *c, m).unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "| {generator} | {case} | {c} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.1} | {:.1} |",
                f("req_per_s"),
                f("p50_ms"),
                f("p99_ms"),
                f("p999_ms"),
                f("errors"),
                f("cpu_us_per_request"),
                f("peak_rss_mib")
            );
        }
        let _ = writeln!(out, "\n{}", crate::charts::markdown(self).trim_end());
        let _ = writeln!(out, "\n## Ratios against native and the HTTP floor\n");
        for line in self.ratio_lines() {
            let _ = writeln!(out, "- {line}");
        }
        let _ = writeln!(out, "\n## Startup to first served task\n");
        for name in &self.layout.startup {
            let took = self.get(&format!("startup/{name}/ms")).unwrap_or(f64::NAN);
            let _ = writeln!(out, "- {name}: {took:.1} ms");
        }
        let _ = writeln!(out, "\n## Memory\n");
        for line in self.memory_line().into_iter().chain(self.flood_lines()) {
            let _ = writeln!(out, "- {line}");
        }
        if !self.layout.many.is_empty() {
            let _ = writeln!(
                out,
                "\n## Many plugins per node\n\nN `[[plugin]]` tables on one artifact (distinct ids and intents); \
                 ready = process start to the first served task; RSS once serving; reload = one changed plugin \
                 through the admin API (median of seven after one unmeasured), with one file per plugin in a `node.plugin_dirs` \
                 directory (only the changed file is read) and with every table in one file (only the changed table is parsed).\n"
            );
            for line in self.many_lines() {
                let _ = writeln!(out, "- {line}");
            }
        }
        if !self.sandbox.is_empty() {
            let _ = writeln!(
                out,
                "\n## Per-task sandbox cost (no HTTP)\n\nKeys `sandbox/<plugin>/<fresh|reuse…>/<figure>` in the results file.\n\n```\n{}\n```",
                self.sandbox
            );
        }
        let _ = writeln!(out, "\n## Summary\n\n`{}`", self.summary_line());
        out
    }
}

/// A generated page's head: its title, that it is generated from the
/// results file at `results_link`, and the run's machine, date and commit
/// (and where an imported run was read from).
pub fn page_head(title: &str, run: &Run, results_link: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {title}\n");
    let _ = writeln!(
        out,
        "Produced by `{}` — do not edit by hand. Every figure below is in the run's results file, \
         [`{results_link}`]({results_link}), under a key the other pages quote.\n",
        run.tool
    );
    let mut machine: String = run.machine.iter().map(|l| format!("- {l}\n")).collect();
    let _ = write!(machine, "- run at {}\n- commit {}", run.date, run.commit);
    if let Some(source) = &run.imported_from {
        let _ = write!(machine, "\n- read back from `{source}`");
    }
    let _ = writeln!(out, "## Machine\n\n{machine}\n");
    out
}

/// One performance target: what is compared, the bound, and the keys of
/// the figures it holds for (each `Some` figure must meet the bound).
struct Target {
    name: String,
    /// The figures, as (label, key).
    figures: Vec<(String, String)>,
    bound: Bound,
}

/// Which side of its bound a target's figures must be on.
#[derive(Clone, Copy)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    fn meets(self, value: f64) -> bool {
        match self {
            Bound::AtLeast(bound) => value >= bound,
            Bound::AtMost(bound) => value <= bound,
        }
    }
}

impl Results {
    /// The performance targets (issues 13 and 23) against this run's
    /// figures, one row each: the figures with their labels, and met or
    /// missed (or not measured).
    fn targets(&self) -> Vec<Target> {
        let generators = self.generators();
        let per_point = |case: &str, base: &str, metric: &str, concs: &[usize]| {
            let mut figures = Vec::new();
            for generator in &generators {
                for c in concs {
                    figures.push((
                        format!("{generator} c={c}"),
                        ratio_key(generator, case, base, *c, metric),
                    ));
                }
            }
            figures
        };
        let under_load = [16, 64];
        let mut targets = Vec::new();
        if let Some(reuse) = self.reuse_case() {
            targets.push(Target {
                name: format!("fresh instance ≥ 0.9× `{reuse}` throughput"),
                figures: per_point("iicp-host", &reuse, "throughput", &under_load),
                bound: Bound::AtLeast(0.9),
            });
        }
        targets.push(Target {
            name: "Rust echo, fresh, ≥ 1.0× native throughput".into(),
            figures: per_point("iicp-host", "native", "throughput", &under_load),
            bound: Bound::AtLeast(1.0),
        });
        targets.push(Target {
            name: "Rust echo, fresh, CPU per request ≤ 1.1× native".into(),
            figures: per_point("iicp-host", "native", "cpu_per_request", &under_load),
            bound: Bound::AtMost(1.1),
        });
        targets.push(Target {
            name: "Rust echo, fresh, p99 ≤ 1.25× native".into(),
            figures: per_point("iicp-host", "native", "p99", &under_load),
            bound: Bound::AtMost(1.25),
        });
        for (plugin, what, bound) in INTERPRETER_TARGETS {
            targets.push(Target {
                name: format!("{what} (`{plugin}`), fresh, per task ≤ {bound}× the Rust echo"),
                figures: vec![("p50".into(), format!("sandbox/{plugin}/fresh/p50_vs_echo"))],
                bound: Bound::AtMost(bound),
            });
        }
        let mut reloads = Vec::new();
        for artifact in self.artifacts() {
            for layout in ["plugin_dir", "one_file"] {
                reloads.push((
                    format!("{artifact} {}", layout.replace('_', " ")),
                    format!("many/{artifact}/growth/reload_ratio_{layout}"),
                ));
            }
        }
        targets.push(Target {
            name: "reload of one plugin among N = 1,000 within 2× of N = 10".into(),
            figures: reloads,
            bound: Bound::AtMost(2.0),
        });
        targets
    }

    /// The targets as a table: figures shown, then met, missed or not
    /// measured.
    fn targets_markdown(&self) -> String {
        let mut out = String::from(
            "## Targets\n\nThe performance targets against this run's figures (keys `ratio/…`, \
             `sandbox/…`, `many/…/growth/…`); the LLM-gateway case's are on its own page, \
             [benchmarks-llm.md](benchmarks-llm.md).\n\n| target | figures | |\n|---|---|---|\n",
        );
        for target in self.targets() {
            let measured: Vec<(String, f64)> = (target.figures.iter())
                .filter_map(|(label, key)| Some((label.clone(), self.get(key)?)))
                .collect();
            let verdict = if measured.is_empty() {
                "not measured in this run"
            } else if measured.iter().all(|(_, v)| target.bound.meets(*v)) {
                "met"
            } else {
                "missed"
            };
            let shown: Vec<String> = (measured.iter())
                .map(|(label, v)| format!("{label} {v:.2}"))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {verdict} |",
                target.name,
                shown.join(", ")
            );
        }
        out.push('\n');
        out
    }
}

/// The figures of the sandbox bench's output: `sandbox/<plugin>/<mode>/<name>`
/// per measured line (`p50_us`, `cpu_per_task_us`, `faults_per_task`,
/// `peak_memory_mib`, `bytes`, …) and `sandbox/<plugin>/fresh/<p50|cpu_per_task>_vs_echo`
/// per ratio line.
pub fn sandbox_figures(text: &str) -> BTreeMap<String, f64> {
    let mut figures = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ratio ") {
            // ratio python-echo.wasm / echo.wasm (fresh instance, same run): p50 134.9x, cpu/task 122.7x
            let Some((plugin, values)) = rest
                .split_once(" / ")
                .map(|(p, _)| p)
                .zip(rest.split_once("): ").map(|(_, v)| v))
            else {
                continue;
            };
            let plugin = plugin.trim_end_matches(".wasm");
            for (name, value) in values.split(", ").filter_map(|v| v.split_once(' ')) {
                if let Ok(value) = value.trim_end_matches('x').parse::<f64>() {
                    let name = name.replace('/', "_per_");
                    figures.insert(format!("sandbox/{plugin}/fresh/{name}_vs_echo"), value);
                }
            }
            continue;
        }
        // echo.wasm (109029 bytes) fresh instance: n=20000 p50=28.4us … peak_memory=1.1MiB
        let Some((head, values)) = line.split_once(": ") else {
            continue;
        };
        let Some((plugin, rest)) = head.split_once(" (") else {
            continue;
        };
        let Some((bytes, mode)) = rest.split_once(" bytes) ") else {
            continue;
        };
        let plugin = plugin.trim_end_matches(".wasm");
        let mode = if mode == "fresh instance" {
            "fresh".to_string()
        } else {
            mode.replace('=', "")
        };
        if let Ok(bytes) = bytes.parse::<f64>() {
            figures.insert(format!("sandbox/{plugin}/bytes"), bytes);
        }
        for (name, value) in values.split_whitespace().filter_map(|v| v.split_once('=')) {
            let (number, unit) = split_unit(value);
            let Ok(number) = number.parse::<f64>() else {
                continue;
            };
            let name = name.replace('/', "_per_");
            let key = match unit {
                "" => format!("sandbox/{plugin}/{mode}/{name}"),
                unit => format!("sandbox/{plugin}/{mode}/{name}_{}", unit.to_lowercase()),
            };
            figures.insert(key, number);
        }
    }
    figures
}

/// "28.4us" → ("28.4", "us").
fn split_unit(value: &str) -> (&str, &str) {
    let end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(value.len());
    value.split_at(end)
}

/// Every number in `text`, in order ("N=10: ready in 14.6 ms" → 10, 14.6).
fn numbers(text: &str) -> Vec<f64> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|s| s.trim_matches('.').parse().ok())
        .collect()
}

/// The text of `line` after `prefix`, when it starts with it.
fn after<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)
}

impl Results {
    /// Reads a Markdown report written before results files existed: every
    /// figure as it was printed (ratios are not recomputed from rounded
    /// figures), with `run` saying which commit it measured.
    pub fn import_markdown(text: &str, source: &str, commit: &str) -> Result<Self, String> {
        let mut results = Self::default();
        let run = &mut results.run;
        run.imported_from = Some(source.to_string());
        run.commit = commit.to_string();
        run.tool = text
            .split('`')
            .nth(1)
            .filter(|t| t.starts_with("bench/run"))
            .ok_or("no `bench/run` line")?
            .to_string();
        let section = |name: &str| -> Vec<&str> {
            text.split(&format!("\n## {name}\n"))
                .nth(1)
                .unwrap_or_default()
                .split("\n## ")
                .next()
                .unwrap_or_default()
                .lines()
                .collect()
        };
        for line in section("Machine") {
            if let Some(date) = after(line, "- run at ") {
                run.date = date.to_string();
            } else if let Some(l) = after(line, "- ") {
                run.machine
                    .push(l.split_whitespace().collect::<Vec<_>>().join(" "));
            } else if let Some(steal) = after(
                line,
                "CPU time taken by the hypervisor (steal) during the load measurements: ",
            ) {
                results
                    .figures
                    .insert("steal_percent".into(), numbers(steal)[0]);
            }
        }
        let method = section("Method").join(" ");
        let between = |from: &str, to: &str| -> Option<&str> {
            method.split_once(from)?.1.split_once(to).map(|(v, _)| v)
        };
        let seconds = |v: Option<&str>| v.and_then(|v| v.trim_end_matches('s').parse::<f64>().ok());
        run.measure_s =
            seconds(between("chat tasks for ", " after ")).ok_or("no measuring window")?;
        run.warmup_s = seconds(between(" after ", " of warm-up")).ok_or("no warm-up")?;
        run.max_requests = between("bounded at ", " requests")
            .and_then(|v| v.parse().ok())
            .ok_or("no bound")?;
        run.rounds = between("interleaved at each concurrency, ", " rounds")
            .and_then(|v| v.parse().ok())
            .ok_or("no rounds")?;
        for line in section("Throughput and latency")
            .iter()
            .skip_while(|l| !l.starts_with("|---"))
            .skip(1)
        {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let [generator, case, conc, rest @ ..] = &cells[..] else {
                break;
            };
            let conc: usize = conc.parse().map_err(|_| format!("bad row {line}"))?;
            // The table's columns: every load metric but the last two.
            for (metric, cell) in LOAD_METRICS[..7].iter().zip(rest) {
                let value = cell
                    .parse()
                    .map_err(|_| format!("bad cell {cell} in {line}"))?;
                results
                    .figures
                    .insert(load_key(generator, case, conc, metric), value);
            }
            results
                .layout
                .points
                .push((generator.to_string(), case.to_string(), conc));
        }
        for line in section("Ratios against native and the HTTP floor") {
            let Some((generator, rest)) = after(line, "- [").and_then(|l| l.split_once("] "))
            else {
                continue;
            };
            let value = |name: &str| {
                rest.split_once(name).and_then(|(_, v)| {
                    v.split_whitespace()
                        .next()?
                        .trim_end_matches(';')
                        .parse()
                        .ok()
                })
            };
            let conc = || value("conc=").map(|c: f64| c as usize);
            if let Some(case) =
                after(rest, "ratio ").and_then(|r| r.split_once(" / native").map(|(c, _)| c))
            {
                let c = conc().ok_or(format!("bad line {line}"))?;
                for m in ["throughput", "p99", "cpu_per_request"] {
                    let v = value(&format!("{m}=")).ok_or(format!("no {m} in {line}"))?;
                    results
                        .figures
                        .insert(ratio_key(generator, case, "native", c, m), v);
                }
            } else if let Some(case) = after(rest, "fraction of the HTTP floor: ")
                .and_then(|r| r.split_once(" conc=").map(|(c, _)| c))
            {
                let c = conc().ok_or(format!("bad line {line}"))?;
                for m in ["throughput", "p99"] {
                    let v = value(&format!("{m}=")).ok_or(format!("no {m} in {line}"))?;
                    results
                        .figures
                        .insert(ratio_key(generator, case, "http-floor", c, m), v);
                }
            } else if let Some((case, v)) = rest.split_once(" / iicp-host throughput at conc=64: ")
            {
                results.figures.insert(
                    ratio_key(generator, case, "iicp-host", 64, "throughput"),
                    v.parse().map_err(|_| format!("bad line {line}"))?,
                );
            } else if let Some((case, v)) = rest.split_once(": conc=1 throughput / Rust echo's = ")
            {
                let n = numbers(v);
                results.figures.insert(
                    ratio_key(generator, case, "iicp-host", 1, "throughput"),
                    n[0],
                );
                results.figures.insert(
                    format!("scaling/{generator}/{case}/16_over_1"),
                    *n.last().ok_or("no scaling")?,
                );
            }
        }
        for line in section("Startup to first served task") {
            if let Some((name, took)) = after(line, "- ").and_then(|l| l.rsplit_once(": ")) {
                results
                    .figures
                    .insert(format!("startup/{name}/ms"), numbers(took)[0]);
                results.layout.startup.push(name.to_string());
            }
        }
        for line in section("Memory") {
            if let Some(rest) = after(line, "- memory at conc=256: ") {
                let n = numbers(rest);
                let [peak, idle, beyond, of_peak, native] = n[..] else {
                    return Err(format!("bad line {line}"));
                };
                results
                    .figures
                    .insert(load_key("harness", "iicp-host", 256, "idle_rss_mib"), idle);
                let _ = peak;
                results
                    .figures
                    .insert("memory/kib_per_task_beyond_idle".into(), beyond);
                results
                    .figures
                    .insert("memory/kib_per_task_of_peak".into(), of_peak);
                results
                    .figures
                    .insert("memory/native_peak_mib".into(), native);
            } else if let Some(rest) = after(line, "- nonce flood RSS: ") {
                for sample in rest.split_whitespace() {
                    let (s, mib) = sample
                        .split_once("s:")
                        .ok_or(format!("bad sample {sample}"))?;
                    results
                        .figures
                        .insert(format!("flood/rss_mib/{s}"), numbers(mib)[0]);
                }
            } else if let Some(rest) =
                after(line, "- nonce flood (").and_then(|l| l.split_once("): ").map(|(_, r)| r))
            {
                let (counts, statuses) = rest
                    .split_once("; by status: ")
                    .ok_or(format!("bad line {line}"))?;
                let n = numbers(counts);
                for (key, value) in ["flood/req_per_s", "flood/requests", "flood/errors"]
                    .iter()
                    .zip(n)
                {
                    results.figures.insert(key.to_string(), value);
                }
                let statuses = statuses.split(" (").next().unwrap_or_default();
                for pair in statuses.split(", ") {
                    let (status, count) =
                        pair.split_once(": ").ok_or(format!("bad status {pair}"))?;
                    results.figures.insert(
                        format!("flood/status/{status}"),
                        count.parse().map_err(|_| format!("bad status {pair}"))?,
                    );
                }
            }
        }
        for line in section("Many plugins per node") {
            let Some(rest) = after(line, "- many plugins: ") else {
                continue;
            };
            let (head, figures) = rest.split_once(": ").ok_or(format!("bad line {line}"))?;
            let n = numbers(figures);
            if let Some((artifact, plugins)) = head.split_once(" N=") {
                let plugins: usize = plugins.parse().map_err(|_| format!("bad line {line}"))?;
                for (metric, value) in MANY_METRICS.iter().zip(&n) {
                    results
                        .figures
                        .insert(many_key(artifact, plugins, metric), *value);
                }
                results.layout.many.push((artifact.to_string(), plugins));
            } else {
                let [kib, from, to, _, _, dir, file] = n[..] else {
                    return Err(format!("bad line {line}"));
                };
                let growth = format!("many/{head}/growth");
                for (m, v) in [
                    ("kib_per_plugin", kib),
                    ("from_n", from),
                    ("to_n", to),
                    ("reload_ratio_plugin_dir", dir),
                    ("reload_ratio_one_file", file),
                ] {
                    results.figures.insert(format!("{growth}/{m}"), v);
                }
            }
        }
        results.sandbox = section("Per-task sandbox cost (no HTTP)")
            .iter()
            .skip_while(|l| !l.starts_with("```"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .copied()
            .collect::<Vec<_>>()
            .join("\n");
        let summary = section("Summary").join(" ");
        for (name, key) in [
            ("throughput_ratio=", "summary/throughput_ratio"),
            ("p99_ratio=", "summary/p99_ratio"),
        ] {
            let value = summary
                .split_once(name)
                .and_then(|(_, v)| numbers(v).first().copied());
            results.figures.insert(
                key.into(),
                value.ok_or(format!("no {name} in the summary"))?,
            );
        }
        let sandbox = sandbox_figures(&results.sandbox);
        results.figures.extend(sandbox);
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_lines_become_keyed_figures() {
        let figures = sandbox_figures(
            "allocator: pooling\n\
             python-echo.wasm (18485062 bytes) fresh instance: n=20000 p50=3832.3us calls/s=269 cpu/task=3706.0us faults/task=229.0 peak_memory=12.5MiB\n\
             echo.wasm (109029 bytes) reuse=1000: n=20000 p50=9.0us\n\
             ratio python-echo.wasm / echo.wasm (fresh instance, same run): p50 134.9x, cpu/task 122.7x",
        );
        assert_eq!(figures["sandbox/python-echo/fresh/p50_us"], 3832.3);
        assert_eq!(figures["sandbox/python-echo/fresh/calls_per_s"], 269.0);
        assert_eq!(figures["sandbox/python-echo/fresh/cpu_per_task_us"], 3706.0);
        assert_eq!(figures["sandbox/python-echo/fresh/peak_memory_mib"], 12.5);
        assert_eq!(figures["sandbox/python-echo/bytes"], 18485062.0);
        assert_eq!(figures["sandbox/echo/reuse1000/p50_us"], 9.0);
        assert_eq!(figures["sandbox/python-echo/fresh/p50_vs_echo"], 134.9);
        assert_eq!(
            figures["sandbox/python-echo/fresh/cpu_per_task_vs_echo"],
            122.7
        );
    }

    /// The JS target is shown per engine: the QuickJS build's own ratio key
    /// from the sandbox bench's line for `js-echo-quickjs.wasm`, and its own
    /// met/missed beside the SpiderMonkey build's.
    #[test]
    fn the_js_target_is_judged_per_engine() {
        let results = Results {
            figures: sandbox_figures(
                "ratio python-echo.wasm / echo.wasm (fresh instance, same run): p50 24.1x, cpu/task 29.7x\n\
                 ratio js-echo.wasm / echo.wasm (fresh instance, same run): p50 29.3x, cpu/task 30.6x\n\
                 ratio js-echo-quickjs.wasm / echo.wasm (fresh instance, same run): p50 9.3x, cpu/task 8.9x",
            ),
            ..Results::default()
        };
        assert_eq!(
            results.get("sandbox/js-echo-quickjs/fresh/p50_vs_echo"),
            Some(9.3)
        );
        let table = results.targets_markdown();
        let row = |what: &str| {
            table
                .lines()
                .find(|line| line.starts_with(&format!("| {what},")))
                .unwrap_or_else(|| panic!("no target row for {what} in\n{table}"))
                .to_string()
        };
        assert_eq!(
            row("Python echo (`python-echo`)"),
            "| Python echo (`python-echo`), fresh, per task ≤ 20× the Rust echo | p50 24.10 | missed |"
        );
        assert_eq!(
            row("JS echo, SpiderMonkey (default build) (`js-echo`)"),
            "| JS echo, SpiderMonkey (default build) (`js-echo`), fresh, per task ≤ 10× the Rust echo | p50 29.30 | missed |"
        );
        assert_eq!(
            row("JS echo, QuickJS build (`js-echo-quickjs`)"),
            "| JS echo, QuickJS build (`js-echo-quickjs`), fresh, per task ≤ 10× the Rust echo | p50 9.30 | met |"
        );
        // A run without the QuickJS build says so rather than judging it.
        let mut older = results.clone();
        older
            .figures
            .remove("sandbox/js-echo-quickjs/fresh/p50_vs_echo");
        assert!(older.targets_markdown().contains(
            "| JS echo, QuickJS build (`js-echo-quickjs`), fresh, per task ≤ 10× the Rust echo |  | not measured in this run |"
        ));
    }

    /// The committed report is what its results file renders, byte for byte
    /// (so no figure on the page is typed by hand).
    #[test]
    fn the_committed_report_is_rendered_from_its_results_file() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        let report = std::fs::read_to_string(docs.join("benchmarks.md")).unwrap();
        let link = report
            .split("[`")
            .nth(1)
            .and_then(|l| l.split('`').next())
            .expect("the report names its results file");
        let results: Results =
            serde_json::from_str(&std::fs::read_to_string(docs.join(link)).unwrap()).unwrap();
        assert_eq!(results.markdown(link), report);
    }
}
