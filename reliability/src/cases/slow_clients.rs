//! Slow clients: thousands of connections that send half a request head
//! and then nothing, and connections that trickle a task body a byte at a
//! time, while healthy clients keep calling echo; then clients that ask for
//! answers and never read them (closed by the response write budget, their
//! answers released). Every slow connection
//! must be closed by its deadline (heads: `--header-read-timeout-ms`,
//! bodies: `--body-read-timeout-ms`, answered 408), none may take a task
//! slot, healthy traffic must not fail, and at full size its p99 must stay
//! within twice its baseline. Opening thousands of sockets needs
//! descriptors: the case raises this process's soft `RLIMIT_NOFILE` to its
//! hard limit first (the node raises its own for its connection cap).

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::memory::{QUIET_AFTER_CONNECTIONS, RssSampler, settled_rss};
use crate::report::CaseReport;
use crate::traffic::{self, ECHO_INTENT, HealthyLoad};
use crate::{Context, Scale};

/// The family's name in reports.
pub const FAMILY: &str = "slow clients";

/// What a deadline may overrun by on a busy machine before the case fails.
const MARGIN: Duration = Duration::from_secs(5);
/// Healthy clients calling echo throughout.
const HEALTHY_CLIENTS: usize = 2;
/// What the README promises a slow connection costs at most: one read
/// buffer (64 KiB at the default header limit). A trickled body must not
/// cost more than its bytes on top.
const PER_CONNECTION_BOUND: u64 = 64 << 10;

/// Runs the cases.
pub async fn run(ctx: &Context, scale: Scale) -> Vec<CaseReport> {
    traffic::raise_open_file_limit();
    vec![
        slow_senders(ctx, scale).await,
        unread_answers(ctx, scale).await,
    ]
}

/// Half-sent heads and trickled bodies.
async fn slow_senders(ctx: &Context, scale: Scale) -> CaseReport {
    let heads = scale.pick(200, 3000);
    let tricklers = scale.pick(40, 500);
    let header = Duration::from_millis(scale.pick(1000, 5000));
    let body = Duration::from_millis(scale.pick(2000, 10_000));
    let node = ctx.launcher().start(
        &ctx.plugin("echo"),
        &[
            // Few slots: a trickler holding one would show as failed healthy tasks.
            "--max-concurrent",
            "2",
            "--header-read-timeout-ms",
            &header.as_millis().to_string(),
            "--body-read-timeout-ms",
            &body.as_millis().to_string(),
        ],
    );
    let mut report = CaseReport::new(
        FAMILY,
        &format!("{heads} half-sent heads, {tricklers} trickled bodies"),
    );
    let started = Instant::now();
    let url = node.url("/v1/task");
    let baseline = traffic::baseline(&url, HEALTHY_CLIENTS, scale.pick(200, 2000)).await;
    let before = settled_rss(node.pid(), QUIET_AFTER_CONNECTIONS, Duration::from_secs(5));
    let sampler = RssSampler::start(node.pid());
    let healthy = HealthyLoad::start(
        url,
        HEALTHY_CLIENTS,
        u64::MAX,
        header.max(body) + MARGIN * 4,
    );

    let mut waits = Vec::with_capacity(heads);
    for _ in 0..heads {
        match TcpStream::connect(&node.addr).await {
            Ok(mut stream) => {
                let opened = Instant::now();
                let _ = stream
                    .write_all(b"POST /v1/task HTTP/1.1\r\nHost: slow\r\n")
                    .await;
                waits.push(tokio::spawn(async move {
                    traffic::closed_by_server(&mut stream, header * 2 + MARGIN * 2)
                        .await
                        .map(|closed| closed - opened)
                }));
            }
            Err(_) => waits.push(tokio::spawn(async { None })),
        }
    }
    let task_body = serde_json::to_vec(&traffic::task(
        "trickle",
        ECHO_INTENT,
        json!({ "text": "x".repeat(400) }),
    ))
    .expect("encode a task");
    let trickles: Vec<_> = (0..tricklers)
        .map(|_| tokio::spawn(trickle(node.addr.clone(), task_body.clone(), body)))
        .collect();

    let mut worst_head = Duration::ZERO;
    let mut heads_closed = 0;
    for wait in waits {
        if let Ok(Some(took)) = wait.await {
            heads_closed += 1;
            worst_head = worst_head.max(took);
        }
    }
    let mut worst_body = Duration::ZERO;
    let mut bodies_refused = 0;
    for trickle in trickles {
        if let Ok(Some((took, 408))) = trickle.await {
            bodies_refused += 1;
            worst_body = worst_body.max(took);
        }
    }
    let during = healthy.finish().await;
    let series = sampler.finish();
    let after = settled_rss(node.pid(), QUIET_AFTER_CONNECTIONS, Duration::from_secs(10));

    report.tries = (heads + tricklers) as u64;
    report.failures = (heads - heads_closed + tricklers - bodies_refused) as u64;
    report.check(
        "every half-sent head closed within the header deadline",
        heads_closed == heads && worst_head <= header + MARGIN,
        format!(
            "{heads_closed}/{heads} closed, the last after {:.2} s (deadline {:.1} s)",
            worst_head.as_secs_f64(),
            header.as_secs_f64()
        ),
    );
    report.check(
        "every trickled body answered 408 within the body deadline",
        bodies_refused == tricklers && worst_body <= body + MARGIN,
        format!(
            "{bodies_refused}/{tricklers} answered 408, the last after {:.2} s (deadline {:.1} s)",
            worst_body.as_secs_f64(),
            body.as_secs_f64()
        ),
    );
    let ratio = during.p99.as_secs_f64() / baseline.p99.as_secs_f64().max(1e-6);
    let latency = format!(
        "p99 {:.1} ms during vs {:.1} ms baseline (×{ratio:.2})",
        ms(during.p99),
        ms(baseline.p99)
    );
    report.check(
        "no healthy task failed (slow clients hold no slot)",
        during.failures == 0 && baseline.failures == 0,
        format!(
            "{} sent, {} failed; {latency}",
            during.count, during.failures
        ),
    );
    // A timing bound only at full size, which runs on a quiet machine.
    if scale == Scale::Full {
        report.check("healthy p99 within 2× its baseline", ratio <= 2.0, latency);
    }
    report.healthy = during;
    report.record_rss(before, &series, after);
    report.rss_bound = Some(before + (heads + tricklers) as u64 * PER_CONNECTION_BOUND);
    report.check_memory(16 << 20);
    report.duration = started.elapsed();
    report
}

/// Clients that pipeline echo tasks with 256 KiB answers (8 MiB each, more
/// than the kernel buffers on loopback) and read none.
async fn unread_answers(ctx: &Context, scale: Scale) -> CaseReport {
    const PIPELINED: usize = 32;
    const TIMEOUTS: &str =
        r#"iicp_connection_timeouts_total{kind="response_write",listener="public"}"#;
    const HELD: &str = "iicp_unsent_answer_bytes";
    let readers = scale.pick(20, 200);
    let write_budget = Duration::from_millis(scale.pick(1000, 5000));
    let node = ctx.launcher().start(
        &ctx.plugin("echo"),
        &[
            "--response-write-timeout-ms",
            &write_budget.as_millis().to_string(),
        ],
    );
    let mut report = CaseReport::new(
        FAMILY,
        &format!("{readers} clients that never read their answers"),
    );
    let started = Instant::now();
    let url = node.url("/v1/task");
    let metrics_url = node.url("/metrics");
    let baseline = traffic::baseline(&url, HEALTHY_CLIENTS, scale.pick(200, 2000)).await;
    let before = settled_rss(node.pid(), QUIET_AFTER_CONNECTIONS, Duration::from_secs(5));
    let sampler = RssSampler::start(node.pid());
    let healthy = HealthyLoad::start(url, HEALTHY_CLIENTS, u64::MAX, write_budget + MARGIN * 4);
    let requests = unread_requests(PIPELINED);
    let opened = Instant::now();
    let mut clients = Vec::with_capacity(readers);
    for _ in 0..readers {
        clients.push(tokio::spawn(never_read(
            node.addr.clone(),
            requests.clone(),
        )));
    }
    // Every connection closed by its write budget, counted by the node. A
    // connection stalls only once the node's socket send buffer (up to the
    // kernel's tcp_wmem maximum, several answers) is full, and how soon the
    // node has produced that many 256 KiB answers for every client depends
    // on how busy the machine is; so the wait is bounded generously and the
    // figure reported, not held to the budget.
    let mut closed = 0.0;
    let mut held_peak = 0.0_f64;
    let limit = write_budget + MARGIN * 24;
    while opened.elapsed() < limit {
        closed = traffic::metric(&metrics_url, TIMEOUTS).await.unwrap_or(0.0);
        held_peak = held_peak.max(traffic::metric(&metrics_url, HELD).await.unwrap_or(0.0));
        if closed >= readers as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = opened.elapsed();
    for client in clients {
        client.abort();
    }
    // The gauge also counts the healthy clients' answers for the moment they
    // are in flight, so it is read once that load has stopped, and waited on
    // (bounded) rather than sampled once.
    let during = healthy.finish().await;
    let release_deadline = Instant::now() + MARGIN;
    let held_after = loop {
        let held = traffic::metric(&metrics_url, HELD)
            .await
            .unwrap_or(f64::NAN);
        if held < 1.0 || Instant::now() >= release_deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let series = sampler.finish();
    let after = settled_rss(node.pid(), QUIET_AFTER_CONNECTIONS, Duration::from_secs(10));
    report.tries = readers as u64;
    report.failures = readers.saturating_sub(closed as usize) as u64;
    report.check(
        "every unread connection closed by the response write budget",
        closed >= readers as f64,
        format!(
            "{closed}/{readers} closed, the last {:.2} s after the first opened (budget {:.1} s)",
            took.as_secs_f64(),
            write_budget.as_secs_f64()
        ),
    );
    report.check(
        "unsent answers released",
        held_after < 1.0,
        format!(
            "peak {:.1} MiB held for unread clients, {held_after} bytes after",
            held_peak / f64::from(1 << 20)
        ),
    );
    report.check(
        "no healthy task failed",
        during.failures == 0 && baseline.failures == 0,
        format!("{} sent, {} failed", during.count, during.failures),
    );
    report.healthy = during;
    report.record_rss(before, &series, after);
    report.check_memory(16 << 20);
    report.duration = started.elapsed();
    report
}

/// Sends `requests` (pipelined) and never reads; ends when the node closes
/// the connection (the write then fails) or when aborted.
pub(crate) async fn never_read(addr: String, requests: std::sync::Arc<[u8]>) {
    let Ok(address) = addr.parse() else { return };
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return;
    };
    // A small window, so the node's writes are refused early.
    let _ = socket.set_recv_buffer_size(4096);
    let Ok(mut stream) = socket.connect(address).await else {
        return;
    };
    let _ = stream.write_all(&requests).await;
    std::future::pending::<()>().await;
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Sends a complete head, then the body a byte every 50 ms; returns how
/// long until the node answered and with which status.
async fn trickle(addr: String, body: Vec<u8>, deadline: Duration) -> Option<(Duration, u16)> {
    let stream = TcpStream::connect(&addr).await.ok()?;
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v1/task HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    writer.write_all(head.as_bytes()).await.ok()?;
    let opened = Instant::now();
    let writing = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(deadline * 2 + MARGIN * 2, async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writing.abort();
    read.ok()?;
    let status = String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    Some((opened.elapsed(), status))
}

/// `count` pipelined echo tasks of 256 KiB each, as one write: their
/// answers wait on a client that never reads them.
pub fn unread_requests(count: usize) -> std::sync::Arc<[u8]> {
    let body = serde_json::to_vec(&traffic::task(
        "unread",
        ECHO_INTENT,
        json!({ "text": "x".repeat(256 << 10) }),
    ))
    .expect("encode a task");
    let mut requests = Vec::new();
    for _ in 0..count {
        requests.extend_from_slice(
            format!(
                "POST /v1/task HTTP/1.1\r\nHost: unread\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        requests.extend_from_slice(&body);
    }
    requests.into()
}
