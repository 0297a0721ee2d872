//! Host capabilities plugins import: per-plugin configuration and secrets,
//! and outbound HTTP through an allow-list.

mod common;

use std::path::{Path, PathBuf};

use common::{Node, plugin, post_task, task};
use serde_json::json;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn config_and_secrets_reach_only_their_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "config.toml",
        &format!(
            r#"
[[plugin]]
id = "with-config"
path = "{misbehave}"
[plugin.config]
base_url = "http://backend.example"
retries = 3
verbose = true
[plugin.secrets]
api_key = "TEST_PLUGIN_API_KEY"
"#,
            misbehave = plugin("misbehave").display()
        ),
    );
    let node = Node::start_config_env(&config, &[], &[("TEST_PLUGIN_API_KEY", "s3cr3t-value")]);
    let probe = |secret: &str, expect: &str| {
        task(
            "cfg",
            "urn:iicp:intent:test:config:v1",
            json!({"secret": secret, "expect": expect}),
        )
    };
    let (status, _, body) = post_task(&node, &probe("api_key", "s3cr3t-value")).await;
    assert_eq!(status, 200, "{body}");
    let report = &body["result"];
    assert_eq!(
        report["values"],
        json!({"base_url": "http://backend.example", "retries": "3", "verbose": "true"})
    );
    assert!(report["missing"].is_null());
    assert_eq!(report["secret_set"], true);
    assert_eq!(report["secret_matches"], true);
    let (_, _, body) = post_task(&node, &probe("api_key", "wrong")).await;
    assert_eq!(body["result"]["secret_matches"], false);
    let (_, _, body) = post_task(&node, &probe("other", "")).await;
    assert_eq!(body["result"]["secret_set"], false);
    assert!(!node.log_text().contains("s3cr3t-value"));

    // A plugin started without configuration sees none.
    let bare = Node::start(&plugin("misbehave"), &[]);
    let (_, _, body) = post_task(&bare, &probe("api_key", "s3cr3t-value")).await;
    assert_eq!(body["result"]["values"], json!({}));
    assert_eq!(body["result"]["secret_set"], false);
}

/// A backend on loopback: `/ok` says hello, `/slow` never answers in time,
/// `/big` sends a megabyte.
async fn backend() -> std::net::SocketAddr {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/ok", get(|| async { "hello from the backend" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route("/big", get(|| async { "x".repeat(1 << 20) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn http_node(dir: &Path, http_table: &str) -> Node {
    let config = write(
        dir,
        "http.toml",
        &format!(
            "[[plugin]]\nid = \"fetcher\"\npath = \"{}\"\n{http_table}",
            plugin("misbehave").display()
        ),
    );
    Node::start_config(&config, &[])
}

async fn fetch(node: &Node, url: &str, timeout_ms: u64) -> (u16, serde_json::Value) {
    let mut body = task(
        "fetch",
        "urn:iicp:intent:test:http-get:v1",
        json!({ "url": url }),
    );
    body["constraints"] = json!({ "timeout_ms": timeout_ms });
    let (status, _, json) = post_task(node, &body).await;
    (status, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_reaches_only_what_the_allow_list_names() {
    let addr = backend().await;
    let other = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let node = http_node(
        dir.path(),
        &format!(
            "[plugin.http]\nallow = [\"http://127.0.0.1:{}\"]\n",
            addr.port()
        ),
    );
    let (status, body) = fetch(&node, &format!("http://127.0.0.1:{}/ok", addr.port()), 5000).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"],
        json!({"status": 200, "body": "hello from the backend"})
    );

    // Another port on the same address is not in the list.
    let (status, body) = fetch(
        &node,
        &format!("http://127.0.0.1:{}/ok", other.port()),
        5000,
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not in the plugin's allow-list"),
        "{message}"
    );
    // So is https to the allowed host, and any other host.
    let (status, _) = fetch(
        &node,
        &format!("https://127.0.0.1:{}/ok", addr.port()),
        5000,
    )
    .await;
    assert_eq!(status, 502);
    let (status, _) = fetch(&node, "http://example.com/", 5000).await;
    assert_eq!(status, 502);

    let text = common::metrics(&node).await;
    assert!(
        text.contains(r#"iicp_plugin_http_requests_total{plugin="fetcher",result="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"iicp_plugin_http_requests_total{plugin="fetcher",result="denied"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"iicp_plugin_http_response_bytes_total{plugin="fetcher"} 22"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_without_an_allow_list_reaches_nothing() {
    let addr = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let node = http_node(dir.path(), "");
    let (status, body) = fetch(&node, &format!("http://127.0.0.1:{}/ok", addr.port()), 5000).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow-list")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_resolves_to_a_private_address_is_refused() {
    let addr = backend().await;
    let dir = tempfile::tempdir().unwrap();
    // "localhost" is allowed by name, but it resolves to loopback.
    let node = http_node(
        dir.path(),
        &format!(
            "[plugin.http]\nallow = [\"http://localhost:{}\"]\n",
            addr.port()
        ),
    );
    let (status, body) = fetch(&node, &format!("http://localhost:{}/ok", addr.port()), 5000).await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("not a public address"), "{message}");
    drop(node);

    // The operator may allow it explicitly.
    let dir = tempfile::tempdir().unwrap();
    let node = http_node(
        dir.path(),
        &format!(
            "[plugin.http]\nallow = [\"http://localhost:{}\"]\nallow_private = true\n",
            addr.port()
        ),
    );
    let (status, body) = fetch(&node, &format!("http://localhost:{}/ok", addr.port()), 5000).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_calls_end_at_the_deadline_and_answers_are_capped() {
    let addr = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let node = http_node(
        dir.path(),
        &format!(
            "[plugin.http]\nallow = [\"http://127.0.0.1:{}\"]\nmax_response_kib = 64\n",
            addr.port()
        ),
    );
    let started = std::time::Instant::now();
    let (status, body) = fetch(
        &node,
        &format!("http://127.0.0.1:{}/slow", addr.port()),
        500,
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "task_timeout");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let (status, body) = fetch(
        &node,
        &format!("http://127.0.0.1:{}/big", addr.port()),
        5000,
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("body size exceeds limit: 65536 bytes"),
        "{message}"
    );
    // The node keeps serving.
    let (status, _) = fetch(&node, &format!("http://127.0.0.1:{}/ok", addr.port()), 5000).await;
    assert_eq!(status, 200);
}

/// A raw backend for answers no well-behaved server gives: it reads one
/// request head, writes `head`, then writes `each` every 20 ms until the
/// node closes the connection, which it reports on the returned channel.
async fn raw_backend(
    head: &'static [u8],
    each: Vec<u8>,
) -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, closes) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (closed, each) = (closed.clone(), each.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if stream.write_all(head).await.is_ok() {
                    while stream.write_all(&each).await.is_ok() {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                }
                let _ = closed.send(()).await;
            });
        }
    });
    (addr, closes)
}

/// A node whose plugin may reach the misbehaving backend `bad` and the
/// healthy `ok`, with `extra` lines in its `[plugin.http]`.
fn node_reaching(
    dir: &Path,
    bad: std::net::SocketAddr,
    ok: std::net::SocketAddr,
    extra: &str,
) -> Node {
    http_node(
        dir,
        &format!("[plugin.http]\nallow = [\"http://{bad}\", \"http://{ok}\"]\n{extra}"),
    )
}

/// The misbehaving backend sees its connection closed by the node, and the
/// node's next task reaches the healthy backend.
async fn closed_and_serving_on(
    node: &Node,
    closes: &mut tokio::sync::mpsc::Receiver<()>,
    ok: std::net::SocketAddr,
) {
    closes
        .recv()
        .await
        .expect("the node closes the misbehaving backend's connection");
    let (status, body) = fetch(node, &format!("http://{ok}/ok"), 5000).await;
    assert_eq!(status, 200, "{body}");
}

/// A backend that answers at once but trickles its body without end cannot
/// hold the task, its in-flight slot or the connection past the task's
/// deadline: the task ends as timed out, the node closes the connection,
/// and the next task is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_trickling_its_body_is_cut_off_at_the_deadline() {
    let (bad, mut closes) = raw_backend(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"1\r\nx\r\n".to_vec(),
    )
    .await;
    let ok = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let node = node_reaching(dir.path(), bad, ok, "max_in_flight = 1\n");
    let (status, body) = fetch(&node, &format!("http://{bad}/"), 500).await;
    assert!(status == 504 || status == 502, "{status} {body}");
    closed_and_serving_on(&node, &mut closes, ok).await;
}

/// A backend whose answer head never ends (header after header) is read
/// only up to the client's head limit: the request fails as a protocol
/// error, the connection is closed and the node keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_sending_an_endless_head_fails_the_request_and_is_closed() {
    let sixteen_headers = "x-filler: 0123456789abcdef\r\n".repeat(16);
    let (bad, mut closes) = raw_backend(b"HTTP/1.1 200 OK\r\n", sixteen_headers.into_bytes()).await;
    let ok = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let node = node_reaching(dir.path(), bad, ok, "");
    let (status, body) = fetch(&node, &format!("http://{bad}/"), 60_000).await;
    assert_eq!(status, 502, "{body}");
    closed_and_serving_on(&node, &mut closes, ok).await;
    let text = common::metrics(&node).await;
    assert!(
        text.contains(r#"iicp_plugin_http_requests_total{plugin="fetcher",result="failed"} 1"#),
        "{text}"
    );
}

#[test]
fn malformed_allow_list_patterns_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "bad.toml",
        &format!(
            "[[plugin]]\nid = \"f\"\npath = \"{}\"\n[plugin.http]\nallow = [\"https://api.example.com/v1\"]\n",
            plugin("misbehave").display()
        ),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--no-cache", "--state-dir"])
        .arg(common::fresh_state_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(r#"plugin "f": http.allow: "https://api.example.com/v1": only scheme://host[:port] is allowed"#),
        "{stderr}"
    );
}

/// A name server that never answers, on a loopback address of its own;
/// records the first label of every name asked.
async fn silent_name_server() -> (
    std::net::IpAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let pid = std::process::id();
    let address = std::net::IpAddr::from([127, 53, (pid >> 8) as u8, pid as u8 | 1]);
    let socket = tokio::net::UdpSocket::bind((address, 53))
        .await
        .expect("bind a name server on port 53 (the test needs root)");
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = asked.clone();
    tokio::spawn(async move {
        let mut packet = [0u8; 512];
        while let Ok((len, _)) = socket.recv_from(&mut packet).await {
            // The question's name starts after the 12-byte header.
            let label_len = usize::from(*packet.get(12).unwrap_or(&0));
            if let Some(label) = packet
                .get(13..13 + label_len)
                .filter(|_| 13 + label_len <= len)
            {
                record
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(label).into_owned());
            }
        }
    });
    (address, asked)
}

/// A plugin asks for names whose name server never answers: each lookup
/// would hold a blocking thread for minutes, past its task's deadline. At
/// most `max_dns_lookups` are ever in flight, the tasks end at their
/// deadline while those threads are still stuck, and the node serves on.
/// Needs root: the node runs in a mount namespace of its own, whose
/// `resolv.conf` names the silent server.
#[tokio::test(flavor = "multi_thread")]
async fn slow_name_lookups_hold_at_most_max_dns_lookups_threads() {
    let (server, asked) = silent_name_server().await;
    let dir = tempfile::tempdir().unwrap();
    // 5 attempts × 30 s: the threads are stuck for the whole test.
    let resolv = write(
        dir.path(),
        "resolv.conf",
        &format!("nameserver {server}\noptions timeout:30 attempts:5\n"),
    );
    let wrapper = write(
        dir.path(),
        "in-namespace.sh",
        &format!(
            "#!/bin/sh\nexec unshare --mount sh -c 'mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"' {} {} \"$@\"\n",
            resolv.display(),
            env!("CARGO_BIN_EXE_iicp-host")
        ),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = write(
        dir.path(),
        "config.toml",
        &format!(
            "[node]\nmax_dns_lookups = 2\n[[plugin]]\npath = \"{}\"\n[plugin.http]\nallow = [\"http://*.dns.test:*\"]\n",
            plugin("misbehave").display()
        ),
    );
    let node = Node::start_config_wrapped(&wrapper, &config);

    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let mut body = task(
                &format!("dns-{i}"),
                "urn:iicp:intent:test:http-get:v1",
                json!({"url": format!("http://slow-{i}.dns.test:8080/")}),
            );
            body["constraints"] = json!({"timeout_ms": 1000});
            let url = node.url("/v1/task");
            tokio::spawn(async move {
                let response = common::client().post(url).json(&body).send().await.unwrap();
                response.status().as_u16()
            })
        })
        .collect();
    for answer in tasks {
        let status = answer.await.unwrap();
        assert!(status == 504 || status == 502, "status {status}");
    }
    // Every task has answered; the lookups that got a thread are still in
    // getaddrinfo, and no other lookup ever started.
    let text = common::metrics(&node).await;
    assert_eq!(
        common::sample(&text, "iicp_dns_lookups_in_flight"),
        2.0,
        "{text}"
    );
    assert_eq!(
        common::sample(&text, "iicp_dns_lookup_waits_total"),
        4.0,
        "{text}"
    );
    let mut names = asked.lock().unwrap().clone();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 2, "lookups started: {names:?}");
    let (status, _, _) = post_task(
        &node,
        &task("after", "urn:iicp:intent:test:ok:v1", json!(1)),
    )
    .await;
    assert_eq!(status, 200);
}
