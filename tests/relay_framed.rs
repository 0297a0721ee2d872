//! Relaying over the native IICP framing, end to end over real sockets,
//! with the reference's own node (crates.io `iicp-client` 0.7.109, built
//! as `bench/target/debug/native-node`; `make test` and `.ci/run` build
//! it): reference workers bound to our relay serve plain and IICP-CX tasks,
//! fail their tasks with `IICP-E031` when killed mid-load and bind again
//! after our relay restarts; the PyPI package's relay worker binds the same
//! way; our worker serves through the reference relay over both transports;
//! a hostile framed peer holds only what the bounds allow.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ciborium::value::Value as Cbor;
use common::cx::{CHAT, chat_content, encrypted_task, open_response};
use common::relaying::{echo_task, free_port, post_traced, relay_for};
use common::wait_until;
use common::{Node, client, echo_config, error_of, metric_value, metrics, plugin, task};
use iicp_host::relay::framing::{self, IntMap, key, kind, map_frame};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);
/// The reference worker reconnects with backoff from 2 s doubling to 60 s.
const REBIND_WAIT: Duration = Duration::from_secs(150);

/// A reference node process (`native-node <args>`), killed on drop.
struct Reference {
    child: Child,
    cx_public_key: Option<Value>,
}

impl Reference {
    fn binary() -> PathBuf {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/target/debug/native-node");
        assert!(
            path.exists(),
            "the reference node is not built ({}): run `cargo build --manifest-path \
             bench/Cargo.toml -p native-node` (make test and .ci/run do)",
            path.display()
        );
        path
    }

    fn spawn(args: &[&str]) -> Reference {
        let key_dir = common::fresh_state_dir();
        let mut child = Command::new(Self::binary())
            .args(args)
            .env("IICP_CX_KEY_DIR", &key_dir)
            .env("IICP_LOG_DIR", &key_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the reference node starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let cx_public_key = (args.first() == Some(&"worker")).then(|| {
            let line = lines
                .find_map(|l| l.ok()?.strip_prefix("cx_public_key=").map(str::to_string))
                .expect("the reference worker prints its CX key");
            serde_json::from_str(&line).unwrap()
        });
        // Drained, so the node never blocks on (or dies of) a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Reference {
            child,
            cx_public_key,
        }
    }

    /// `native-node worker` bound to our relay's accept port.
    fn worker(worker_id: &str, accept_port: u16) -> Reference {
        let listen = format!("127.0.0.1:{}", free_port());
        let relay = format!("127.0.0.1:{accept_port}");
        Self::spawn(&["worker", &listen, worker_id, &relay])
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn our_relay(accept_port: u16) -> Node {
    Node::start(
        &plugin("echo"),
        &[
            "--relay-capable",
            "--relay-accept-port",
            &accept_port.to_string(),
        ],
    )
}

async fn wait_bound(relay: &Node, worker_id: &str, within: Duration) {
    let url = relay_for(relay, worker_id, "/iicp/health");
    wait_until(&format!("{worker_id} bound to the relay"), within, || {
        let url = url.clone();
        async move {
            client()
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
}

async fn post(url: String, body: &Value) -> (u16, Value) {
    let (status, _, body) = post_traced(url, body).await;
    (status, body)
}

/// The reference worker's answer merged as the reference relay merges it:
/// its handler's chat completion at the top level.
fn merged_chat_content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no chat content in {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_worker_serves_plain_and_sealed_tasks_through_our_relay() {
    let accept_port = free_port();
    let relay = our_relay(accept_port);
    let worker = Reference::worker("ref-worker-1", accept_port);
    wait_bound(&relay, "ref-worker-1", WAIT).await;

    let (status, body) = post(
        relay_for(&relay, "ref-worker-1", "/v1/task"),
        &echo_task("plain-1", "hello over the framing"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task_id"], "plain-1");
    assert_eq!(body["status"], "success");
    assert_eq!(merged_chat_content(&body), "hello over the framing");

    // IICP-CX: the relay only ever holds ciphertext; the consumer opens it.
    let key = worker.cx_public_key.clone().unwrap();
    let payload = json!({"messages": [{"role": "user", "content": "sealed words"}]});
    let (sealed, shared) = encrypted_task(&key, "sealed-1", &payload);
    let (status, body) = post(relay_for(&relay, "ref-worker-1", "/v1/task"), &sealed).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("sealed words"), "{body}");
    let opened = open_response(&body, &shared, "sealed-1");
    assert_eq!(chat_content(&opened), "sealed words");

    let text = metrics(&relay).await;
    common::assert_metrics(
        &text,
        &[
            (r#"iicp_relay_binds_total{result="new"}"#, 1.0),
            (r#"iicp_relay_tasks_total{outcome="answered"}"#, 2.0),
            ("iicp_relay_sessions ", 1.0),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pypi_reference_worker_serves_through_our_relay() {
    let accept_port = free_port();
    let relay = our_relay(accept_port);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference-consumer/worker.py");
    let mut worker = Command::new(common::reference_python())
        .arg(script)
        .args(["py-worker-1", "127.0.0.1", &accept_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the PyPI worker starts");
    wait_bound(&relay, "py-worker-1", WAIT).await;
    let (status, body) = post(
        relay_for(&relay, "py-worker-1", "/v1/task"),
        &echo_task("py-1", "from python"),
    )
    .await;
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task_id"], "py-1");
    assert_eq!(merged_chat_content(&body), "from python");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_worker_killed_mid_load_fails_its_tasks_at_once() {
    let accept_port = free_port();
    let relay = our_relay(accept_port);
    let worker = Reference::worker("ref-worker-2", accept_port);
    wait_bound(&relay, "ref-worker-2", WAIT).await;

    let held: Vec<_> = (0..4)
        .map(|i| {
            let url = relay_for(&relay, "ref-worker-2", "/v1/task");
            let mut body = task(
                &format!("slow-{i}"),
                CHAT,
                json!({"messages": [{"role": "user", "content": "x"}], "sleep_ms": 60_000}),
            );
            body["constraints"] = json!({"timeout_ms": 120_000});
            tokio::spawn(async move { post(url, &body).await })
        })
        .collect();
    wait_until("four tasks held by the reference worker", WAIT, || async {
        metric_value(&metrics(&relay).await, "iicp_relay_tasks_in_flight ") == 4.0
    })
    .await;
    drop(worker); // SIGKILL: the connection closes under the relay

    for handle in held {
        let (status, body) = tokio::time::timeout(WAIT, handle)
            .await
            .expect("a task of the killed worker hangs")
            .unwrap();
        assert_eq!(status, 502, "{body}");
        assert_eq!(error_of(&body)["code"], "IICP-E031");
        assert!(body["task_id"].as_str().unwrap().starts_with("slow-"));
    }
    let text = metrics(&relay).await;
    common::assert_metrics(
        &text,
        &[
            (r#"iicp_relay_tasks_total{outcome="worker_gone"}"#, 4.0),
            ("iicp_relay_tasks_in_flight ", 0.0),
            ("iicp_relay_sessions ", 0.0),
        ],
    );
    let (status, body) = post(
        relay_for(&relay, "ref-worker-2", "/v1/task"),
        &echo_task("after", "gone"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_of(&body)["code"], "IICP-E030");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_worker_binds_again_after_our_relay_restarts() {
    let accept_port = free_port();
    let listen = format!("127.0.0.1:{}", free_port());
    let echo = plugin("echo").display().to_string();
    let state = common::fresh_state_dir();
    let port = accept_port.to_string();
    let start_relay = || {
        Node::start_at(
            &["--plugin", &echo],
            &listen,
            &state,
            &["--relay-capable", "--relay-accept-port", &port],
        )
    };
    let relay = start_relay();
    let _worker = Reference::worker("ref-worker-3", accept_port);
    wait_bound(&relay, "ref-worker-3", WAIT).await;
    drop(relay);

    let relay = start_relay();
    let started = Instant::now();
    wait_bound(&relay, "ref-worker-3", REBIND_WAIT).await;
    eprintln!(
        "relay restart: the reference worker bound again after {:?}",
        started.elapsed()
    );
    let (status, body) = post(
        relay_for(&relay, "ref-worker-3", "/v1/task"),
        &echo_task("after-restart", "back"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(merged_chat_content(&body), "back");
}

#[tokio::test(flavor = "multi_thread")]
async fn our_worker_serves_through_the_reference_relay() {
    let http = format!("127.0.0.1:{}", free_port());
    let accept_port = free_port();
    let _relay = Reference::spawn(&["relay", &http, &accept_port.to_string()]);
    wait_until("the reference relay listens", WAIT, || async {
        client()
            .get(format!("http://{http}/iicp/health"))
            .send()
            .await
            .is_ok()
    })
    .await;
    let base = format!("http://{http}");
    let transports = [
        ("ours-http", format!("url = \"{base}\"")),
        (
            "ours-framed",
            format!("url = \"iicp://127.0.0.1:{accept_port}\"\nhttp_url = \"{base}\""),
        ),
    ];
    for (worker_id, relay_table) in transports {
        let config = echo_config(&format!("[relay]\n{relay_table}\n"));
        let worker = Node::start_config(&config, &["--node-id", worker_id]);
        worker
            .wait_for_log(WAIT, |e| {
                common::message(e).starts_with("bound to the relay")
            })
            .unwrap_or_else(|| panic!("never bound; log:\n{}", worker.log_text()));
        for i in 0..3 {
            let text = format!("through their relay {i}");
            let (status, body) = post(
                format!("{base}/v1/relay-for/{worker_id}/v1/task"),
                &echo_task(&format!("via-reference-{i}"), &text),
            )
            .await;
            assert_eq!(status, 200, "{worker_id}: {body}");
            assert_eq!(chat_content(&body), text, "{worker_id}: {body}");
            assert_eq!(body["task_id"], format!("via-reference-{i}"));
        }
        let text = metrics(&worker).await;
        assert_eq!(
            metric_value(&text, r#"iicp_relay_worker_tasks_total{result="answered"}"#),
            3.0,
            "{worker_id}"
        );
    }
}

/// A framed peer played by the test.
struct RawPeer(TcpStream);

impl RawPeer {
    async fn connect(port: u16) -> RawPeer {
        RawPeer(TcpStream::connect(("127.0.0.1", port)).await.unwrap())
    }

    async fn send(&mut self, frame: &[u8]) {
        self.0.write_all(frame).await.unwrap();
    }

    async fn read(&mut self) -> Result<(u8, IntMap), framing::FrameError> {
        framing::read_frame(&mut self.0, 16 << 20, WAIT).await
    }

    /// INIT → ACK, RELAY_BIND → RELAY_ACK.
    async fn bind(port: u16, worker_id: &str, rebind_key: Option<&str>) -> (RawPeer, IntMap) {
        let mut peer = RawPeer::connect(port).await;
        peer.send(&map_frame(kind::INIT, vec![(key::VERSION, Cbor::from(1))]))
            .await;
        assert_eq!(peer.read().await.unwrap().0, kind::ACK);
        let mut bind = vec![
            (key::WORKER_ID, Cbor::Text(worker_id.into())),
            (key::INTENT, Cbor::Text(CHAT.into())),
            (key::MODELS, Cbor::Array(vec![Cbor::Text("echo".into())])),
        ];
        if let Some(k) = rebind_key {
            bind.push((key::REBIND_KEY, Cbor::Text(k.into())));
        }
        peer.send(&map_frame(kind::RELAY_BIND, bind)).await;
        let (kind, ack) = peer.read().await.unwrap();
        assert_eq!(kind, kind::RELAY_ACK);
        (peer, ack)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_framed_peer_holds_only_what_the_bounds_allow() {
    let accept_port = free_port();
    let config = echo_config(&format!(
        "[relay_capable]\naccept_port = {accept_port}\nhandshake_timeout_ms = 500\n\
         refuse_keyless_binds = true\nmax_result_bytes = 4096\n"
    ));
    let relay = Node::start_config(&config, &[]);

    // Silent after connecting: cut off at the handshake deadline.
    let mut silent = RawPeer::connect(accept_port).await;
    assert_eq!(silent.read().await.err(), Some(framing::FrameError::Closed));
    // A first frame announcing 4 GiB: refused from its header.
    let mut huge = RawPeer::connect(accept_port).await;
    huge.send(b"IICP\x01\x01\x00\x00\xff\xff\xff\xff").await;
    assert_eq!(huge.read().await.err(), Some(framing::FrameError::Closed));
    // Keyless: this relay refuses it, with the HTTP bind's error code.
    let (mut keyless, ack) = RawPeer::bind(accept_port, "raw-1", None).await;
    assert_eq!(ack.text(key::STATUS), Some("error"));
    assert_eq!(ack.text(key::ERROR_CODE), Some("IICP-E040"));
    assert!(keyless.read().await.is_err(), "closed after the refusal");

    // Keyed: bound; a task arrives as a CALL with our additions.
    let (mut worker, ack) = RawPeer::bind(accept_port, "raw-1", Some("k-1")).await;
    assert_eq!(ack.text(key::STATUS), Some("ok"));
    let port: u64 = relay.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(ack.uint(key::HTTP_PORT), Some(port));
    let url = relay_for(&relay, "raw-1", "/v1/task");
    let consumer = tokio::spawn(async move { post(url, &echo_task("raw-task", "hi")).await });
    let (kind, call) = worker.read().await.unwrap();
    assert_eq!(kind, kind::CALL);
    let task: Value = serde_json::from_slice(call.bytes(key::BODY).unwrap()).unwrap();
    assert_eq!(task["task_id"], "raw-task");
    assert!(
        call.text_pairs(key::HEADERS)
            .iter()
            .any(|(name, _)| name == "traceparent")
    );
    let call_id = call.text(key::CALL_ID).unwrap().to_string();
    worker
        .send(&map_frame(
            kind::RESPONSE,
            vec![
                (key::CALL_ID, Cbor::Text(call_id)),
                (
                    key::BODY,
                    Cbor::Bytes(br#"{"result":{"text":"raw"}}"#.to_vec()),
                ),
            ],
        ))
        .await;
    let (status, body) = consumer.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"task_id": "raw-task", "status": "success", "result": {"text": "raw"}})
    );

    // PING is answered with its bytes.
    worker
        .send(&map_frame(
            kind::PING,
            vec![(key::ECHO, Cbor::Bytes(vec![7, 7]))],
        ))
        .await;
    let (kind, pong) = worker.read().await.unwrap();
    assert_eq!(
        (kind, pong.bytes(key::ECHO)),
        (kind::PONG, Some(&[7u8, 7][..]))
    );

    // A response past the result cap: the connection is cut, the task it
    // held is answered IICP-E031 at once, and the relay keeps serving.
    let url = relay_for(&relay, "raw-1", "/v1/task");
    let consumer = tokio::spawn(async move { post(url, &echo_task("raw-2", "hi")).await });
    assert_eq!(worker.read().await.unwrap().0, kind::CALL);
    worker
        .send(&framing::frame(
            kind::RESPONSE,
            &vec![0u8; 4096 + (64 << 10) + 1],
        ))
        .await;
    let (status, body) = tokio::time::timeout(WAIT, consumer)
        .await
        .expect("the consumer is answered")
        .unwrap();
    assert_eq!(status, 502, "{body}");
    assert_eq!(error_of(&body)["code"], "IICP-E031");

    let text = metrics(&relay).await;
    for reason in ["framed_handshake", "key_required", "frame_too_large"] {
        assert!(
            metric_value(
                &text,
                &format!(r#"iicp_relay_refusals_total{{reason="{reason}"}}"#)
            ) >= 1.0,
            "{reason}"
        );
    }
    assert_eq!(metric_value(&text, "iicp_relay_sessions "), 0.0);
    assert_eq!(metric_value(&text, "iicp_relay_result_bytes "), 0.0);
    let health = client()
        .get(relay.url("/iicp/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn our_framed_worker_keeps_its_status_and_headers_through_our_relay() {
    let accept_port = free_port();
    let relay = our_relay(accept_port);
    let config = echo_config(&format!(
        "[relay]\nurl = \"iicp://127.0.0.1:{accept_port}\"\nhttp_url = \"http://{}\"\n",
        relay.addr
    ));
    let worker = Node::start_config(&config, &["--node-id", "ours-framed-2"]);
    worker
        .wait_for_log(WAIT, |e| {
            common::message(e).starts_with("bound to the relay")
        })
        .unwrap_or_else(|| panic!("never bound; log:\n{}", worker.log_text()));
    let url = relay_for(&relay, "ours-framed-2", "/v1/task");
    let (status, body) = post(url.clone(), &echo_task("ok-1", "framed both ways")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(chat_content(&body), "framed both ways");
    // Our worker's own error status crosses the framing (ours: key 1004).
    let (status, body) = post(url, &task("no-such", "urn:iicp:intent:none:v1", json!({}))).await;
    assert!((400..500).contains(&status), "{status}: {body}");
    assert_eq!(error_of(&body)["code"], "unknown_intent", "{body}");
}
