//! `iicp-bench`: iicp-host against the native reference node, on loopback,
//! one server at a time, same load for both. Prints per case and
//! concurrency: requests/s, p50/p99/p99.9 latency, errors and peak RSS; then
//! the iicp-host/native ratios, startup times, the nonce-flood memory trace,
//! and as its last line `throughput_ratio=<min> p99_ratio=<max>`.
//!
//! Usage (normally through `bench/run`):
//! `iicp-bench --host BIN --plugin ECHO.wasm --native BIN [--quick] [--report FILE]
//!             [--reuse N] [--sandbox-report FILE]`

mod charts;
mod load;
mod process;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use load::{LoadResult, LoadSpec, Variant};
use process::{Server, ServerKind};
use report::{Report, Row};

const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];
const MAX_CONCURRENT: u32 = 256;
const MAX_REQUESTS: u64 = 5_000_000;

struct Options {
    host: PathBuf,
    plugin: PathBuf,
    native: PathBuf,
    quick: bool,
    report: Option<PathBuf>,
    reuse: Option<u32>,
    sandbox_report: Option<PathBuf>,
}

const USAGE: &str = "usage: iicp-bench --host BIN --plugin ECHO.wasm --native BIN [--quick] \
     [--report FILE] [--reuse N] [--sandbox-report FILE]\n       \
     iicp-bench load ADDR CONCURRENCY SECONDS [plain|nonce|trace]\n       \
     iicp-bench charts REPORT.md";

/// Prints `problem` and the usage, then exits with status 2.
fn usage_error(problem: &str) -> ! {
    eprintln!("iicp-bench: {problem}\n{USAGE}");
    std::process::exit(2)
}

fn parse_options() -> Options {
    let mut options = Options {
        host: PathBuf::new(),
        plugin: PathBuf::new(),
        native: PathBuf::new(),
        quick: false,
        report: None,
        reuse: None,
        sandbox_report: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            PathBuf::from(
                args.next()
                    .unwrap_or_else(|| usage_error(&format!("{arg} needs a value"))),
            )
        };
        match arg.as_str() {
            "--host" => options.host = value(),
            "--plugin" => options.plugin = value(),
            "--native" => options.native = value(),
            "--report" => options.report = Some(value()),
            "--sandbox-report" => options.sandbox_report = Some(value()),
            "--reuse" => {
                let n = value();
                options.reuse = Some(
                    n.to_str()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| usage_error("--reuse needs a whole number")),
                );
            }
            "--quick" => options.quick = true,
            other => usage_error(&format!("unknown argument {other}")),
        }
    }
    if [&options.host, &options.plugin, &options.native]
        .iter()
        .any(|p| p.as_os_str().is_empty())
    {
        usage_error("--host, --plugin and --native are required");
    }
    options
}

struct Case {
    name: String,
    server: ServerKind,
    variant: Variant,
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Measures one case at one concurrency on a freshly started server, so
/// nothing (nonces, warm slots, connections) carries over between points.
async fn measure_point(
    case: &Case,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> Row {
    let server = Server::spawn(&case.server, MAX_CONCURRENT);
    server
        .wait_first_success(Instant::now(), Duration::from_secs(120))
        .await
        .unwrap_or_else(|| panic!("{} did not start", case.name));
    let idle_rss = process::rss_kib(server.pid());
    process::reset_peak_rss(server.pid());
    let result: LoadResult = load::run(LoadSpec {
        addr: server.addr,
        concurrency,
        warmup,
        measure,
        max_requests: MAX_REQUESTS,
        variant: case.variant,
    })
    .await;
    Row {
        case: case.name.clone(),
        concurrency,
        rps: result.rps(),
        p50_ms: result.latency_ms(0.50),
        p99_ms: result.latency_ms(0.99),
        p999_ms: result.latency_ms(0.999),
        requests: result.requests,
        errors: result.errors,
        peak_rss_kib: process::peak_rss_kib(server.pid()),
        idle_rss_kib: idle_rss,
    }
}

/// Runs every case at every concurrency, `rounds` times, interleaving the
/// cases at each concurrency (in alternating order) so a noisy moment on a
/// shared machine hits native and iicp-host alike. Each point keeps its
/// best round by throughput, the same rule for every case.
async fn measure_all(
    cases: &[Case],
    rounds: usize,
    warmup: Duration,
    measure: Duration,
) -> Vec<Row> {
    let mut best: Vec<Row> = Vec::new();
    for concurrency in CONCURRENCY {
        for round in 0..rounds {
            let order: Vec<&Case> = if round % 2 == 0 {
                cases.iter().collect()
            } else {
                cases.iter().rev().collect()
            };
            for case in order {
                let row = measure_point(case, concurrency, warmup, measure).await;
                println!("{}   (round {})", row.line(), round + 1);
                match best
                    .iter_mut()
                    .find(|r| r.case == row.case && r.concurrency == concurrency)
                {
                    Some(kept) if kept.rps >= row.rps => {}
                    Some(kept) => *kept = row,
                    None => best.push(row),
                }
            }
        }
    }
    best.sort_by_key(|row| {
        let case_index = cases
            .iter()
            .position(|c| c.name == row.case)
            .unwrap_or(usize::MAX);
        (case_index, row.concurrency)
    });
    best
}

async fn startup(kind: &ServerKind, cache_dir: Option<&PathBuf>, runs: usize) -> Duration {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let kind = match (kind, cache_dir) {
            (
                ServerKind::Host {
                    binary,
                    plugin,
                    extra,
                    ..
                },
                Some(dir),
            ) => ServerKind::Host {
                binary: binary.clone(),
                plugin: plugin.clone(),
                cache_dir: dir.clone(),
                extra: extra.clone(),
            },
            (
                ServerKind::Host {
                    binary,
                    plugin,
                    extra,
                    ..
                },
                None,
            ) => ServerKind::Host {
                binary: binary.clone(),
                plugin: plugin.clone(),
                cache_dir: process::fresh_dir("cold"),
                extra: extra.clone(),
            },
            (native, _) => native.clone(),
        };
        let started = Instant::now();
        let server = Server::spawn(&kind, MAX_CONCURRENT);
        let took = server
            .wait_first_success(started, Duration::from_secs(120))
            .await
            .expect("server answered");
        times.push(took);
        drop(server);
        if let (ServerKind::Host { cache_dir, .. }, None) = (&kind, cache_dir) {
            process::remove_dir(cache_dir);
        }
    }
    median(times)
}

/// Unique nonces at concurrency 64; RSS sampled every `every`.
async fn nonce_flood(
    host: &ServerKind,
    duration: Duration,
    every: Duration,
) -> (LoadResult, Vec<(u64, u64)>) {
    let server = Server::spawn(host, MAX_CONCURRENT);
    server
        .wait_first_success(Instant::now(), Duration::from_secs(120))
        .await
        .expect("host started");
    let pid = server.pid();
    let sampler = tokio::spawn(async move {
        let started = Instant::now();
        let mut samples = vec![(0, process::rss_kib(pid))];
        while started.elapsed() < duration {
            tokio::time::sleep(every).await;
            samples.push((started.elapsed().as_secs(), process::rss_kib(pid)));
        }
        samples
    });
    let result = load::run(LoadSpec {
        addr: server.addr,
        concurrency: 64,
        warmup: Duration::ZERO,
        measure: duration,
        max_requests: u64::MAX,
        variant: Variant::Nonce,
    })
    .await;
    let samples = sampler.await.unwrap_or_default();
    (result, samples)
}

/// `iicp-bench load ADDR CONCURRENCY SECONDS [plain|nonce|trace]`: load only,
/// for profiling a server started by hand.
async fn load_only(mut args: impl Iterator<Item = String>) {
    let addr = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage_error("load needs ADDR as host:port"));
    let concurrency = args
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| usage_error("load needs CONCURRENCY"));
    let seconds = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage_error("load needs SECONDS"));
    let variant = match args.next().as_deref() {
        Some("nonce") => Variant::Nonce,
        Some("trace") => Variant::Trace,
        _ => Variant::Plain,
    };
    let result = load::run(LoadSpec {
        addr,
        concurrency,
        warmup: Duration::from_millis(500),
        measure: Duration::from_secs(seconds),
        max_requests: u64::MAX,
        variant,
    })
    .await;
    println!(
        "{:.0} req/s p50={:.3}ms p99={:.3}ms p99.9={:.3}ms requests={} errors={}",
        result.rps(),
        result.latency_ms(0.5),
        result.latency_ms(0.99),
        result.latency_ms(0.999),
        result.requests,
        result.errors
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("load") {
        return load_only(std::env::args().skip(2)).await;
    }
    if std::env::args().nth(1).as_deref() == Some("charts") {
        let report = std::env::args()
            .nth(2)
            .unwrap_or_else(|| usage_error("charts needs REPORT.md"));
        if let Err(error) = charts::redraw(std::path::Path::new(&report)) {
            usage_error(&error);
        }
        return;
    }
    let options = parse_options();
    let (rounds, warmup, measure) = if options.quick {
        (2, Duration::from_millis(500), Duration::from_secs(2))
    } else {
        (3, Duration::from_secs(1), Duration::from_secs(8))
    };
    let cache_dir = process::fresh_dir("cache");
    let host = |extra: Vec<String>| ServerKind::Host {
        binary: options.host.clone(),
        plugin: options.plugin.clone(),
        cache_dir: cache_dir.clone(),
        extra,
    };
    let native = ServerKind::Native {
        binary: options.native.clone(),
    };
    let mut cases = vec![
        Case {
            name: "native".into(),
            server: native.clone(),
            variant: Variant::Plain,
        },
        Case {
            name: "iicp-host".into(),
            server: host(vec![]),
            variant: Variant::Plain,
        },
        Case {
            name: "iicp-host+nonce".into(),
            server: host(vec![]),
            variant: Variant::Nonce,
        },
        Case {
            name: "iicp-host+trace".into(),
            server: host(vec![]),
            variant: Variant::Trace,
        },
    ];
    if let Some(reuse) = options.reuse {
        cases.push(Case {
            name: format!("iicp-host+reuse{reuse}"),
            server: host(vec!["--instance-reuse".into(), reuse.to_string()]),
            variant: Variant::Plain,
        });
    }

    // Compile the plugin into the artifact cache first, so every measured
    // host starts the way a restarted production node does.
    let warming = Server::spawn(&host(vec![]), MAX_CONCURRENT);
    warming
        .wait_first_success(Instant::now(), Duration::from_secs(120))
        .await
        .expect("iicp-host did not start");
    drop(warming);

    println!("{}", Row::header());
    let mut report = Report::new(options.quick, rounds, warmup, measure);
    report.rows = measure_all(&cases, rounds, warmup, measure).await;
    println!("\nbest of {rounds} rounds per point:\n{}", Row::header());
    for row in &report.rows {
        println!("{}", row.line());
    }
    println!();
    for line in report.ratio_lines() {
        println!("{line}");
    }

    println!();
    let runs = if options.quick { 3 } else { 5 };
    report.startup = vec![
        ("native".to_string(), startup(&native, None, runs).await),
        (
            "iicp-host, cold artifact cache".to_string(),
            startup(&host(vec![]), None, runs).await,
        ),
        (
            "iicp-host, warm artifact cache".to_string(),
            startup(&host(vec![]), Some(&cache_dir), runs).await,
        ),
    ];
    for (name, took) in &report.startup {
        println!(
            "startup to first task: {name}: {:.1} ms",
            took.as_secs_f64() * 1000.0
        );
    }

    println!();
    let flood = if options.quick {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(60)
    };
    let (flood_result, samples) = nonce_flood(&host(vec![]), flood, Duration::from_secs(5)).await;
    report.flood = Some((flood_result, samples));
    for line in report.flood_lines() {
        println!("{line}");
    }
    if let Some(line) = report.memory_line() {
        println!("{line}");
    }
    if let Some(path) = &options.sandbox_report {
        report.sandbox = std::fs::read_to_string(path).unwrap_or_default();
    }
    if let Some(path) = &options.report {
        std::fs::write(path, report.markdown()).expect("write report");
        println!("report written to {}", path.display());
        charts::write(&report, path.parent().unwrap_or(std::path::Path::new(".")))
            .expect("write charts");
    }
    process::remove_dir(&cache_dir);
    println!("{}", report.summary_line());
}
