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
