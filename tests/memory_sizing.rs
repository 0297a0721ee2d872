//! A node given little memory sizes its defaults to fit it and still
//! serves; a setting given explicitly that cannot fit is refused before the
//! node binds its port, with the formula.

mod common;

use std::time::Duration;

use common::{Node, plugin, post_task};
use iicp_reliability::node::Node as Process;
use serde_json::json;

/// The value of `series` in the node's metrics; a missing series fails.
async fn gauge(node: &Process, series: &str) -> u64 {
    let text = common::metrics_of(node).await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not exported:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn setting(node: &Process, name: &str) -> u64 {
    gauge(node, &format!("iicp_memory_setting{{setting=\"{name}\"}}")).await
}

/// `[node]` and `[defaults]` keys set in the environment and by `--set`,
/// without a file, are in force and count as given: the sizing leaves
/// them as set (sized, 512 MiB gives 2 slots of 128 MiB), and the body
/// limit holds on the socket.
#[tokio::test(flavor = "multi_thread")]
async fn node_and_defaults_keys_from_the_environment_and_set_are_in_force_and_given() {
    let node = Node::start_env(
        &plugin("echo"),
        &[
            "--set",
            "node.max_concurrent=3",
            "--set",
            "defaults.memory_mb=16",
            "--set",
            "node.max_body_bytes=2048",
        ],
        &[("IICP_HOST_NODE__MEMORY_LIMIT_MIB", "512")],
    );
    assert_eq!(gauge(&node, "iicp_memory_limit_bytes").await, 512 << 20);
    assert_eq!(setting(&node, "max_concurrent").await, 3);
    // 3 tasks of the default 128 MiB alone would be 384 MiB: the worst
    // case under it is [defaults]' 16 MiB per task, given, not sized.
    let worst = gauge(&node, "iicp_memory_worst_case_bytes").await;
    assert!(worst < 3 * (128 << 20), "worst case {worst}");
    let (status, _, answer) = post_task(
        &node,
        &json!({"task_id":"big","intent":"urn:iicp:intent:util:echo:v1",
                "payload":"x".repeat(4096)}),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(common::error_of(&answer)["code"], "payload_too_large");
    let (status, _, answer) = post_task(
        &node,
        &json!({"task_id":"small","intent":"urn:iicp:intent:util:echo:v1","payload":"ok"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_given_256_mib_sizes_its_defaults_to_fit_and_serves_the_readme_examples() {
    let node = Node::start(&plugin("echo"), &["--memory-limit-mib", "256"]);

    // README, "Try it": the chat intent and the util echo intent.
    let (status, _, chat) = post_task(
        &node,
        &json!({"task_id":"demo-1","intent":"urn:iicp:intent:llm:chat:v1",
                "payload":{"messages":[{"role":"user","content":"Hello, mesh!"}]}}),
    )
    .await;
    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["status"], "success");
    assert_eq!(
        chat["result"]["choices"][0]["message"]["content"],
        "Hello, mesh!"
    );
    let (status, _, echo) = post_task(
        &node,
        &json!({"task_id":"demo-2","intent":"urn:iicp:intent:util:echo:v1",
                "payload":{"anything":[1,2,3]}}),
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["result"], json!({"anything":[1,2,3]}));

    // The bounds it chose, and the worst case they allow, fit 256 MiB.
    let limit = gauge(&node, "iicp_memory_limit_bytes").await;
    assert_eq!(limit, 256 << 20);
    let worst = gauge(&node, "iicp_memory_worst_case_bytes").await;
    assert!(worst <= limit, "worst case {worst} over {limit}");
    let slots = setting(&node, "max_concurrent").await;
    assert_eq!(slots, gauge(&node, "iicp_max_concurrent").await);
    assert!((1..32).contains(&slots), "{slots} slots");
    let connections = setting(&node, "max_connections").await;
    assert!((32..4096).contains(&connections), "{connections}");
    let unsent = setting(&node, "max_unsent_answer_bytes").await;
    assert!(unsent < 256 << 20, "{unsent}");
    let task_memory = setting(&node, "plugin_memory_bytes").await;
    assert!(
        (16 << 20..128 << 20).contains(&task_memory),
        "{task_memory}"
    );
    // Their sum by the formula: slots and connections alone, at what each
    // costs at least, fit.
    assert!(slots * task_memory + connections * (1 << 20) + unsent < limit);

    // The start-up line says what it assumed, from where, and what it chose.
    let line = node
        .wait_for_log(Duration::from_secs(60), |entry| {
            common::message(entry) == "memory bound"
        })
        .expect("a memory bound line");
    let sizing = line["fields"]["sizing"]
        .as_str()
        .unwrap_or_else(|| panic!("no sizing in {line}"));
    assert!(
        sizing.starts_with("memory 256 MiB (memory_limit_mib)"),
        "{sizing}"
    );
    assert!(sizing.contains("max_concurrent 32 -> "), "{sizing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_given_are_honoured_and_the_limit_reads_from_the_environment() {
    let echo = plugin("echo").display().to_string();
    let node = common::launcher().run(
        &["--plugin", &echo],
        &["--max-connections", "100"],
        "info",
        &[("IICP_HOST_MEMORY_LIMIT_MIB", "512")],
    );
    assert_eq!(gauge(&node, "iicp_memory_limit_bytes").await, 512 << 20);
    assert_eq!(setting(&node, "max_connections").await, 100);
    assert!(gauge(&node, "iicp_memory_worst_case_bytes").await <= 512 << 20);
    // Sized around it: fewer slots than the default.
    assert!(setting(&node, "max_concurrent").await < 32);
}

#[test]
fn a_setting_that_cannot_fit_is_refused_before_binding_with_the_formula() {
    // The port is held here: a node that got as far as binding would fail
    // with "cannot listen on", not with the memory bound.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let echo = plugin("echo").display().to_string();
    let state = common::fresh_state_dir();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(["run", "--plugin", &echo, "--listen", &listen])
        .args(["--memory-limit-mib", "256", "--max-concurrent", "64"])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("cannot listen"), "{stderr}");
    // The formula: the total, then each term by name.
    assert!(stderr.contains("64 tasks ×"), "{stderr}");
    assert!(stderr.contains("connections × (max_body_bytes"), "{stderr}");
    assert!(
        stderr.contains("more than the 256 MiB of memory it may assume (memory_limit_mib)"),
        "{stderr}"
    );
}
