//! What one run measured, as measured: rows per point, startup, the nonce
//! flood, many plugins, the sandbox bench's output, and the machine.

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

/// Everything measured in one run; [`crate::results::Results`] turns it
/// into the figures the report and the results file show.
pub struct Report {
    quick: bool,
    rounds: usize,
    warmup: Duration,
    measure: Duration,
    pub rows: Vec<Row>,
    pub startup: Vec<(String, Duration)>,
    pub flood: Option<Flood>,
    pub many: Vec<ManyRow>,
    pub sandbox: String,
    /// CPU time counters when the run began, for the steal figure.
    started_cpu: Option<CpuTimes>,
    /// When the run began, `YYYY-MM-DD HH:MM UTC`.
    started_at: String,
}

/// The nonce flood: its load and the server's RSS samples.
pub struct Flood {
    pub rps: f64,
    pub requests: u64,
    pub errors: u64,
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// (seconds since start, RSS KiB).
    pub rss_kib: Vec<(u64, u64)>,
}

impl Flood {
    pub fn new(result: &LoadResult, rss_kib: Vec<(u64, u64)>) -> Self {
        Self {
            rps: result.rps(),
            requests: result.requests,
            errors: result.errors,
            statuses: result.statuses.clone(),
            rss_kib,
        }
    }
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
            started_at: iicp_run_info::now_utc(),
        }
    }

    /// The share of CPU time the hypervisor took since the run began.
    pub fn steal(&self) -> Option<f64> {
        self.started_cpu.and_then(CpuTimes::steal_since)
    }

    /// Who ran, where, when and on which commit.
    pub fn run(&self) -> crate::results::Run {
        crate::results::Run {
            tool: format!("bench/run{}", if self.quick { " --quick" } else { "" }),
            date: self.started_at.clone(),
            commit: iicp_run_info::commit(),
            machine: iicp_run_info::machine(),
            rounds: self.rounds,
            warmup_s: self.warmup.as_secs_f64(),
            measure_s: self.measure.as_secs_f64(),
            max_requests: crate::MAX_REQUESTS,
            imported_from: None,
        }
    }
}
