//! `iicp-bench`: iicp-host against the native reference node and the HTTP
//! floor, on loopback, one server at a time, same load for all, under two
//! load generators (the harness's own and `wrk`). Prints per load generator,
//! case and concurrency: requests/s, p50/p99/p99.9 latency, errors, server
//! CPU per request and peak RSS; then the ratios against native and against
//! the floor, startup times, the nonce-flood memory trace, and as its last
//! line `throughput_ratio=<min> p99_ratio=<max>` (iicp-host/native, over
//! both load generators and every concurrency).
//!
//! Usage (normally through `bench/run`):
//! `iicp-bench --host BIN --plugin ECHO.wasm --native BIN --floor BIN [--quick]
//!             [--report FILE] [--reuse N] [--sandbox-report FILE]
//!             [--python-plugin WASM] [--js-plugin WASM] [--js-quickjs-plugin WASM]`

mod charts;
mod figures;
mod llm;
mod llm_results;
mod load;
mod many;
mod process;
mod relay;
mod report;
mod results;
mod wrk;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use load::{LoadResult, LoadSpec, Variant};
use process::{Server, ServerKind};
use report::{Flood, Report, Row};
use results::Results;

const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];
/// Concurrencies for the interpreter plugins over HTTP: one connection and
/// sixteen, where the targets are (and where their fresh instances' memory
/// stays bounded).
const INTERPRETER_CONCURRENCY: [usize; 2] = [1, 16];

/// Who generates the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// `load.rs`: one thread, tokio, closed loop.
    Harness,
    /// `wrk`, two threads.
    Wrk,
}

impl Generator {
    pub fn name(self) -> &'static str {
        match self {
            Generator::Harness => "harness",
            Generator::Wrk => "wrk",
        }
    }

    /// The generator [`Generator::name`] calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Generator::Harness, Generator::Wrk]
            .into_iter()
            .find(|g| g.name() == name)
    }
}
const MAX_CONCURRENT: u32 = 256;
const MAX_REQUESTS: u64 = 5_000_000;
/// Plugin tables per node in the many-plugins case.
const MANY_PLUGINS: [usize; 3] = [10, 100, 1000];

struct Options {
    host: PathBuf,
    plugin: PathBuf,
    native: PathBuf,
    floor: PathBuf,
    python_plugin: Option<PathBuf>,
    js_plugin: Option<PathBuf>,
    /// The JS echo built on QuickJS (`js_plugin` is the default
    /// SpiderMonkey build): the JS target is reported per engine.
    js_quickjs_plugin: Option<PathBuf>,
    quick: bool,
    report: Option<PathBuf>,
    reuse: Option<u32>,
    sandbox_report: Option<PathBuf>,
    /// A compiled-artifact cache kept between runs (else a fresh one,
    /// removed at the end).
    cache_dir: Option<PathBuf>,
}

const USAGE: &str = "usage: iicp-bench --host BIN --plugin ECHO.wasm --native BIN --floor BIN \
     [--quick] [--report FILE] [--reuse N] [--sandbox-report FILE] [--python-plugin WASM] \
     [--js-plugin WASM] [--js-quickjs-plugin WASM] [--cache-dir DIR]\n       \
     iicp-bench load ADDR|URL CONCURRENCY SECONDS [plain|nonce|trace]\n       \
     iicp-bench relay --host BIN --plugin ECHO.wasm [--quick] [--results DIR]\n       \
     iicp-bench figures --tool TOOL --prefix PREFIX --results-dir DIR FIGURES.txt\n       \
     iicp-bench many --host BIN --plugin ECHO.wasm [--plugins N,N,..] [--rounds R] [--cache-dir DIR]\n       \
     iicp-bench llm --host BIN --plugin OPENAI_CHAT.wasm --native BIN --mock BIN [--quick] \
     [--latency-ms A,B] [--concurrency A,B] [--report FILE] [-- HOST_FLAGS]\n       \
     iicp-bench render RESULTS.json [REPORT.md]   (llm-*.json: default docs/benchmarks-llm.md)\n       \
     iicp-bench import REPORT.md COMMIT [RESULTS.json]\n       \
     iicp-bench import-llm PAGE.md COMMIT 'YYYY-MM-DD HH:MM UTC' [RESULTS.json]";

/// Prints `problem` and the usage, then exits with status 2.
pub fn usage_error(problem: &str) -> ! {
    eprintln!("iicp-bench: {problem}\n{USAGE}");
    std::process::exit(2)
}

/// Whether any of the required `paths` was not given.
pub fn any_missing(paths: &[&PathBuf]) -> bool {
    paths.iter().any(|p| p.as_os_str().is_empty())
}

fn parse_options() -> Options {
    let mut options = Options {
        host: PathBuf::new(),
        plugin: PathBuf::new(),
        native: PathBuf::new(),
        floor: PathBuf::new(),
        python_plugin: None,
        js_plugin: None,
        js_quickjs_plugin: None,
        quick: false,
        report: None,
        reuse: None,
        sandbox_report: None,
        cache_dir: None,
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
            "--floor" => options.floor = value(),
            "--python-plugin" => options.python_plugin = Some(value()),
            "--js-plugin" => options.js_plugin = Some(value()),
            "--js-quickjs-plugin" => options.js_quickjs_plugin = Some(value()),
            "--report" => options.report = Some(value()),
            "--sandbox-report" => options.sandbox_report = Some(value()),
            "--cache-dir" => options.cache_dir = Some(value()),
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
    if any_missing(&[
        &options.host,
        &options.plugin,
        &options.native,
        &options.floor,
    ]) {
        usage_error("--host, --plugin, --native and --floor are required");
    }
    options
}

struct Case {
    name: String,
    server: ServerKind,
    variant: Variant,
    concurrencies: &'static [usize],
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Measures one case at one concurrency on a freshly started server, so
/// nothing (nonces, warm slots, connections) carries over between points.
async fn measure_point(
    case: &Case,
    generator: Generator,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> Row {
    let server = Server::spawn(&case.server, MAX_CONCURRENT);
    server
        .wait_first_success(Instant::now(), Duration::from_secs(120))
        .await
        .unwrap_or_else(|| panic!("{} did not start", case.name));
    let pid = server.pid();
    let idle_rss = process::rss_kib(pid);
    process::reset_peak_rss(pid);
    let (result, cpu_seconds): (LoadResult, f64) = match generator {
        Generator::Harness => {
            // Server CPU over the measuring window only, as for wrk.
            let cpu_at_start = tokio::spawn(async move {
                tokio::time::sleep(warmup).await;
                process::cpu_seconds(pid)
            });
            let result = load::run(LoadSpec {
                addr: server.addr,
                path: "/v1/task".into(),
                concurrency,
                warmup,
                measure,
                max_requests: MAX_REQUESTS,
                variant: case.variant,
            })
            .await;
            let start = cpu_at_start.await.unwrap_or_default();
            (result, process::cpu_seconds(pid) - start)
        }
        Generator::Wrk => {
            let (addr, variant) = (server.addr, case.variant);
            tokio::task::spawn_blocking(move || {
                let mut start = 0.0;
                let result = wrk::run(addr, concurrency, warmup, measure, variant, || {
                    start = process::cpu_seconds(pid);
                });
                (result, process::cpu_seconds(pid) - start)
            })
            .await
            .expect("wrk run")
        }
    };
    Row {
        case: case.name.clone(),
        generator: generator.name(),
        concurrency,
        rps: result.rps(),
        p50_ms: result.latency_ms(0.50),
        p99_ms: result.latency_ms(0.99),
        p999_ms: result.latency_ms(0.999),
        requests: result.requests,
        errors: result.errors,
        cpu_us_per_request: cpu_seconds * 1e6 / result.requests.max(1) as f64,
        peak_rss_kib: process::peak_rss_kib(pid),
        idle_rss_kib: idle_rss,
    }
}

/// Runs every case at each of its concurrencies under each load generator,
/// `rounds` times, interleaving the cases at each concurrency (in
/// alternating order) so a noisy moment on a shared machine hits native and
/// iicp-host alike. Each point keeps its best round by throughput, the same
/// rule for every case.
async fn measure_all(
    cases: &[Case],
    generators: &[Generator],
    rounds: usize,
    warmup: Duration,
    measure: Duration,
) -> Vec<Row> {
    let mut best: Vec<Row> = Vec::new();
    for &generator in generators {
        for concurrency in CONCURRENCY {
            for round in 0..rounds {
                let order: Vec<&Case> = if round % 2 == 0 {
                    cases.iter().collect()
                } else {
                    cases.iter().rev().collect()
                };
                for case in order {
                    if !case.concurrencies.contains(&concurrency) {
                        continue;
                    }
                    let row = measure_point(case, generator, concurrency, warmup, measure).await;
                    println!("{}   (round {})", row.line(), round + 1);
                    match best.iter_mut().find(|r| {
                        r.case == row.case
                            && r.generator == row.generator
                            && r.concurrency == concurrency
                    }) {
                        Some(kept) if kept.rps >= row.rps => {}
                        Some(kept) => *kept = row,
                        None => best.push(row),
                    }
                }
            }
        }
    }
    best.sort_by_key(|row| {
        let case_index = cases
            .iter()
            .position(|c| c.name == row.case)
            .unwrap_or(usize::MAX);
        let generator_index = generators
            .iter()
            .position(|g| g.name() == row.generator)
            .unwrap_or(usize::MAX);
        (generator_index, case_index, row.concurrency)
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
        path: "/v1/task".into(),
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

/// `iicp-bench load ADDR|URL CONCURRENCY SECONDS [plain|nonce|trace]`: load
/// only, for profiling a server started by hand; a URL
/// (`http://host:port/path`) names another path than `/v1/task`, e.g. a
/// relay's `/v1/relay-for/ID/v1/task`.
async fn load_only(mut args: impl Iterator<Item = String>) {
    let target = args
        .next()
        .unwrap_or_else(|| usage_error("load needs ADDR as host:port or a URL"));
    let (addr, path) = match target.strip_prefix("http://") {
        Some(rest) => match rest.split_once('/') {
            Some((authority, path)) => (authority.to_string(), format!("/{path}")),
            None => (rest.to_string(), "/v1/task".to_string()),
        },
        None => (target, "/v1/task".to_string()),
    };
    let addr = addr
        .parse()
        .unwrap_or_else(|_| usage_error("load needs ADDR as host:port or http://host:port/path"));
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
        path,
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
    match std::env::args().nth(1).as_deref() {
        Some("load") => return load_only(std::env::args().skip(2)).await,
        Some("relay") => return relay::run(std::env::args().skip(2)).await,
        Some("figures") => return figures::run(std::env::args().skip(2)),
        Some("llm") => return llm::run(std::env::args().skip(2)).await,
        Some("many") => return many::run(std::env::args().skip(2)).await,
        Some("render") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let [results, rest @ ..] = &args[..] else {
                usage_error("render needs RESULTS.json");
            };
            let is_llm = Path::new(results)
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("llm-"));
            let default_report = if is_llm {
                "docs/benchmarks-llm.md"
            } else {
                "docs/benchmarks.md"
            };
            let report = Path::new(rest.first().map_or(default_report, String::as_str));
            let published = if is_llm {
                llm::publish(Path::new(results), report)
            } else {
                publish(Path::new(results), report)
            };
            if let Err(error) = published {
                usage_error(&error);
            }
            return;
        }
        Some("import-llm") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let [page, commit, date, rest @ ..] = &args[..] else {
                usage_error("import-llm needs PAGE.md, the COMMIT it measured and its date");
            };
            let text = std::fs::read_to_string(page)
                .unwrap_or_else(|e| usage_error(&format!("{page}: {e}")));
            // The old page's first paragraph said where and how it ran.
            let machine = text.split("\n\n").nth(1).unwrap_or_default().to_string();
            let run = results::Run {
                tool: "bench/llm".into(),
                date: date.clone(),
                commit: commit.clone(),
                machine: vec![machine],
                // The case ran two rounds per point before it had --quick.
                rounds: 2,
                ..results::Run::default()
            };
            let results = llm_results::LlmResults::import_markdown(&text, page, run)
                .unwrap_or_else(|e| usage_error(&e));
            let out = rest
                .first()
                .map_or_else(|| results_path(Path::new(page), "llm", date), PathBuf::from);
            write_results(&results, &out).unwrap_or_else(|e| usage_error(&e));
            println!("results written to {}", out.display());
            return;
        }
        Some("import") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let [report, commit, rest @ ..] = &args[..] else {
                usage_error("import needs REPORT.md and the COMMIT it measured");
            };
            let text = std::fs::read_to_string(report)
                .unwrap_or_else(|e| usage_error(&format!("{report}: {e}")));
            let results = Results::import_markdown(&text, report, commit)
                .unwrap_or_else(|e| usage_error(&format!("{report}: {e}")));
            let out = rest.first().map_or_else(
                || results_path(Path::new(report), "benchmarks", &results.run.date),
                PathBuf::from,
            );
            write_results(&results, &out).unwrap_or_else(|e| usage_error(&e));
            println!("results written to {}", out.display());
            return;
        }
        _ => {}
    }
    let options = parse_options();
    // --quick is one round of short points: a look at the figures in a few
    // minutes, without the interleaved rounds that make a full run's best-of
    // comparable between cases.
    let (rounds, warmup, measure) = if options.quick {
        (1, Duration::from_millis(500), Duration::from_secs(2))
    } else {
        (3, Duration::from_secs(1), Duration::from_secs(8))
    };
    let cache_dir = match &options.cache_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).expect("create the artifact cache directory");
            dir.clone()
        }
        None => process::fresh_dir("cache"),
    };
    let host = |extra: Vec<String>| ServerKind::Host {
        binary: options.host.clone(),
        plugin: options.plugin.clone(),
        cache_dir: cache_dir.clone(),
        extra,
    };
    let native = ServerKind::Native {
        binary: options.native.clone(),
    };
    let all = &CONCURRENCY[..];
    let mut cases = vec![
        Case {
            name: "native".into(),
            server: native.clone(),
            variant: Variant::Plain,
            concurrencies: all,
        },
        Case {
            name: "iicp-host".into(),
            server: host(vec![]),
            variant: Variant::Plain,
            concurrencies: all,
        },
        Case {
            name: "iicp-host+nonce".into(),
            server: host(vec![]),
            variant: Variant::Nonce,
            concurrencies: all,
        },
        Case {
            name: "iicp-host+trace".into(),
            server: host(vec![]),
            variant: Variant::Trace,
            concurrencies: all,
        },
    ];
    if let Some(reuse) = options.reuse {
        cases.push(Case {
            name: format!("iicp-host+reuse{reuse}"),
            server: host(vec!["--instance-reuse".into(), reuse.to_string()]),
            variant: Variant::Plain,
            concurrencies: all,
        });
    }
    let interpreter_plugins = [
        &options.python_plugin,
        &options.js_plugin,
        &options.js_quickjs_plugin,
    ];
    for (name, plugin) in results::INTERPRETERS.into_iter().zip(interpreter_plugins) {
        if let Some(plugin) = plugin {
            cases.push(Case {
                name: name.into(),
                server: ServerKind::Host {
                    binary: options.host.clone(),
                    plugin: plugin.clone(),
                    cache_dir: cache_dir.clone(),
                    extra: vec![],
                },
                variant: Variant::Plain,
                concurrencies: &INTERPRETER_CONCURRENCY,
            });
        }
    }

    // Compile the plugins into the artifact cache first, so every measured
    // host starts the way a restarted production node does; keep one answer
    // of the Rust echo for the HTTP floor to replay.
    let floor_body = process::fresh_dir("floor").join("answer.json");
    for case in &cases {
        if let ServerKind::Host { extra, .. } = &case.server {
            if !extra.is_empty() {
                continue;
            }
            let warming = Server::spawn(&case.server, MAX_CONCURRENT);
            warming
                .wait_first_success(Instant::now(), Duration::from_secs(300))
                .await
                .unwrap_or_else(|| panic!("{} did not start", case.name));
            if case.name == "iicp-host" {
                let body = warming.answer_body().await.expect("an answer to replay");
                std::fs::write(&floor_body, body).expect("write the floor's answer");
            }
        }
    }
    cases.insert(
        1,
        Case {
            name: "http-floor".into(),
            server: ServerKind::Floor {
                binary: options.floor.clone(),
                body: floor_body.clone(),
            },
            variant: Variant::Plain,
            concurrencies: all,
        },
    );
    let generators = [Generator::Harness, Generator::Wrk];
    if !wrk::available() {
        eprintln!("iicp-bench: wrk is not installed (Debian package wrk): apt-get install wrk");
        std::process::exit(2);
    }

    println!("{}", Row::header());
    let mut report = Report::new(options.quick, rounds, warmup, measure);
    report.rows = measure_all(&cases, &generators, rounds, warmup, measure).await;
    println!("\nbest of {rounds} rounds per point:\n{}", Row::header());
    for row in &report.rows {
        println!("{}", row.line());
    }
    println!();
    for line in Results::from_report(&report, report.run()).ratio_lines() {
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
    report.flood = Some(Flood::new(&flood_result, samples));
    println!();
    let mut artifacts = vec![("echo", options.plugin.clone())];
    if let Some(python) = &options.python_plugin {
        artifacts.push(("python-echo", python.clone()));
    }
    for (name, plugin) in &artifacts {
        for plugins in MANY_PLUGINS {
            match many::measure(&options.host, plugin, name, &cache_dir, plugins).await {
                Some(row) => {
                    println!("many plugins: {name} N={plugins}: measured");
                    report.many.push(row);
                }
                None => println!("many plugins: {name} N={plugins}: did not serve or reload"),
            }
        }
    }
    if let Some(path) = &options.sandbox_report {
        report.sandbox = std::fs::read_to_string(path).unwrap_or_default();
    }
    let results = Results::from_report(&report, report.run());
    for line in results
        .memory_line()
        .into_iter()
        .chain(results.flood_lines())
        .chain(results.many_lines())
    {
        println!("{line}");
    }
    if let Some(path) = &options.report {
        let out = results_path(path, "benchmarks", &results.run.date);
        write_results(&results, &out).expect("write results");
        println!("results written to {}", out.display());
        publish(&out, path).expect("write report");
    }
    if options.cache_dir.is_none() {
        process::remove_dir(&cache_dir);
    }
    if let Some(dir) = floor_body.parent() {
        process::remove_dir(dir);
    }
    println!("{}", results.summary_line());
}

/// `docs/results/<kind>-<date>-<time>.json` beside `report`'s directory.
fn results_path(report: &Path, kind: &str, date: &str) -> PathBuf {
    report
        .parent()
        .unwrap_or(Path::new("."))
        .join("results")
        .join(iicp_run_info::results_file_name(kind, date))
}

fn write_results(results: &impl serde::Serialize, path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `report` and its charts from the results file at `results_file`
/// (read back, so the page shows what the file holds).
fn publish(results_file: &Path, report: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(results_file)
        .map_err(|e| format!("{}: {e}", results_file.display()))?;
    let stored: Results =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", results_file.display()))?;
    let dir = report.parent().unwrap_or(Path::new("."));
    let link = pathdiff(results_file, dir);
    std::fs::write(report, stored.markdown(&link))
        .map_err(|e| format!("{}: {e}", report.display()))?;
    println!("report written to {}", report.display());
    charts::write(&stored, dir)
}

/// `file` relative to `dir` when it lies under it, else as given.
fn pathdiff(file: &Path, dir: &Path) -> String {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (file, dir) = (absolute(file), absolute(dir));
    file.strip_prefix(&dir)
        .unwrap_or(&file)
        .display()
        .to_string()
}
