//! The second load generator: `wrk` (Debian package), driven with a Lua
//! script that sends the same chat task as [`crate::load`]. wrk is written
//! in C, runs one event loop per thread (two threads here, one per core), and
//! so competes harder for the two cores than the harness's own one-thread
//! generator: under it the server gets less CPU, which is where a costly
//! per-task path shows.
//!
//! A warm-up run (discarded) precedes the measured one. Latencies come from
//! wrk's own histogram, in microseconds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::load::{LoadResult, Variant};

/// The chat task, as in `load.rs`; `%s` slots are filled per request in Lua.
const TASK: &str = r#"{"task_id":"wrk-%d-%d","intent":"urn:iicp:intent:llm:chat:v1","constraints":{"timeout_ms":10000,"qos":"batch"},"payload":{"messages":[{"role":"user","content":"Hello from the benchmark, please echo this back"}]}%s}"#;

/// A number no other wrk run of this process shares: the warm-up and the
/// measured run hit the same server, so nonces must differ between runs
/// (reusing the warm-up's nonces made ~12 % of the measured +nonce requests
/// replays).
fn run_tag() -> u64 {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    u64::from(std::process::id()) * 1_000_000
        + RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn script(variant: Variant) -> String {
    // The plain task is a fixed body (wrk's fastest path); nonces and trace
    // ids are made per request, as the harness does.
    let per_request = match variant {
        Variant::Plain => None,
        Variant::Nonce => Some((
            r#"string.format(',"nonce":"wrk-%d-%d-%d"', pid, id, n)"#,
            "nil",
        )),
        Variant::Trace => Some((
            r#""""#,
            r#"{["traceparent"] = string.format("00-%016x%016x-%016x-01", id + 1, n + 1, n + 7)}"#,
        )),
    };
    let mut lua = String::from(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
         local next_id = 0\nfunction setup(thread)\n  thread:set(\"id\", next_id)\n  next_id = next_id + 1\nend\n",
    );
    match per_request {
        None => {
            let body = TASK.replacen("%d-%d", "0-0", 1).replacen("%s", "", 1);
            lua.push_str(&format!("wrk.body = [[{body}]]\n"));
        }
        Some((extra, headers)) => {
            lua.push_str(&format!(
                "pid = {}\nlocal n = 0\nfunction request()\n  n = n + 1\n  local extra = {extra}\n  \
                 local body = string.format([[{TASK}]], id, n, extra)\n  \
                 local headers = {headers}\n  \
                 if headers then for k, v in pairs(wrk.headers) do headers[k] = v end end\n  \
                 return wrk.format(nil, \"/v1/task\", headers, body)\nend\n",
                run_tag()
            ));
        }
    }
    lua.push_str(
        "function done(summary, latency, requests)\n  \
         local e = summary.errors\n  \
         io.write(string.format(\"WRK requests=%d errors=%d non2xx=%d duration_us=%d p50=%d p99=%d p999=%d\\n\",\n    \
         summary.requests, e.connect + e.read + e.write + e.timeout + e.status, e.status, summary.duration,\n    \
         latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))\nend\n",
    );
    lua
}

/// What wrk reported for one run.
struct WrkFigures {
    requests: u64,
    errors: u64,
    duration: Duration,
    p50_us: u32,
    p99_us: u32,
    p999_us: u32,
}

fn parse(output: &str) -> Option<WrkFigures> {
    let line = output.lines().find(|l| l.starts_with("WRK "))?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Some(WrkFigures {
        requests: field("requests")?,
        errors: field("errors")?,
        duration: Duration::from_micros(field("duration_us")?),
        p50_us: u32::try_from(field("p50")?).ok()?,
        p99_us: u32::try_from(field("p99")?).ok()?,
        p999_us: u32::try_from(field("p999")?).ok()?,
    })
}

/// Whether `wrk` can be run.
pub fn available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// One wrk run of `seconds` at `concurrency` connections (two threads, or
/// one at a single connection). The script file lives for the run only.
fn run_once(
    addr: SocketAddr,
    concurrency: usize,
    length: Duration,
    variant: Variant,
) -> Option<WrkFigures> {
    let path: PathBuf = std::env::temp_dir().join(format!(
        "iicp-bench-{}-wrk-{variant:?}.lua",
        std::process::id()
    ));
    std::fs::write(&path, script(variant)).ok()?;
    let threads = concurrency.clamp(1, 2);
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{concurrency}"))
        // wrk takes whole seconds (it refuses `ms`): round up.
        .arg(format!(
            "-d{}s",
            length.as_secs_f64().ceil().max(1.0) as u64
        ))
        .args(["--timeout", "10s", "-s"])
        .arg(&path)
        .arg(format!("http://{addr}/v1/task"))
        .output();
    let _ = std::fs::remove_file(&path);
    parse(&String::from_utf8_lossy(&output.ok()?.stdout))
}

/// A warm-up run, then the measured one; `on_measure_start` runs between
/// them (to read the server's CPU time).
pub fn run(
    addr: SocketAddr,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    variant: Variant,
    on_measure_start: impl FnOnce(),
) -> LoadResult {
    if !warmup.is_zero() {
        let _ = run_once(addr, concurrency, warmup, variant);
    }
    on_measure_start();
    let Some(figures) = run_once(addr, concurrency, measure, variant) else {
        return LoadResult {
            errors: 1,
            elapsed: measure,
            ..LoadResult::default()
        };
    };
    LoadResult {
        requests: figures.requests,
        errors: figures.errors,
        statuses: Default::default(),
        elapsed: figures.duration,
        latencies_us: Vec::new(),
        quantiles_us: Some([figures.p50_us, figures.p99_us, figures.p999_us]),
    }
}
