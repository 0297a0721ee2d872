//! Trust boundaries: the parties the node talks to besides consumers —
//! a registry, a relay's other workers, a hop between consumer and node, a
//! worker bound to the node's relay — each playing the attacker
//! (docs/security.md), while healthy traffic runs beside. Each case counts
//! the hostile acts that got what they must never get:
//!
//! * **registry serves native code** — a precompiled artifact (`iicp-host
//!   compile` output, native code) pushed with plain registry API calls as
//!   a Wasm artifact's layer, offered to the running node by reload: it
//!   must never serve a task. A control (the real component pushed the same
//!   way) must load, so the refusals are the content check's, not a broken
//!   push.
//! * **relay impostor after a restart** — the relay is killed and started
//!   again (sessions are in memory) while its worker is held stopped; a
//!   party that is not the worker tries to bind under its id: every try
//!   must be refused, and the worker must get its id back.
//! * **sealed in, sealed out** — IICP-CX tasks whose unsealed
//!   `cx_response_encryption` field a hop removed: every answer must still
//!   be sealed for the consumer (opened with its secret, no clear result).
//! * **hostile relay worker** — a worker bound to the node's relay answers
//!   every task with a large result for consumers that never read: what
//!   the relay holds for them stays within the unsent-answers budget, and
//!   the memory comes back.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::cx;
use crate::directory::{Behaviour, StandInDirectory};
use crate::memory::{QUIET_AFTER_CONNECTIONS, QUIET_AFTER_TASKS, RssSampler, settled_rss};
use crate::node::{Node, message};
use crate::registry::{Registry, precompile};
use crate::report::{CaseReport, LatencyStats};
use crate::traffic::{self, HealthyLoad};
use crate::{Context, Scale};

/// The family's name in reports.
pub const FAMILY: &str = "trust boundaries";

/// The chat intent the echo plugin answers.
const CHAT: &str = "urn:iicp:intent:llm:chat:v1";
/// The versioned plugin's intent (the registry case's payload plugin).
const VERSIONED: &str = "urn:iicp:intent:test:versioned:v1";
/// How long any one wait in this family may take before the case fails.
const WAIT: Duration = Duration::from_secs(60);
/// The admin token of the nodes this family starts.
const ADMIN_TOKEN: &str = "trust-boundaries-admin";

/// Runs the family's cases.
pub async fn run(ctx: &Context, scale: Scale) -> Vec<CaseReport> {
    std::fs::create_dir_all(&ctx.work_dir).expect("work dir");
    vec![
        registry_native_code(ctx, scale).await,
        relay_impostor_after_restart(ctx, scale).await,
        sealed_in_sealed_out(ctx, scale).await,
        hostile_relay_worker(ctx, scale).await,
    ]
}

/// Waits until `check` holds, at most [`WAIT`]; whether it did.
async fn eventually<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A configuration file serving echo, plus `extra` TOML, with the admin
/// API on a free loopback port.
fn write_config(path: &Path, echo: &Path, extra: &str) {
    std::fs::write(
        path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"IICP_TRUST_ADMIN_TOKEN\"\n\n\
             [[plugin]]\nid = \"echo\"\npath = \"{}\"\n\n{extra}",
            echo.display()
        ),
    )
    .expect("write the configuration");
}

async fn reload(node: &Node) -> (u16, Value) {
    let response = traffic::client()
        .post(node.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("the admin API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn registry_native_code(ctx: &Context, scale: Scale) -> CaseReport {
    let tries = scale.pick(3, 20);
    let started = Instant::now();
    let mut report = CaseReport::new(
        FAMILY,
        "registry serves native code (precompiled artifact by reload)",
    );
    let dir = ctx
        .work_dir
        .join(format!("registry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("case directory");
    let registry = Registry::start(None);
    let native = precompile(
        &ctx.host_binary,
        &ctx.plugin("versioned-v1"),
        &dir.join("versioned.cwasm"),
    );
    let native = std::fs::read(native).expect("read the precompiled artifact");
    let component = std::fs::read(ctx.plugin("versioned-v1")).expect("read the component");
    registry
        .push_wasm_artifact("evil/versioned", "1", &native)
        .await;
    registry
        .push_wasm_artifact("good/versioned", "1", &component)
        .await;

    let config = dir.join("node.toml");
    let echo = ctx.plugin("echo");
    write_config(&config, &echo, "");
    let node =
        ctx.launcher()
            .start_config(&config, &[], &[("IICP_TRUST_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let client = traffic::client();
    let task_url = node.url("/v1/task");
    let versioned_served = |id: String| {
        let (client, url) = (client.clone(), task_url.clone());
        async move {
            let body = traffic::task(&id, VERSIONED, json!({"ms": 0}));
            matches!(traffic::post(&client, &url, &body).await, Some((200, _)))
        }
    };
    let before = settled_rss(node.pid(), QUIET_AFTER_TASKS, Duration::from_secs(5));
    let sampler = RssSampler::start(node.pid());
    let healthy = HealthyLoad::start(task_url.clone(), 2, 1_000_000, WAIT);
    let evil = format!(
        "[[plugin]]\nid = \"tenant\"\npath = \"{}\"\n",
        registry.reference("evil/versioned:1")
    );
    let mut served = 0;
    let mut answers = Vec::new();
    for n in 0..tries {
        write_config(&config, &echo, &evil);
        let (status, body) = reload(&node).await;
        answers.push(status);
        if versioned_served(format!("evil-{n}")).await {
            served += 1;
            tracing_line(&node, &body);
        }
    }
    // The control: the same push of the real component loads and serves.
    write_config(
        &config,
        &echo,
        &format!(
            "[[plugin]]\nid = \"tenant\"\npath = \"{}\"\n",
            registry.reference("good/versioned:1")
        ),
    );
    let (control_status, control_body) = reload(&node).await;
    let control_served = versioned_served("good-1".to_string()).await;
    report.healthy = healthy.finish().await;
    let series = sampler.finish();
    let after = settled_rss(node.pid(), QUIET_AFTER_TASKS, Duration::from_secs(10));

    report.tries = tries;
    report.failures = served;
    report.check(
        "a precompiled artifact from a registry never serves a task",
        served == 0,
        format!("{served}/{tries} reloads served it (reload statuses {answers:?})"),
    );
    report.check(
        "the same push of the real component loads (control)",
        control_served,
        format!("reload {control_status}: {control_body}"),
    );
    check_healthy_served(&mut report, "healthy tasks beside it all served");
    finish(report, before, &series, after, 16 << 20, started)
}

/// Keeps the node's words about a reload that should have been refused in
/// the report's failure output (stderr of the run).
fn tracing_line(node: &Node, answer: &Value) {
    eprintln!(
        "trust boundaries: a precompiled artifact served after reload {answer}; node log tail:\n{}",
        node.log_text()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The check that every healthy task beside the case was served.
fn check_healthy_served(report: &mut CaseReport, claim: &str) {
    let healthy = report.healthy.clone();
    report.check(
        claim,
        healthy.failures == 0 && healthy.count > 0,
        format!("{} of {} failed", healthy.failures, healthy.count),
    );
}

/// Records the memory figures and their checks (back within `slack`) and
/// the case's time; returns the finished report.
fn finish(
    mut report: CaseReport,
    before: u64,
    series: &[(Duration, u64)],
    after: u64,
    slack: u64,
    started: Instant,
) -> CaseReport {
    report.record_rss(before, series, after);
    report.check_memory(slack);
    report.duration = started.elapsed();
    report
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Posts `body` to the relay's route for `worker_id`.
async fn relayed(client: &reqwest::Client, relay: &Node, worker_id: &str, body: &Value) -> u16 {
    traffic::post(
        client,
        &relay.url(&format!("/v1/relay-for/{worker_id}/v1/task")),
        body,
    )
    .await
    .map_or(0, |(status, _)| status)
}

fn chat_task(task_id: &str, text: &str) -> Value {
    traffic::task(
        task_id,
        CHAT,
        json!({"messages": [{"role": "user", "content": text}]}),
    )
}

async fn relay_impostor_after_restart(ctx: &Context, scale: Scale) -> CaseReport {
    let tries = scale.pick(5, 50);
    let started = Instant::now();
    let mut report = CaseReport::new(FAMILY, "relay impostor after a relay restart");
    let launcher = ctx.launcher();
    let listen = format!("127.0.0.1:{}", free_port());
    let relay_state = launcher.fresh_state_dir();
    let echo = ctx.plugin("echo").display().to_string();
    let start_relay = || {
        launcher.start_at(
            &["--plugin", &echo],
            &listen,
            &relay_state,
            &["--relay-capable"],
        )
    };
    let relay = start_relay();
    let victim_id = "w-victim";
    let relay_url = format!("http://{listen}");
    let victim = launcher.start(
        &ctx.plugin("echo"),
        &["--relay", &relay_url, "--node-id", victim_id],
    );
    let bound = victim
        .wait_for_log(WAIT, |e| message(e).starts_with("bound to the relay"))
        .is_some();
    let client = traffic::client();
    let first = relayed(&client, &relay, victim_id, &chat_task("before", "a")).await;

    // The relay restarts while the worker is held still: the impostor has
    // the relay to itself for as long as it likes.
    victim.pause(true);
    drop(relay);
    let relay = start_relay();
    let before = settled_rss(relay.pid(), QUIET_AFTER_TASKS, Duration::from_secs(5));
    let sampler = RssSampler::start(relay.pid());
    let mut accepted = 0;
    let mut statuses = Vec::new();
    for n in 0..tries {
        let body = match n % 3 {
            0 => json!({"worker_id": victim_id}),
            1 => json!({"worker_id": victim_id, "rebind_key": format!("{n:064x}")}),
            _ => json!({"worker_id": victim_id, "intent": CHAT, "models": ["echo"]}),
        };
        let answer = client
            .post(relay.url("/v1/relay/bind"))
            .json(&body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if answer == 200 {
            accepted += 1;
        }
        statuses.push(answer);
    }
    victim.pause(false);
    let rebound = victim
        .wait_for_log(WAIT, |e| message(e) == "bound to the relay again")
        .is_some();
    // Healthy traffic: the victim's consumers, through the relay.
    let healthy_tasks = scale.pick(20, 200);
    let mut latencies = Vec::new();
    let mut failed = 0;
    for n in 0..healthy_tasks {
        let sent = Instant::now();
        if relayed(
            &client,
            &relay,
            victim_id,
            &chat_task(&format!("after-{n}"), "b"),
        )
        .await
            == 200
        {
            latencies.push(sent.elapsed());
        } else {
            failed += 1;
        }
    }
    report.healthy = LatencyStats::from_latencies(latencies, failed);
    let series = sampler.finish();
    let after = settled_rss(relay.pid(), QUIET_AFTER_TASKS, Duration::from_secs(10));

    report.tries = tries;
    report.failures = accepted;
    report.check(
        "the worker was bound and served before the restart",
        bound && first == 200,
        format!("bound {bound}, first relayed task {first}"),
    );
    report.check(
        "no bind under the worker's id succeeds for another party",
        accepted == 0,
        format!("{accepted}/{tries} impostor binds accepted (statuses {statuses:?})"),
    );
    report.check(
        "the worker gets its id back and serves its consumers",
        rebound && failed == 0,
        format!("rebound {rebound}; {failed}/{healthy_tasks} relayed tasks failed"),
    );
    finish(report, before, &series, after, 16 << 20, started)
}

async fn sealed_in_sealed_out(ctx: &Context, scale: Scale) -> CaseReport {
    let tries = scale.pick(20, 500);
    let started = Instant::now();
    let mut report = CaseReport::new(
        FAMILY,
        "sealed in, sealed out (a hop strips cx_response_encryption)",
    );
    let directory = StandInDirectory::start(Behaviour::Healthy).await;
    let node = ctx
        .launcher()
        .start(&ctx.plugin("echo"), &["--directory", &directory.url()]);
    let advertised = eventually(|| async {
        directory
            .last_registration()
            .is_some_and(|r| r.get("cx_public_key").is_some())
    })
    .await;
    let key = directory
        .last_registration()
        .map(|r| r["cx_public_key"].clone())
        .unwrap_or(Value::Null);
    let url = node.url("/v1/task");
    let before = settled_rss(node.pid(), QUIET_AFTER_TASKS, Duration::from_secs(5));
    let sampler = RssSampler::start(node.pid());
    let healthy = HealthyLoad::start(url.clone(), 2, 1_000_000, WAIT);
    let client = traffic::client();
    let (mut sealed, mut clear, mut other) = (0u64, 0u64, 0u64);
    if advertised {
        for n in 0..tries {
            let task_id = format!("stripped-{n}");
            let secret = format!("secret {n}");
            let payload = json!({"messages": [{"role": "user", "content": secret}]});
            let (body, shared) =
                cx::sealed_task_without_response_field(&key, &task_id, CHAT, &payload);
            match traffic::post(&client, &url, &body).await {
                Some((200, answer)) => match cx::open_answer(&answer, &shared, &task_id) {
                    Some(opened) if !answer.to_string().contains(&secret) => {
                        if opened["status"] == "success" {
                            sealed += 1
                        } else {
                            other += 1
                        }
                    }
                    _ => clear += 1,
                },
                Some((_, answer)) if answer.to_string().contains(&secret) => clear += 1,
                _ => other += 1,
            }
        }
    }
    report.healthy = healthy.finish().await;
    let series = sampler.finish();
    let after = settled_rss(node.pid(), QUIET_AFTER_TASKS, Duration::from_secs(10));

    report.tries = tries;
    report.failures = clear + other + if advertised { 0 } else { tries };
    report.check(
        "the node advertised its IICP-CX key",
        advertised,
        format!("cx_public_key {key}"),
    );
    report.check(
        "every answer to a sealed task is sealed for its consumer",
        clear == 0 && other == 0 && sealed == tries,
        format!("{sealed} sealed, {clear} in clear, {other} other of {tries}"),
    );
    check_healthy_served(&mut report, "healthy tasks beside it all served");
    finish(report, before, &series, after, 16 << 20, started)
}

/// A consumer that sends one relayed task and never reads the answer; the
/// connection stays open until dropped.
async fn unread_consumer(relay_addr: &str, worker_id: &str, n: u64) -> Option<TcpStream> {
    let body = chat_task(&format!("unread-{n}"), "x").to_string();
    let request = format!(
        "POST /v1/relay-for/{worker_id}/v1/task HTTP/1.1\r\nHost: relay\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(relay_addr).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    Some(stream)
}

async fn hostile_relay_worker(ctx: &Context, scale: Scale) -> CaseReport {
    const BUDGET_MIB: u64 = 16;
    // Larger than a loopback socket's send buffer (up to 4 MiB), so an
    // answer to a consumer that does not read stays unsent in the node.
    const RESULT_BYTES: usize = 6 << 20;
    let consumers = scale.pick(12, 48);
    let started = Instant::now();
    let mut report = CaseReport::new(
        FAMILY,
        "hostile relay worker: large results for consumers that never read",
    );
    traffic::raise_open_file_limit();
    let relay = ctx.launcher().start(
        &ctx.plugin("echo"),
        &[
            "--relay-capable",
            "--max-unsent-answers-mib",
            &BUDGET_MIB.to_string(),
            "--response-write-timeout-ms",
            "5000",
        ],
    );
    let client = traffic::client();
    let worker_id = "w-hog";
    let bound = client
        .post(relay.url("/v1/relay/bind"))
        .json(&json!({"worker_id": worker_id, "intent": CHAT}))
        .send()
        .await
        .ok();
    let token = match bound {
        Some(answer) if answer.status().as_u16() == 200 => answer
            .json::<Value>()
            .await
            .ok()
            .and_then(|b| b["session_token"].as_str().map(str::to_string)),
        _ => None,
    };
    let before = settled_rss(relay.pid(), QUIET_AFTER_CONNECTIONS, Duration::from_secs(5));
    let sampler = RssSampler::start(relay.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    // The hostile worker: pulls every task and answers with RESULT_BYTES.
    let worker = token.clone().map(|token| {
        let (stop, answered, client, base) = (
            stop.clone(),
            answered.clone(),
            client.clone(),
            relay.url(""),
        );
        tokio::spawn(async move {
            let filler = "y".repeat(RESULT_BYTES);
            while !stop.load(Ordering::Relaxed) {
                let Ok(pulled) = client
                    .get(format!("{base}/v1/relay/pull"))
                    .bearer_auth(&token)
                    .send()
                    .await
                else {
                    continue;
                };
                if pulled.status().as_u16() != 200 {
                    continue;
                }
                let Ok(call) = pulled.json::<Value>().await else {
                    continue;
                };
                let result = json!({"call_id": call["call_id"], "result": {"content": filler}});
                if let Ok(posted) = client
                    .post(format!("{base}/v1/relay/result"))
                    .bearer_auth(&token)
                    .json(&result)
                    .send()
                    .await
                    && posted.status().is_success()
                {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    let mut streams = Vec::new();
    for n in 0..consumers {
        if let Some(stream) = unread_consumer(&relay.addr, worker_id, n).await {
            streams.push(stream);
        }
    }
    let metrics = relay.url("/metrics");
    let budget = BUDGET_MIB << 20;
    let mut held_peak = 0.0f64;
    let mut seen_series = false;
    let settle_deadline =
        Instant::now() + scale.pick(Duration::from_secs(8), Duration::from_secs(20));
    while Instant::now() < settle_deadline && answered.load(Ordering::Relaxed) < consumers {
        if let Some(held) = traffic::metric(&metrics, "iicp_unsent_answer_bytes").await {
            seen_series = true;
            held_peak = held_peak.max(held);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(held) = traffic::metric(&metrics, "iicp_unsent_answer_bytes").await {
        seen_series = true;
        held_peak = held_peak.max(held);
    }
    let peak_during = sampler.peak();
    drop(streams);
    stop.store(true, Ordering::Relaxed);
    if let Some(worker) = worker {
        worker.abort();
    }
    let released = eventually(|| async {
        traffic::metric(&metrics, "iicp_unsent_answer_bytes").await == Some(0.0)
    })
    .await;
    // While the budget is full every answer, healthy ones too, is refused
    // with 503 (the node-wide bound at work); once the hostile consumers
    // are gone, full service.
    report.healthy = traffic::baseline(&relay.url("/v1/task"), 2, scale.pick(50, 500)).await;
    let series = sampler.finish();
    let after = settled_rss(
        relay.pid(),
        QUIET_AFTER_CONNECTIONS,
        Duration::from_secs(10),
    );

    let answered = answered.load(Ordering::Relaxed);
    report.tries = answered;
    // What the relay may hold beyond its baseline: the unsent budget, the
    // results being read and copied on their way (a few at a time), and
    // allocator slack.
    let allowed = budget + 4 * RESULT_BYTES as u64 + (48 << 20);
    let grown = peak_during.saturating_sub(before);
    report.failures = u64::from(grown > allowed);
    report.check(
        "the hostile worker bound and answered",
        token.is_some() && answered > 0,
        format!("{answered} results of {RESULT_BYTES} bytes posted for {consumers} consumers"),
    );
    report.check(
        "relayed answers are charged to the unsent-answers budget",
        seen_series && held_peak > 0.0 && held_peak <= budget as f64,
        format!(
            "iicp_unsent_answer_bytes peaked at {:.1} MiB against {BUDGET_MIB} MiB (series seen: {seen_series})",
            held_peak / f64::from(1 << 20)
        ),
    );
    report.check(
        "the relay's memory grows by at most the budget and the results in flight",
        grown <= allowed,
        format!(
            "grew {:.1} MiB, allowed {:.1} MiB",
            grown as f64 / f64::from(1 << 20),
            allowed as f64 / f64::from(1 << 20)
        ),
    );
    report.check(
        "what was held is released when the consumers go",
        released,
        "iicp_unsent_answer_bytes back to 0".to_string(),
    );
    check_healthy_served(
        &mut report,
        "full service once the hostile consumers are gone",
    );
    finish(report, before, &series, after, 24 << 20, started)
}
