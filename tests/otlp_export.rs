//! OTLP export of the task spans, end to end: real collectors over real
//! sockets (OTLP/HTTP protobuf served by axum, OTLP/gRPC served by tonic,
//! both decoding with the OpenTelemetry protobuf definitions) receive the
//! spans with the consumer's trace id and parent; and hostile collectors —
//! refusing, silent, answering garbage or an endless body — cost the tasks
//! nothing and the node no more than its export bounds.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Node, client, metrics, plugin, post_task, sample, task};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CONSUMER_SPAN: &str = "00f067aa0ba902b7";
/// Marks a task's payload and credential: neither may reach a collector.
const PAYLOAD_MARK: &str = "payload-the-collector-must-not-see";
const TOKEN_MARK: &str = "token-the-collector-must-not-see";

type Spans = Arc<Mutex<Vec<Span>>>;

fn keep(spans: &Spans, request: ExportTraceServiceRequest) {
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            spans.lock().unwrap().extend(scope.spans);
        }
    }
}

/// An OTLP receiver that keeps every span it is sent.
struct Collector {
    addr: SocketAddr,
    spans: Spans,
}

impl Collector {
    /// OTLP/HTTP with protobuf bodies, on `/v1/traces`.
    async fn http() -> Collector {
        let spans = Spans::default();
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    keep(&kept, ExportTraceServiceRequest::decode(body).unwrap());
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { addr, spans }
    }

    /// OTLP/gRPC: the `TraceService` of the OpenTelemetry protocol.
    async fn grpc() -> Collector {
        struct Receiver(Spans);
        #[async_trait::async_trait]
        impl TraceService for Receiver {
            async fn export(
                &self,
                request: tonic::Request<ExportTraceServiceRequest>,
            ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
                keep(&self.0, request.into_inner());
                Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
            }
        }
        let spans = Spans::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(spans.clone())))
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        Collector { addr, spans }
    }

    /// Waits for the spans named `names` of trace `trace_id` (hex).
    async fn wait_for(&self, trace_id: &str, names: &[&str]) -> Vec<Span> {
        let deadline = Instant::now() + WAIT;
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| hex::encode(&s.trace_id) == trace_id)
                .cloned()
                .collect();
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "spans never arrived: {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn named<'s>(spans: &'s [Span], name: &str) -> &'s Span {
    spans.iter().find(|s| s.name == name).unwrap()
}

fn attribute(span: &Span, key: &str) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.clone());
    match value {
        Some(Any::StringValue(text)) => text,
        other => panic!("{key}: {other:?}"),
    }
}

/// Records the `traceparent` of every request the plugin sends it.
async fn backend() -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let kept = kept.clone();
            async move {
                let traceparent = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                kept.lock().unwrap().push(traceparent);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A node serving the misbehave plugin (allowed to call `backend`), whose
/// spans go to `collector`, with `telemetry` lines in its `[telemetry]`.
fn traced_node(
    dir: &Path,
    backend: SocketAddr,
    collector: &str,
    telemetry: &str,
    env: &[(&str, &str)],
) -> Node {
    let path = dir.join("traced.toml");
    std::fs::write(
        &path,
        format!(
            "[telemetry]\n{telemetry}\n\
             [[plugin]]\nid = \"misbehave\"\npath = {:?}\n[plugin.http]\nallow = [\"http://{backend}\"]\n",
            plugin("misbehave").display().to_string(),
        ),
    )
    .unwrap();
    let mut env = env.to_vec();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", collector));
    Node::start_config_env(&path, &[], &env)
}

const QUICK: &str = "otlp_interval_ms = 100\notlp_timeout_ms = 500";

fn fetch(id: &str, backend: SocketAddr) -> Value {
    task(
        id,
        "urn:iicp:intent:test:http-get:v1",
        json!({"url": format!("http://{backend}/")}),
    )
}

const QUEUED: &str = r#"iicp_otlp_spans_total{result="queued"}"#;
const DROPPED: &str = r#"iicp_otlp_spans_total{result="dropped"}"#;
const EXPORTED: &str = r#"iicp_otlp_spans_total{result="exported"}"#;
const FAILED: &str = r#"iicp_otlp_spans_total{result="failed"}"#;

/// Waits until the node's metric `name` reaches `at_least`.
async fn wait_metric(node: &Node, name: &str, at_least: f64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics(node).await;
        if common::polled_sample(&text, name) >= at_least {
            return text;
        }
        assert!(Instant::now() < deadline, "{name} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a task continuing the consumer's trace `TRACE`, and checks that
/// the collector gets both spans as children of the consumer's span; returns
/// the execute span.
async fn consumer_trace_reaches(node: &Node, collector: &Collector, backend: SocketAddr) -> Span {
    let mut task = fetch("traced-1", backend);
    task["payload"]["note"] = json!(PAYLOAD_MARK);
    let response = client()
        .post(node.url("/v1/task"))
        .header("traceparent", format!("00-{TRACE}-{CONSUMER_SPAN}-01"))
        .bearer_auth(TOKEN_MARK)
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-iicp-trace-id"], TRACE);
    let spans = collector
        .wait_for(TRACE, &["iicp.task.validate", "iicp.task.execute"])
        .await;
    let execute = named(&spans, "iicp.task.execute");
    for span in [named(&spans, "iicp.task.validate"), execute] {
        assert_eq!(
            hex::encode(&span.parent_span_id),
            CONSUMER_SPAN,
            "{}",
            span.name
        );
        assert_eq!(attribute(span, "iicp.task_id"), "traced-1");
    }
    assert_eq!(
        attribute(execute, "iicp.intent"),
        "urn:iicp:intent:test:http-get:v1"
    );
    // The collector sees ids, intents and timings: never the payload or
    // the consumer's credential (docs/security.md, OTLP collector).
    let exported = format!("{spans:?}");
    for secret in [PAYLOAD_MARK, TOKEN_MARK] {
        assert!(!exported.contains(secret), "{secret} reached the collector");
    }
    execute.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_continue_the_consumers_trace_and_reach_the_collector() {
    let collector = Collector::http().await;
    let (backend, seen) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let node = traced_node(
        dir.path(),
        backend,
        &format!("http://{}", collector.addr),
        QUICK,
        &[],
    );

    let execute = consumer_trace_reaches(&node, &collector, backend).await;
    // The plugin's own request carries the child context: its parent is
    // the execute span.
    let outbound = seen.lock().unwrap()[0].clone().expect("a traceparent");
    assert_eq!(
        outbound,
        format!("00-{TRACE}-{}-01", hex::encode(&execute.span_id))
    );

    // Without a traceparent, the node starts the trace: the response
    // names it, and execute is a child of validate.
    let response = client()
        .post(node.url("/v1/task"))
        .json(&fetch("traced-2", backend))
        .send()
        .await
        .unwrap();
    let started = response.headers()["x-iicp-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    let spans = collector
        .wait_for(&started, &["iicp.task.validate", "iicp.task.execute"])
        .await;
    let validate = named(&spans, "iicp.task.validate");
    assert!(validate.parent_span_id.is_empty());
    assert_eq!(
        named(&spans, "iicp.task.execute").parent_span_id,
        validate.span_id
    );
    let text = wait_metric(&node, EXPORTED, 4.0).await;
    assert!(sample(&text, QUEUED) >= 4.0, "{text}");
    assert_eq!(sample(&text, DROPPED), 0.0, "{text}");

    // The export's share is in the node's worst case: 4 × 4 MiB + 8 MiB.
    let bound = node
        .wait_for_log(WAIT, |e| common::message(e) == "memory bound")
        .expect("memory bound logged");
    let worst = bound["fields"]["worst_case"].as_str().unwrap_or_default();
    assert!(
        worst.contains("OTLP export (4 × otlp_queue_bytes + 8 MiB, when on): 24 MiB"),
        "{worst}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_grpc_collector() {
    let collector = Collector::grpc().await;
    let (backend, _) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let node = traced_node(
        dir.path(),
        backend,
        &format!("http://{}", collector.addr),
        QUICK,
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
    );
    consumer_trace_reaches(&node, &collector, backend).await;
    wait_metric(&node, EXPORTED, 2.0).await;
}

/// A collector that accepts connections and never answers; it holds up to
/// 64 of them for the test's life.
fn silent_collector() -> SocketAddr {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<std::net::TcpStream> = silent.incoming().flatten().take(64).collect();
        drop(held);
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn refusing_and_silent_collectors_cost_the_tasks_nothing() {
    // Nothing listens on a port just released.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (backend, _) = backend().await;
    for collector in [refusing, silent_collector()] {
        let dir = tempfile::tempdir().unwrap();
        let node = traced_node(
            dir.path(),
            backend,
            &format!("http://{collector}"),
            QUICK,
            &[],
        );
        for i in 0..20 {
            let (status, _, body) = post_task(&node, &fetch(&format!("dark-{i}"), backend)).await;
            assert_eq!(status, 200, "{body}");
        }
        // The exporter kept trying, and gave up on its own deadline; what
        // failed is given back to the queue.
        let text = wait_metric(&node, FAILED, 1.0).await;
        assert_eq!(sample(&text, EXPORTED), 0.0, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_collector_holds_no_more_than_the_queue_bounds() {
    let stuck = format!("http://{}", silent_collector());
    let (backend, _) = backend().await;

    // Bound in count: the first send hangs for a minute, so after four
    // spans (that send's included) every span is dropped.
    let dir = tempfile::tempdir().unwrap();
    let telemetry = "otlp_queue_spans = 4\notlp_interval_ms = 100\notlp_timeout_ms = 60000";
    let node = traced_node(dir.path(), backend, &stuck, telemetry, &[]);
    for i in 0..10 {
        let (status, _, body) = post_task(&node, &fetch(&format!("held-{i}"), backend)).await;
        assert_eq!(status, 200, "{body}");
    }
    // Ten tasks, two spans each.
    let text = wait_metric(&node, DROPPED, 16.0).await;
    assert!(sample(&text, "iicp_otlp_queued_spans") <= 4.0, "{text}");
    assert_eq!(sample(&text, QUEUED), 4.0, "{text}");
    drop(node);

    // Bound in bytes: 64 KiB holds a few dozen spans of long task ids.
    let dir = tempfile::tempdir().unwrap();
    let telemetry = "otlp_queue_spans = 1000000\notlp_queue_bytes = 65536\n\
                     otlp_interval_ms = 100\notlp_timeout_ms = 60000";
    let node = traced_node(dir.path(), backend, &stuck, telemetry, &[]);
    let long_id = "x".repeat(240);
    for i in 0..60 {
        let id = format!("{i:03}{long_id}");
        let (status, _, body) = post_task(&node, &fetch(&id, backend)).await;
        assert_eq!(status, 200, "{body}");
    }
    let text = wait_metric(&node, DROPPED, 1.0).await;
    let held_bytes = sample(&text, "iicp_otlp_queued_bytes");
    assert!(held_bytes > 0.0 && held_bytes <= 65536.0, "{text}");
    assert!(sample(&text, QUEUED) < 120.0, "{text}");
    assert_eq!(
        sample(&text, QUEUED) + sample(&text, DROPPED),
        120.0,
        "{text}"
    );
}

/// A collector that answers its first request with bytes that are not
/// HTTP, and every later one with `200` and a body that never ends (up to
/// 256 MiB). Returns its address and, per endless answer, the bytes it
/// managed to write before the node hung up.
fn garbage_collector() -> (SocketAddr, Arc<Mutex<Vec<usize>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let written: Arc<Mutex<Vec<usize>>> = Arc::default();
    let record = written.clone();
    std::thread::spawn(move || {
        for (index, stream) in listener.incoming().take(16).enumerate() {
            let Ok(mut stream) = stream else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(WAIT)).unwrap();
                stream.set_write_timeout(Some(WAIT)).unwrap();
                // Read the request: head, then Content-Length bytes.
                let mut request = Vec::new();
                let mut buffer = [0u8; 8192];
                let body_start = loop {
                    let n = stream.read(&mut buffer).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..body_start]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
                    .unwrap_or(0);
                while request.len() < body_start + length {
                    let n = stream.read(&mut buffer).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                }
                if index == 0 {
                    let _ = stream.write_all(b"\x00\x01garbage, not HTTP\r\n\r\n");
                    return;
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\
                      transfer-encoding: chunked\r\n\r\n",
                );
                let chunk = [b'z'; 64 << 10];
                let mut sent = 0;
                while sent < 256 << 20 {
                    let ok = stream
                        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .and_then(|()| stream.write_all(&chunk))
                        .and_then(|()| stream.write_all(b"\r\n"));
                    if ok.is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                record.lock().unwrap().push(sent);
            });
        }
    });
    (address, written)
}

/// The node's peak resident memory, in bytes.
fn peak_rss(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbage_answer_fails_one_send_and_an_endless_one_is_cut_at_its_cap() {
    let (collector, written) = garbage_collector();
    let (backend, _) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let telemetry = "otlp_interval_ms = 100\notlp_timeout_ms = 30000";
    let node = traced_node(
        dir.path(),
        backend,
        &format!("http://{collector}"),
        telemetry,
        &[],
    );
    let (status, _, body) = post_task(&node, &fetch("garbage-1", backend)).await;
    assert_eq!(status, 200, "{body}");
    wait_metric(&node, FAILED, 1.0).await;
    let before = peak_rss(&node);

    // The endless body: the node reads its first 64 KiB, takes the 200 as
    // an answer (well before the 30 s deadline would) and hangs up.
    for i in 0..3 {
        let (status, _, body) = post_task(&node, &fetch(&format!("endless-{i}"), backend)).await;
        assert_eq!(status, 200, "{body}");
        wait_metric(&node, EXPORTED, 2.0 * f64::from(i + 1)).await;
    }
    let deadline = Instant::now() + WAIT;
    while written.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the node never hung up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the collector got out before the hang-up is what the socket
    // buffers held, not the 256 MiB it had to give.
    for sent in written.lock().unwrap().iter() {
        assert!(*sent < 32 << 20, "{sent} bytes were taken");
    }
    let grown = peak_rss(&node).saturating_sub(before);
    assert!(grown < 64 << 20, "peak RSS grew by {grown} bytes");
}
