//! The network edge over real sockets: slow heads and trickled bodies are
//! closed by their deadlines while healthy tasks keep being served (and
//! never lose a slot to a slow client), idle keep-alive connections close,
//! a client that stops reading its answers is closed by the response write
//! budget, answers waiting on clients are bounded node-wide (503 past the
//! budget), a closing connection reads at most its byte bound of what still
//! arrives, a connection over the cap gets a 503 envelope, oversized heads get 431,
//! and SIGTERM drains: idle connections close, a task already running is
//! answered, a new one on an open connection gets 503 `IICP-E024`, exit 0.
//!
//! Deadlines are short settings passed to the node; assertions allow the
//! deadline plus 5 s, so a busy machine cannot fail them. Opening hundreds
//! of sockets needs descriptors: each test raises its own soft
//! `RLIMIT_NOFILE` to the hard limit first.

mod common;

use std::time::{Duration, Instant};

use common::{
    Node, client, message, metrics, plugin, post_task, raw_http, sample, task, wait_for_sample,
};
use iicp_reliability::traffic::{closed_by_server, raise_open_file_limit};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECHO: &str = "urn:iicp:intent:util:echo:v1";
const VERSIONED: &str = "urn:iicp:intent:test:versioned:v1";
const BIG_OUTPUT: &str = "urn:iicp:intent:test:big-output:v1";
const SLEEP: &str = "urn:iicp:intent:test:sleep:v1";
/// What a deadline may overrun by on a busy machine before a test fails.
const MARGIN: Duration = Duration::from_secs(5);

/// One HTTP/1.1 response read off a raw socket.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "non-JSON body ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads one response (head, then `Content-Length` bytes of body).
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> Option<RawResponse> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// `GET /iicp/health` with `headers` (each line ending in CRLF) on
/// `stream`, answered 200.
async fn get_health(stream: &mut TcpStream, headers: &str) -> RawResponse {
    let request = format!("GET /iicp/health HTTP/1.1\r\nHost: test\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(stream).await.expect("health answer");
    assert_eq!(response.status, 200);
    response
}

fn task_head(length: usize) -> String {
    format!(
        "POST /v1/task HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_and_trickled_bodies_are_closed_by_their_deadlines_and_hold_no_slot() {
    const SLOW_HEADS: usize = 200;
    const TRICKLERS: usize = 20;
    const HEADER_MS: u64 = 1000;
    const BODY_MS: u64 = 1500;
    raise_open_file_limit();
    let node = Node::start(
        &plugin("echo"),
        &[
            "--max-concurrent",
            "1",
            "--header-read-timeout-ms",
            &HEADER_MS.to_string(),
            "--body-read-timeout-ms",
            &BODY_MS.to_string(),
        ],
    );
    let addr = node.addr.clone();

    // Half-open heads: a request line and one header, then silence.
    let mut heads = Vec::with_capacity(SLOW_HEADS);
    for _ in 0..SLOW_HEADS {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"POST /v1/task HTTP/1.1\r\nHost: slow\r\n")
            .await
            .unwrap();
        heads.push((Instant::now(), stream));
    }
    // Trickled bodies: a complete head, then a byte every 100 ms.
    let body =
        serde_json::to_vec(&task("trickle", ECHO, json!({"text": "x".repeat(200)}))).unwrap();
    let tricklers: Vec<_> = (0..TRICKLERS)
        .map(|_| {
            let (addr, body) = (addr.clone(), body.clone());
            tokio::spawn(async move {
                let stream = TcpStream::connect(&addr).await.unwrap();
                let (mut reader, mut writer) = stream.into_split();
                writer
                    .write_all(task_head(body.len()).as_bytes())
                    .await
                    .unwrap();
                let opened = Instant::now();
                let trickle = tokio::spawn(async move {
                    for byte in body {
                        if writer.write_all(&[byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                let response = read_response(&mut reader).await;
                trickle.abort();
                (opened.elapsed(), response.map(|r| (r.status, r.json())))
            })
        })
        .collect();

    // Healthy tasks keep being served, one slot and all, meanwhile.
    for i in 0..20 {
        let (status, _, body) = post_task(&node, &task(&format!("ok-{i}"), ECHO, json!({}))).await;
        assert_eq!(status, 200, "healthy task {i}: {body}");
    }

    let deadline = Duration::from_millis(HEADER_MS) + MARGIN;
    let mut worst_head = Duration::ZERO;
    for (opened, mut stream) in heads {
        let closed = closed_by_server(&mut stream, deadline * 2)
            .await
            .expect("a slow head was never closed");
        worst_head = worst_head.max(closed - opened);
    }
    assert!(
        worst_head <= deadline,
        "a slow head stayed open {worst_head:?}"
    );
    let mut worst_body = Duration::ZERO;
    for trickler in tricklers {
        let (took, response) = trickler.await.unwrap();
        let (status, body) = response.expect("a trickled body got no answer");
        assert_eq!(status, 408, "{body}");
        assert_eq!(body["error"]["code"], "request_timeout");
        worst_body = worst_body.max(took);
    }
    assert!(worst_body <= Duration::from_millis(BODY_MS) + MARGIN);
    eprintln!(
        "{SLOW_HEADS} slow heads closed, the last after {worst_head:?}; {TRICKLERS} trickled bodies answered 408, the last after {worst_body:?}"
    );

    let text = metrics(&node).await;
    assert_eq!(
        sample(
            &text,
            r#"iicp_connection_timeouts_total{kind="header",listener="public"}"#
        ),
        SLOW_HEADS as f64,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"iicp_connection_timeouts_total{kind="body",listener="public"}"#
        ),
        TRICKLERS as f64
    );
}

/// A client still sending its body when the node answers 408 and closes
/// must get the whole answer and then an orderly close: closing at once
/// with its bytes unread would make the kernel reset the connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_still_sending_when_answered_gets_the_answer_and_a_clean_close() {
    const CLIENTS: usize = 20;
    let node = Node::start(
        &plugin("echo"),
        &[
            "--body-read-timeout-ms",
            "300",
            "--lingering-close-ms",
            "5000",
        ],
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = node.addr.clone();
            tokio::spawn(async move {
                let stream = TcpStream::connect(&addr).await.unwrap();
                let (mut reader, mut writer) = stream.into_split();
                writer
                    .write_all(task_head(1 << 20).as_bytes())
                    .await
                    .unwrap();
                // A byte every 2 ms: bytes keep arriving after the answer.
                let sending = tokio::spawn(async move {
                    while writer.write_all(b" ").await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
                let response = read_response(&mut reader).await;
                sending.abort();
                let _ = sending.await;
                let mut rest = [0u8; 64];
                let end = loop {
                    match reader.read(&mut rest).await {
                        Ok(0) => break Ok(()),
                        Ok(_) => continue,
                        Err(error) => break Err(error.kind()),
                    }
                };
                (response.map(|r| r.status), end)
            })
        })
        .collect();
    for client in clients {
        let (status, end) = client.await.unwrap();
        assert_eq!(status, Some(408), "the answer was lost");
        assert_eq!(end, Ok(()), "the connection was reset, not closed");
    }
}

/// `node.lingering_close_max_bytes` (a key with no flag of its own, set
/// by `--set`) bounds what a closing connection reads of what the client
/// still sends: under it the client's close ends the linger, over it the
/// node closes first and counts it, long before the linger's deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_lingering_close_reads_at_most_its_byte_bound() {
    const LINGERING: &str =
        r#"iicp_connection_timeouts_total{kind="lingering_close",listener="public"}"#;
    const OPEN: &str = r#"iicp_connections_open{listener="public"}"#;
    let node = Node::start(
        &plugin("echo"),
        &[
            "--lingering-close-ms",
            "600000",
            "--set",
            "node.lingering_close_max_bytes=4096",
        ],
    );
    // Asks for a close, takes the answer, then sends `after` bytes and
    // closes its side.
    let client = |after: usize| {
        let addr = node.addr.clone();
        async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            get_health(&mut stream, "Connection: close\r\n").await;
            // The node may close (and reset) before the last of these.
            let _ = stream.write_all(&vec![b'x'; after]).await;
            let _ = stream.shutdown().await;
        }
    };
    // Each connection's count is in before it leaves the open gauge; the
    // one left open is the metrics client's own.
    let settled = || wait_for_sample(&node, OPEN, Duration::from_secs(60), |open| open <= 1.0);
    client(1024).await;
    settled().await;
    assert_eq!(sample(&metrics(&node).await, LINGERING), 0.0);
    client(256 << 10).await;
    settled().await;
    assert_eq!(sample(&metrics(&node).await, LINGERING), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_closes_after_the_idle_timeout() {
    const IDLE_MS: u64 = 1000;
    let node = Node::start(
        &plugin("echo"),
        &["--keep-alive-timeout-ms", &IDLE_MS.to_string()],
    );
    let mut stream = TcpStream::connect(&node.addr).await.unwrap();
    // The server's idle time starts once it has answered, which is after
    // this moment: a lower bound that no scheduling delay can break.
    let idle_from = Instant::now();
    let response = get_health(&mut stream, "").await;
    assert_eq!(response.header("connection"), None, "kept alive");
    let closed = closed_by_server(&mut stream, Duration::from_millis(IDLE_MS) + MARGIN)
        .await
        .expect("the idle connection stayed open");
    assert!(closed - idle_from >= Duration::from_millis(IDLE_MS));
    let text = metrics(&node).await;
    assert_eq!(
        sample(
            &text,
            r#"iicp_connection_timeouts_total{kind="idle",listener="public"}"#
        ),
        1.0,
        "{text}"
    );
}

/// A client that sends `count` pipelined copies of `body` and reads none
/// of the answers: a small receive window, so the node's writes are
/// refused early. The writer stalls when the node stops reading; the
/// node's close ends it.
async fn unread_client(
    node: &Node,
    body: &Value,
    count: usize,
) -> (tokio::net::tcp::OwnedReadHalf, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr.parse().unwrap()).await.unwrap();
    let body = serde_json::to_vec(body).unwrap();
    let mut requests = Vec::new();
    for _ in 0..count {
        requests.extend_from_slice(task_head(body.len()).as_bytes());
        requests.extend_from_slice(&body);
    }
    let (reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&requests).await;
    });
    (reader, writing)
}

const RESPONSE_WRITE_TIMEOUTS: &str =
    r#"iicp_connection_timeouts_total{kind="response_write",listener="public"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_its_answers_is_closed_by_the_response_write_budget() {
    const WRITE_MS: u64 = 1000;
    const REQUESTS: usize = 200;
    let node = Node::start(
        &plugin("echo"),
        &["--response-write-timeout-ms", &WRITE_MS.to_string()],
    );
    // 200 pipelined 64 KiB echoes (~13 MB of answers), none of them read.
    let echo = task("unread", ECHO, json!({ "text": "x".repeat(64 << 10) }));
    let not_reading_from = Instant::now();
    let (mut reader, writing) = unread_client(&node, &echo, REQUESTS).await;
    let write_budget = Duration::from_millis(WRITE_MS);
    let closed_at = wait_for_sample(
        &node,
        RESPONSE_WRITE_TIMEOUTS,
        write_budget + MARGIN * 2,
        |v| v >= 1.0,
    )
    .await;
    writing.abort();
    assert!(closed_at - not_reading_from >= write_budget);
    // Reading now finds the connection ended before every answer was sent.
    let mut received = Vec::new();
    let _ = tokio::time::timeout(MARGIN, reader.read_to_end(&mut received)).await;
    let answered = received
        .windows(12)
        .filter(|w| w == b"HTTP/1.1 200")
        .count();
    assert!(answered < REQUESTS, "all {answered} answers were delivered");
    // The node serves on.
    let (status, _, _) = post_task(&node, &task("after", ECHO, json!({ "text": "hi" }))).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_waiting_on_clients_are_bounded_node_wide_and_released_when_their_connections_close()
 {
    const BUDGET_MIB: u64 = 10;
    const WRITE_MS: u64 = 2000;
    const ANSWER_BYTES: u64 = 3_900_000;
    const HELD: &str = "iicp_unsent_answer_bytes";
    let node = Node::start(
        &plugin("misbehave"),
        &[
            "--max-unsent-answers-mib",
            &BUDGET_MIB.to_string(),
            "--response-write-timeout-ms",
            &WRITE_MS.to_string(),
        ],
    );
    let big = |id: &str| task(id, BIG_OUTPUT, json!({ "bytes": ANSWER_BYTES }));
    // Two clients that ask for large answers and read none: ~7.8 MB held.
    let stuck = [
        unread_client(&node, &big("stuck-1"), 2).await,
        unread_client(&node, &big("stuck-2"), 2).await,
    ];
    wait_for_sample(&node, HELD, MARGIN * 2, |v| v >= (2 * ANSWER_BYTES) as f64).await;
    // A third large answer does not fit: 503, and the node says why.
    let (status, headers, body) = post_task(&node, &big("third")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let says = body["error"]["message"].as_str().unwrap_or_default();
    assert!(says.contains("unsent-answer budget"), "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        sample(&metrics(&node).await, "iicp_unsent_answer_refusals_total"),
        1.0
    );
    // A small answer still fits.
    let (status, _, _) = post_task(&node, &task("small", SLEEP, json!({ "ms": 0 }))).await;
    assert_eq!(status, 200);
    // The write budget closes the stuck connections; their answers go.
    let limit = Duration::from_millis(WRITE_MS) + MARGIN * 2;
    wait_for_sample(&node, RESPONSE_WRITE_TIMEOUTS, limit, |v| v >= 2.0).await;
    for (_, writing) in stuck {
        writing.abort();
    }
    wait_for_sample(&node, HELD, MARGIN, |v| v <= 0.0).await;
    let (status, _, body) = post_task(&node, &big("later")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["result"].as_str().map(str::len),
        Some(ANSWER_BYTES as usize)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_over_the_cap_gets_a_503_envelope_and_room_comes_back() {
    const CAP: usize = 8;
    raise_open_file_limit();
    let node = Node::start(&plugin("echo"), &["--max-connections", &CAP.to_string()]);
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(&node.addr).await.unwrap());
    }
    // The kernel hands connections to the accept loop in order, so this
    // one comes after the eight that fill the cap.
    let mut over = TcpStream::connect(&node.addr).await.unwrap();
    over.write_all(b"GET /iicp/health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let refusal = read_response(&mut over).await.expect("a refusal");
    assert_eq!(refusal.status, 503);
    assert_eq!(refusal.header("connection"), Some("close"));
    assert_eq!(refusal.header("retry-after"), Some("1"));
    assert_eq!(refusal.json()["error"]["code"], "unavailable");
    assert!(closed_by_server(&mut over, MARGIN).await.is_some());

    // Clients that send a whole task at once, still unread when the node
    // answers and closes: each gets its 503, never a reset that destroys it
    // (a close with unread bytes resets the connection).
    let body =
        serde_json::to_vec(&task("over", ECHO, json!({"text": "x".repeat(200 << 10)}))).unwrap();
    let mut refused = 0;
    let mut lost = Vec::new();
    for _ in 0..40 {
        let answer = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .post(node.url("/v1/task"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match answer {
            Ok(response) if response.status() == 503 => refused += 1,
            Ok(response) => lost.push(response.status().to_string()),
            Err(error) => lost.push(format!("{error:?}")),
        }
    }
    assert_eq!(refused, 40, "answers lost to a reset: {lost:?}");

    held.clear();
    let mut served = false;
    let started = Instant::now();
    while !served && started.elapsed() < MARGIN * 2 {
        let (status, _) = raw_http(
            &node.addr,
            b"GET /iicp/health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        )
        .await;
        served = status == 200;
    }
    assert!(served, "the cap never gave room back");
    let text = metrics(&node).await;
    assert!(
        sample(
            &text,
            r#"iicp_connections_refused_total{listener="public"}"#
        ) >= 1.0,
        "{text}"
    );
    assert!(sample(&text, r#"iicp_connections_open{listener="public"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn heads_over_the_byte_or_count_limit_get_431() {
    let node = Node::start(
        &plugin("echo"),
        &["--max-header-bytes", "2048", "--max-headers", "16"],
    );
    let big = format!(
        "GET /iicp/health HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(4096)
    );
    assert_eq!(raw_http(&node.addr, big.as_bytes()).await.0, 431);
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many =
        format!("GET /iicp/health HTTP/1.1\r\nHost: test\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(raw_http(&node.addr, many.as_bytes()).await.0, 431);
    let fine = b"GET /iicp/health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_http(&node.addr, fine).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_running_tasks_refuses_new_ones_and_exits_0() {
    let mut node = Node::start(&plugin("versioned-v1"), &["--drain-timeout-ms", "30000"]);
    // A: a task that runs through the start of the drain.
    let long = tokio::spawn({
        let url = node.url("/v1/task");
        async move {
            let response = client()
                .post(url)
                .json(&task("long", VERSIONED, json!({"ms": 3000})))
                .send()
                .await
                .unwrap();
            let close = response.headers().get("connection").cloned();
            (response.status().as_u16(), close)
        }
    });
    // B: an idle keep-alive connection.
    let mut idle = TcpStream::connect(&node.addr).await.unwrap();
    idle.write_all(b"GET /iicp/health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.unwrap().status, 200);
    // C: a task whose body is still arriving when the drain begins.
    let body = serde_json::to_vec(&task("late", VERSIONED, json!({"ms": 0}))).unwrap();
    let mut late = TcpStream::connect(&node.addr).await.unwrap();
    late.write_all(task_head(body.len()).as_bytes())
        .await
        .unwrap();
    late.write_all(&body[..10]).await.unwrap();
    let started = Instant::now();
    while common::health(&node).await["active_jobs"] != 1 {
        assert!(started.elapsed() < MARGIN, "the long task never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    node.terminate();
    node.wait_for_log(MARGIN, |e| message(e).starts_with("shutting down"))
        .expect("drain log line");
    assert!(
        closed_by_server(&mut idle, MARGIN).await.is_some(),
        "the idle connection stayed open during the drain"
    );
    late.write_all(&body[10..]).await.unwrap();
    let refused = read_response(&mut late)
        .await
        .expect("an answer to the late task");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "IICP-E024");
    assert!(refused.header("retry-after").is_some());

    let (status, close) = long.await.unwrap();
    assert_eq!(status, 200, "the running task was not answered");
    assert_eq!(close.as_ref().map(|v| v.to_str().unwrap()), Some("close"));
    let exit = node
        .wait_exit(Duration::from_secs(30))
        .expect("the node did not exit");
    assert!(exit.success(), "{exit:?}");
    assert!(
        TcpStream::connect(&node.addr).await.is_err(),
        "still accepting after exit"
    );
}
