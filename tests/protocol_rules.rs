//! The `/v1/task` rules the reference node has beyond admission, end to end
//! over real sockets: the CIP tool gate, drain, idempotent task ids and the
//! task auth modes.

mod common;

use std::path::{Path, PathBuf};

use common::{Node, error_of, metrics, plugin, post_task, task};
use serde_json::json;

/// A config serving the misbehave plugin under `intents`, plus `extra`.
fn misbehave_config(dir: &Path, intents: &[&str], extra: &str) -> PathBuf {
    let path = dir.join("node.toml");
    let intents: Vec<String> = intents.iter().map(|i| format!("{i:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "{extra}\n[[plugin]]\nid = \"misbehave\"\npath = {:?}\nintents = [{}]\n",
            plugin("misbehave").display().to_string(),
            intents.join(", ")
        ),
    )
    .unwrap();
    path
}

const TOOL_OK: &str = "urn:iicp:intent:tool:ok:v1";
const TEST_OK: &str = "urn:iicp:intent:test:ok:v1";

#[tokio::test(flavor = "multi_thread")]
async fn tool_intents_need_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let config = misbehave_config(dir.path(), &[TOOL_OK, TEST_OK], "");
    let denied = Node::start_config(&config, &[]);
    assert!(
        denied
            .log_text()
            .contains("policy.allow_tool_execution is false"),
        "no start-up warning:\n{}",
        denied.log_text()
    );
    for intent in [TOOL_OK, "urn:iicp:intent:tool:unserved:v1"] {
        let (status, _, body) = post_task(&denied, &task("tool-1", intent, json!(1))).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(error_of(&body)["code"], "tool_execution_denied");
    }
    let (status, _, _) = post_task(&denied, &task("plain-1", TEST_OK, json!(1))).await;
    assert_eq!(status, 200);
    assert!(
        metrics(&denied)
            .await
            .contains("iicp_tool_execution_denied_total 2")
    );

    let allowed = Node::start_config(&config, &["--allow-tool-execution"]);
    let (status, _, body) = post_task(&allowed, &task("tool-2", TOOL_OK, json!(7))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], 7);

    let policy = misbehave_config(
        dir.path(),
        &[TOOL_OK],
        "[policy]\nallow_tool_execution = true\n",
    );
    let from_file = Node::start_config(&policy, &[]);
    assert_eq!(
        post_task(&from_file, &task("tool-3", TOOL_OK, json!(1)))
            .await
            .0,
        200
    );
}
