//! Hostile plugins: one node serves a well-behaved plugin (echo) and two
//! hostile ones — `misbehave` (CPU, memory, stack, traps, output, logs,
//! escapes) and `hoarder` (every class of host resource a guest can make
//! the host hold: header maps, request strings, body buffers, table
//! entries, requests in flight, per-call copies, oversized `model_used`).
//! Each case sends tasks that abuse one resource while healthy clients keep
//! calling echo. Every hostile task must end with its protocol error within
//! its bound, no healthy task may fail, and the node's memory must stay
//! under the worst case the node computes for its configuration
//! (`iicp_memory_worst_case_bytes`) and come back afterwards.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::memory::{QUIET_AFTER_TASKS, RssSampler, settled_rss};
use crate::node::Node;
use crate::report::{CaseReport, RssFigures};
use crate::traffic::{self, HealthyLoad};
use crate::{Context, Scale};

/// The family's name in reports.
pub const FAMILY: &str = "hostile plugins";

/// Task slots of the hostile plugin (its tasks run this many at a time).
const HOSTILE_SLOTS: usize = 4;
/// The hostile plugin's memory cap.
const HOSTILE_MEMORY_MB: u32 = 16;
/// The hostile plugins' task budget.
pub(crate) const HOSTILE_TIMEOUT_MS: u64 = 5_000;
/// The hoarder's host memory: small, so hoarding ends fast (and the
/// setting is shown to hold).
const HOARDER_HOST_MEMORY_KIB: u32 = 2048;
/// Healthy clients calling echo throughout.
const HEALTHY_CLIENTS: usize = 2;
/// The memory the node is told it has: its worst case is sized within it,
/// so "peak under the worst case" is a bound of under 1 GiB that a
/// leak would cross, not the gigabytes of an unlimited node's worst case.
const NODE_MEMORY_LIMIT_MIB: u64 = 1024;

/// One way to abuse the host, and how it must end.
pub(crate) struct Abuse {
    pub(crate) name: &'static str,
    /// The intent's middle, `test:<case>` (misbehave) or `hoard:<class>`
    /// (hoarder): the intent is `urn:iicp:intent:<this>:v1`.
    pub(crate) case: &'static str,
    /// The task payload at each scale, given the URL of a server that
    /// accepts connections and never answers.
    pub(crate) payload: fn(Scale, &str) -> Value,
    /// What the consumer must get, in words.
    pub(crate) expected: &'static str,
    pub(crate) accept: fn(u16, &Value) -> bool,
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn error_says(body: &Value, words: &str) -> bool {
    body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains(words))
}

pub(crate) fn abuses() -> Vec<Abuse> {
    vec![
        Abuse {
            name: "endless loop",
            case: "test:loop",
            payload: |_, _| Value::Null,
            expected: "504 task_timeout",
            accept: |status, body| status == 504 && error_code(body) == "task_timeout",
        },
        Abuse {
            name: "memory bomb",
            case: "test:memory-bomb",
            payload: |_, _| Value::Null,
            expected: "502 naming the memory limit",
            accept: |status, body| status == 502 && error_says(body, "memory limit"),
        },
        Abuse {
            name: "deep recursion",
            case: "test:recursion",
            payload: |_, _| Value::Null,
            // Rust guests keep their stack in linear memory: overflowing it
            // is either a stack-overflow trap or an out-of-bounds access.
            expected: "502 (stack overflow or crash)",
            accept: |status, body| {
                status == 502 && (error_says(body, "stack") || error_says(body, "crashed"))
            },
        },
        Abuse {
            name: "trap",
            case: "test:trap",
            payload: |_, _| Value::Null,
            expected: "502 plugin crashed",
            accept: |status, body| status == 502 && error_says(body, "crashed"),
        },
        Abuse {
            name: "output flood (8 MiB result)",
            case: "test:big-output",
            payload: |_, _| json!({ "bytes": 8 << 20 }),
            expected: "502 naming the output limit",
            accept: |status, body| status == 502 && error_says(body, "limit"),
        },
        Abuse {
            name: "log flood (log, stdout and stderr lines)",
            case: "test:log-flood",
            // Each line is three host calls; a debug build makes ~20k a second.
            payload: |scale, _| json!({ "lines": scale.pick(1_000, 20_000) }),
            expected: "200, excess lines dropped",
            accept: |status, _| status == 200,
        },
        Abuse {
            name: "file, env, socket, DNS and HTTP escape",
            case: "test:escape",
            payload: |_, _| json!({ "port": 9 }),
            expected: "200 reporting every attempt denied",
            accept: |status, body| {
                let r = &body["result"];
                status == 200
                    && r["env_vars"] == 0
                    && [
                        "read_file",
                        "list_root",
                        "tcp_connect",
                        "dns_lookup",
                        "http_request",
                    ]
                    .iter()
                    .all(|k| r[k].as_str().is_some_and(|v| v.starts_with("denied")))
            },
        },
    ]
    .into_iter()
    .chain(hoarding())
    .collect()
}

/// A hoarding class must end at a host limit, named in a 502.
fn stopped_at_a_host_limit(status: u16, body: &Value) -> bool {
    status == 502 && error_says(body, "host limit")
}

fn hoarding() -> Vec<Abuse> {
    let hoard = |name, case| Abuse {
        name,
        case,
        payload: |_, _| Value::Null,
        expected: "502 naming the host limit",
        accept: stopped_at_a_host_limit,
    };
    vec![
        hoard("header maps (2 × 60 KiB values each)", "hoard:fields"),
        hoard("header map clones (100 KiB each)", "hoard:fields-clone"),
        hoard(
            "outgoing bodies written full, never sent",
            "hoard:request-bodies",
        ),
        hoard(
            "request strings (1 MiB path, authority, method)",
            "hoard:request-strings",
        ),
        hoard(
            "resource-table entries (empty header maps)",
            "hoard:resources",
        ),
        hoard("clock pollables", "hoard:pollables"),
        hoard("stdout stream handles", "hoard:streams"),
        Abuse {
            name: "requests in flight to a server that never answers (1 MiB bodies)",
            case: "hoard:in-flight",
            payload: |_, sink| json!({ "url": sink }),
            expected: "502 naming the host limit",
            accept: stopped_at_a_host_limit,
        },
        Abuse {
            name: "1 MiB random buffers in a loop (freed each time)",
            case: "hoard:random",
            payload: |_, _| Value::Null,
            expected: "504 task_timeout, memory flat",
            accept: |status, body| status == 504 && error_code(body) == "task_timeout",
        },
        Abuse {
            name: "1 MiB log lines in a loop (cut and dropped)",
            case: "hoard:big-log",
            payload: |_, _| Value::Null,
            expected: "504 task_timeout, memory flat",
            accept: |status, body| status == 504 && error_code(body) == "task_timeout",
        },
        Abuse {
            name: "4 MiB model_used",
            case: "hoard:model-used",
            payload: |_, _| Value::Null,
            expected: "502 naming the model_used limit",
            accept: |status, body| status == 502 && error_says(body, "model_used"),
        },
    ]
}

pub(crate) fn intent(abuse: &Abuse) -> String {
    format!("urn:iicp:intent:{}:v1", abuse.case)
}

fn write_config(ctx: &Context) -> PathBuf {
    let path = ctx.work_dir.join("hostile-plugins.toml");
    let config = format!(
        r#"[node]
max_concurrent = 16
memory_limit_mib = {NODE_MEMORY_LIMIT_MIB}

[[plugin]]
id = "echo"
path = "{echo}"
memory_mb = {HOSTILE_MEMORY_MB}

[[plugin]]
id = "misbehave"
path = "{misbehave}"
max_concurrent = {HOSTILE_SLOTS}
memory_mb = {HOSTILE_MEMORY_MB}
timeout_ms = {HOSTILE_TIMEOUT_MS}

[[plugin]]
id = "hoarder"
path = "{hoarder}"
max_concurrent = {HOSTILE_SLOTS}
memory_mb = {HOSTILE_MEMORY_MB}
timeout_ms = {HOSTILE_TIMEOUT_MS}
host_memory_kib = {HOARDER_HOST_MEMORY_KIB}

[plugin.http]
allow = ["http://127.0.0.1:*"]
"#,
        echo = ctx.plugin("echo").display(),
        misbehave = ctx.plugin("misbehave").display(),
        hoarder = ctx.plugin("hoarder").display(),
    );
    std::fs::create_dir_all(&ctx.work_dir).expect("create work dir");
    std::fs::write(&path, config).expect("write config");
    path
}

/// Runs every abuse against one node.
pub async fn run(ctx: &Context, scale: Scale) -> Vec<CaseReport> {
    let node = ctx.launcher().start_config(&write_config(ctx), &[], &[]);
    let sink = Sink::start().await;
    let target = Target {
        node: &node,
        sink: &sink.url,
        bound: traffic::metric(&node.url("/metrics"), "iicp_memory_worst_case_bytes")
            .await
            .map(|bytes| bytes as u64),
    };
    warm_up(&node).await;
    let abuses = abuses();
    let mut reports = vec![prime(&target, &abuses, scale).await];
    for abuse in &abuses {
        reports.push(run_abuse(&target, abuse, scale).await);
    }
    reports
}

/// What the cases run against.
struct Target<'a> {
    node: &'a Node,
    /// URL of a server that accepts connections and never answers.
    sink: &'a str,
    /// The node's own worst case for its configuration.
    bound: Option<u64>,
}

/// A server that accepts connections, reads nothing and answers nothing;
/// it holds at most [`Sink::MAX_HELD`] connections and closes them when
/// dropped.
pub(crate) struct Sink {
    pub(crate) url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    const MAX_HELD: usize = 1024;

    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the sink");
        let url = format!("http://{}", listener.local_addr().expect("sink address"));
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                if held.len() < Self::MAX_HELD {
                    held.push(stream);
                }
            }
        });
        Self { url, task }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Brings the node to the steady state the baseline is measured in: echo
/// has served its clients, and the hostile plugin has run legitimate tasks
/// at its full concurrency that use more memory than the pool keeps
/// resident per instance slot (so slots it touches later hold no more than
/// they would after honest work).
async fn warm_up(node: &Node) {
    let warm = traffic::baseline(&node.url("/v1/task"), HEALTHY_CLIENTS * 2, 200).await;
    assert_eq!(
        warm.failures,
        0,
        "echo does not answer: {}",
        node.log_text()
    );
    let client = traffic::client();
    for round in 0..3 {
        let batch: Vec<_> = (0..HOSTILE_SLOTS)
            .map(|n| {
                let body = traffic::task(
                    &format!("warm-{round}-{n}"),
                    "urn:iicp:intent:test:big-output:v1",
                    json!({ "bytes": 2 << 20 }),
                );
                let (client, url) = (client.clone(), node.url("/v1/task"));
                tokio::spawn(async move { traffic::post(&client, &url, &body).await })
            })
            .collect();
        for handle in batch {
            let answer = handle.await.ok().flatten().map(|(status, _)| status);
            assert_eq!(
                answer,
                Some(200),
                "warm-up task failed: {}",
                node.log_text()
            );
        }
    }
}

/// One round of every abuse at the hostile plugin's full concurrency, so
/// what the process allocates once per instance slot (fiber stack pages,
/// pool slots, allocator arenas) is part of the baseline of the cases that
/// follow: they must not grow memory with repetition, nor keep it.
async fn prime(target: &Target<'_>, abuses: &[Abuse], scale: Scale) -> CaseReport {
    let node = target.node;
    let mut report = CaseReport::new(FAMILY, "priming: one round of every abuse");
    report.rss_bound = target.bound;
    let pid = node.pid();
    let started = Instant::now();
    let before = settled_rss(pid, QUIET_AFTER_TASKS, Duration::from_secs(10));
    let sampler = RssSampler::start(pid);
    for abuse in abuses {
        let answers = hostile_round(target, abuse, scale, 0, HOSTILE_SLOTS as u64).await;
        report.tries += answers.len() as u64;
        report.failures += answers.iter().filter(|a| a.is_none()).count() as u64;
    }
    report.check(
        "every priming task was answered",
        report.failures == 0,
        format!("{} tasks", report.tries),
    );
    let series = sampler.finish();
    report.rss = RssFigures::from_samples(
        before,
        &series,
        settled_rss(pid, QUIET_AFTER_TASKS, Duration::from_secs(10)),
    );
    report.duration = started.elapsed();
    report
}

/// Sends tasks `first..last` of `abuse` at once; the answers in order.
async fn hostile_round(
    target: &Target<'_>,
    abuse: &Abuse,
    scale: Scale,
    first: u64,
    last: u64,
) -> Vec<Option<(u16, Value)>> {
    let client = traffic::client();
    let handles: Vec<_> = (first..last)
        .map(|n| {
            let body = traffic::task(
                &format!("hostile-{n}"),
                &intent(abuse),
                (abuse.payload)(scale, target.sink),
            );
            let (client, url) = (client.clone(), target.node.url("/v1/task"));
            tokio::spawn(async move { traffic::post(&client, &url, &body).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(handles.len());
    for handle in handles {
        answers.push(handle.await.ok().flatten());
    }
    answers
}

async fn run_abuse(target: &Target<'_>, abuse: &Abuse, scale: Scale) -> CaseReport {
    let node = target.node;
    let started = Instant::now();
    let mut report = CaseReport::new(FAMILY, abuse.name);
    report.rss_bound = target.bound;
    let pid = node.pid();
    let before = settled_rss(pid, QUIET_AFTER_TASKS, Duration::from_secs(10));
    let sampler = RssSampler::start(pid);
    let healthy = HealthyLoad::start(
        node.url("/v1/task"),
        HEALTHY_CLIENTS,
        u64::MAX,
        Duration::from_secs(600),
    );
    let tries = scale.pick(HOSTILE_SLOTS as u64, 40);
    let mut wrong = Vec::new();
    let mut sent = 0;
    while sent < tries {
        let last = tries.min(sent + HOSTILE_SLOTS as u64);
        for answer in hostile_round(target, abuse, scale, sent, last).await {
            match answer {
                Some((status, body)) if (abuse.accept)(status, &body) => {}
                Some((status, body)) => wrong.push(format!("{status} {body}")),
                None => wrong.push("no answer".to_string()),
            }
        }
        sent = last;
    }
    let healthy = healthy.finish().await;
    let series = sampler.finish();
    let after = settled_rss(pid, QUIET_AFTER_TASKS, Duration::from_secs(10));
    report.tries = tries;
    report.failures = wrong.len() as u64;
    report.check(
        format!("every hostile task ended with {}", abuse.expected),
        wrong.is_empty(),
        match wrong.first() {
            None => format!("{tries} of {tries}"),
            Some(first) => format!("{} wrong, first: {:.200}", wrong.len(), first),
        },
    );
    report.check(
        "no healthy task of the other plugin failed",
        healthy.failures == 0,
        format!("{} of {} failed", healthy.failures, healthy.count),
    );
    report.healthy = healthy;
    report.record_rss(before, &series, after);
    report.check_memory(0);
    report.duration = started.elapsed();
    report
}
