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
