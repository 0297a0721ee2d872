//! What a case found: counts, healthy-traffic latency, memory, and the
//! checks that decide whether it passed — as data for the tests and as the
//! markdown of `docs/reliability.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::charts::RssPicture;

/// Latencies of healthy traffic that ran beside a case.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyStats {
    /// Requests sent.
    pub count: u64,
    /// Requests that did not get the expected answer.
    pub failures: u64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Worst latency.
    pub max: Duration,
}

impl LatencyStats {
    /// Statistics over `latencies` (any order) with `failures` failed requests.
    pub fn from_latencies(mut latencies: Vec<Duration>, failures: u64) -> Self {
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        Self {
            count: latencies.len() as u64 + failures,
            failures,
            p50: at(0.50),
            p99: at(0.99),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }
}

/// Resident memory of the node around a case, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RssFigures {
    /// Before the case started (node warmed up).
    pub before: u64,
    /// The highest sample during the case.
    pub peak: u64,
    /// After the case, once memory settled.
    pub after: u64,
}

impl RssFigures {
    /// `before` and `after` as measured; the peak is the highest of the
    /// `samples` taken during the case (`before` when there are none).
    pub fn from_samples(before: u64, samples: &[(Duration, u64)], after: u64) -> Self {
        Self {
            before,
            peak: samples.iter().map(|&(_, rss)| rss).max().unwrap_or(before),
            after,
        }
    }
}

/// One assertion a case makes about what it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What is claimed, e.g. "every hostile task ended with 502".
    pub claim: String,
    /// Whether it held.
    pub held: bool,
    /// The figures behind it.
    pub detail: String,
}

/// What one case found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CaseReport {
    /// The family, e.g. `hostile plugins`.
    pub family: String,
    /// The case, e.g. `memory bomb`.
    pub name: String,
    /// Hostile acts (tasks, connections, directory answers) tried.
    pub tries: u64,
    /// Hostile acts that did not end the way they must.
    pub failures: u64,
    /// Healthy traffic beside the case.
    pub healthy: LatencyStats,
    /// The node's memory.
    pub rss: RssFigures,
    /// The documented bound the peak must stay under, when there is one.
    pub rss_bound: Option<u64>,
    /// RSS samples (seconds since the case started, bytes), for charts.
    pub rss_series: Vec<(f64, u64)>,
    /// Every check; the case passes when all hold.
    pub checks: Vec<Check>,
    /// How long the case took.
    pub duration: Duration,
}

impl CaseReport {
    /// The case's RSS figures, and its samples as the series its family's
    /// chart draws.
    pub fn record_rss(&mut self, before: u64, samples: &[(Duration, u64)], after: u64) {
        self.rss = RssFigures::from_samples(before, samples, after);
        self.rss_series = samples
            .iter()
            .map(|&(at, rss)| (at.as_secs_f64(), rss))
            .collect();
    }

    /// A report for `family` / `name` with nothing recorded yet.
    pub fn new(family: &str, name: &str) -> Self {
        Self {
            family: family.to_string(),
            name: name.to_string(),
            ..Self::default()
        }
    }

    /// Records a check.
    pub fn check(&mut self, claim: impl Into<String>, held: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            claim: claim.into(),
            held,
            detail: detail.into(),
        });
    }

    /// The standard memory checks: the peak under the bound (when there is
    /// one) and memory back within 10 % (or `slack` bytes, whichever is
    /// larger) of where it started.
    pub fn check_memory(&mut self, slack: u64) {
        let RssFigures {
            before,
            peak,
            after,
        } = self.rss;
        if let Some(bound) = self.rss_bound {
            self.check(
                "peak RSS within the documented worst case",
                peak <= bound,
                format!("peak {} ≤ bound {}", mib(peak), mib(bound)),
            );
        }
        let allowed = (before / 10).max(slack);
        self.check(
            "RSS back within 10 % of the baseline, or the case's slack if larger",
            after <= before + allowed,
            format!(
                "before {}, after {}, allowed +{} (slack {})",
                mib(before),
                mib(after),
                mib(allowed),
                mib(slack)
            ),
        );
    }

    /// Whether every check held and no hostile act failed.
    pub fn passed(&self) -> bool {
        self.failures == 0 && self.checks.iter().all(|c| c.held)
    }

    /// The checks that did not hold, one per line.
    pub fn failed_checks(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.held)
            .map(|c| {
                format!(
                    "{} / {}: {} ({})",
                    self.family, self.name, c.claim, c.detail
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The markdown table of `reports` plus every check, under a heading per
/// family, with the family's picture from `charts`.
pub fn markdown(reports: &[CaseReport], charts: &BTreeMap<String, RssPicture>) -> String {
    let mut out = String::new();
    let mut families: Vec<&str> = reports.iter().map(|r| r.family.as_str()).collect();
    families.dedup();
    for family in families {
        let _ = writeln!(out, "## {family}\n");
        if let Some(picture) = charts.get(family) {
            let _ = writeln!(
                out,
                "![Node RSS over time during the {family} cases]({})\n\n{}\n",
                picture.file, picture.caption
            );
        }
        out.push_str("| case | tries | failures | healthy ok/sent | healthy p99 ms | healthy worst ms | RSS before | RSS peak | RSS after | bound | result |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in reports.iter().filter(|r| r.family == family) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} |",
                r.name,
                r.tries,
                r.failures,
                r.healthy.count - r.healthy.failures,
                r.healthy.count,
                ms(r.healthy.p99),
                ms(r.healthy.max),
                mib(r.rss.before),
                mib(r.rss.peak),
                mib(r.rss.after),
                r.rss_bound.map_or_else(|| "—".to_string(), mib),
                if r.passed() { "pass" } else { "**FAIL**" }
            );
        }
        out.push('\n');
        for r in reports.iter().filter(|r| r.family == family) {
            for c in &r.checks {
                let _ = writeln!(
                    out,
                    "- {} — {}: {} ({})",
                    r.name,
                    if c.held { "✔" } else { "✘" },
                    c.claim,
                    c.detail
                );
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_latencies() {
        let latencies = (1..=100).rev().map(Duration::from_millis).collect();
        let stats = LatencyStats::from_latencies(latencies, 3);
        assert_eq!(stats.count, 103);
        assert_eq!(stats.p50, Duration::from_millis(50));
        assert_eq!(stats.p99, Duration::from_millis(99));
        assert_eq!(stats.max, Duration::from_millis(100));
    }

    #[test]
    fn memory_checks_use_the_bound_and_ten_percent() {
        let mut report = CaseReport::new("f", "c");
        report.rss = RssFigures {
            before: 100 << 20,
            peak: 300 << 20,
            after: 111 << 20,
        };
        report.rss_bound = Some(256 << 20);
        report.check_memory(0);
        assert!(!report.passed());
        assert_eq!(report.checks.iter().filter(|c| !c.held).count(), 2);
    }
}
