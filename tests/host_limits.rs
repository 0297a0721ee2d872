//! What a plugin makes the host hold is bounded by settings an operator can
//! see and set: the host-memory budget and resource-table entries (their
//! values named in the 502), the ceiling on a task's budget, the idle
//! lifetime of reused instances (and their eviction when the engine's pool
//! runs out), and the worst case the whole configuration may reach.
//! The full matrix of hoarding classes runs in the reliability suite
//! (`reliability/src/cases/hostile_plugins.rs`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Node, error_of, metrics, plugin, post_task, task};
use iicp_host::metrics::Metrics;
use iicp_host::protocol::task::Qos;
use iicp_host::runtime::engine::{AllocatorChoice, EngineSettings};
use iicp_host::runtime::execute::{TaskFailure, TaskInput};
use iicp_host::runtime::plugin::PluginSource;
use iicp_host::runtime::{Runtime, RuntimeSettings};
use serde_json::{Value, json};

fn hoard(class: &str) -> String {
    format!("urn:iicp:intent:hoard:{class}:v1")
}

async fn message_of(node: &Node, intent: &str) -> (u16, String) {
    let (status, _, body) = post_task(node, &task("t", intent, Value::Null)).await;
    let message = error_of(&body)["message"].as_str().unwrap().to_string();
    (status, message)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_limits_an_operator_sets_are_the_ones_enforced_and_named() {
    let node = Node::start(
        &plugin("hoarder"),
        &["--host-memory-kib", "1024", "--max-resources", "100"],
    );
    let (status, message) = message_of(&node, &hoard("fields")).await;
    assert_eq!(status, 502);
    assert_eq!(
        message,
        "plugin exceeded a host limit: host memory of 1048576 bytes"
    );
    let (status, message) = message_of(&node, &hoard("resources")).await;
    assert_eq!(status, 502);
    assert_eq!(
        message,
        "plugin exceeded a host limit: resource table of 100 entries"
    );
    let (status, message) = message_of(&node, &hoard("huge-call")).await;
    assert_eq!(status, 502);
    assert_eq!(
        message,
        "plugin exceeded a host limit: data passed to the host in one call of 5242880 bytes"
    );
    let (status, message) = message_of(&node, &hoard("model-used")).await;
    assert_eq!(status, 502);
    assert_eq!(message, "plugin model_used exceeds the 256-byte limit");
    let (status, _, body) = post_task(&node, &task("ok", &hoard("ok"), Value::Null)).await;
    assert_eq!((status, &body["result"]), (200, &json!({"ok": true})));
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"iicp_plugin_traps_total{kind="host_limit",plugin="hoarder"} 3"#),
        "{text}"
    );
    assert!(
        text.contains("iicp_plugin_host_memory_bytes_bucket"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_budget_above_the_plugins_ceiling_is_lowered_to_it() {
    let node = Node::start(
        &plugin("misbehave"),
        &["--max-timeout-ms", "400", "--timeout-ms", "300"],
    );
    let mut body = task("slow", "urn:iicp:intent:test:loop:v1", Value::Null);
    body["constraints"] = json!({ "timeout_ms": 120_000 });
    let (status, _, answer) = post_task(&node, &body).await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(
        error_of(&answer)["message"],
        "task did not finish within its 400 ms budget"
    );
}

/// The `iicp_plugin_idle_instances` gauge of `plugin`.
async fn idle_instances(node: &Node, plugin: &str) -> Option<u64> {
    let text = metrics(node).await;
    let prefix = format!("iicp_plugin_idle_instances{{plugin=\"{plugin}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_reused_instances_are_dropped_without_waiting_for_a_task() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reuse.toml");
    std::fs::write(
        &config,
        format!(
            "[[plugin]]\nid = \"reused\"\npath = \"{}\"\ninstance_reuse = 100\ninstance_idle_ms = 5000\n",
            plugin("misbehave").display()
        ),
    )
    .unwrap();
    let node = Node::start_config(&config, &[]);
    let (status, _, _) =
        post_task(&node, &task("one", "urn:iicp:intent:test:ok:v1", json!(1))).await;
    assert_eq!(status, 200);
    // Read within the 5 s idle time (300 ms was not enough on a busy machine).
    assert_eq!(idle_instances(&node, "reused").await, Some(1));
    let deadline = Instant::now() + Duration::from_secs(60);
    while idle_instances(&node, "reused").await != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the idle instance was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reused instance ends each task still holding a 120 KiB header map:
/// the host budget is per task, so without a check the instance piles up
/// maps across tasks far past it. An instance that ends a task holding host
/// resources is retired instead of reused; one that holds none is reused.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_instance_cannot_carry_host_resources_into_the_next_task() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reuse.toml");
    std::fs::write(
        &config,
        format!(
            "[[plugin]]\nid = \"hoarder\"\npath = \"{}\"\ninstance_reuse = 100\nhost_memory_kib = 512\n",
            plugin("hoarder").display()
        ),
    )
    .unwrap();
    let node = Node::start_config(&config, &[]);
    // 512 KiB holds four 120 KiB maps; twelve tasks would hold twelve.
    for i in 0..12 {
        let body = task(&format!("keep-{i}"), &hoard("keep-fields"), Value::Null);
        let (status, _, answer) = post_task(&node, &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["result"]["kept"], 1,
            "task {i} began with maps an earlier task left"
        );
    }
    assert_eq!(idle_instances(&node, "hoarder").await, Some(0));
    let text = metrics(&node).await;
    assert!(
        text.contains(
            r#"iicp_plugin_instances_retired_total{plugin="hoarder",reason="held_resources"} 12"#
        ),
        "{text}"
    );
    // An instance that lets go of everything is reused.
    let (status, _, _) = post_task(&node, &task("ok", &hoard("ok"), Value::Null)).await;
    assert_eq!(status, 200);
    assert_eq!(idle_instances(&node, "hoarder").await, Some(1));
}

fn input<'a>(task_id: &'a str, intent: &'a str, payload: &'a str) -> TaskInput<'a> {
    let timeout = Duration::from_secs(60);
    TaskInput {
        task_id,
        intent,
        payload,
        timeout,
        max_tokens: None,
        model: None,
        qos: Qos::Interactive,
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
        tracestate: None,
        deadline: Instant::now() + timeout,
    }
}

/// Idle instances of one plugin filling the engine's pool must not make
/// another plugin's task fail: they are evicted and the task runs.
#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_give_way_when_the_pool_is_full() {
    // max_instances 1: the pool holds 1 + 16 spare component instances.
    let settings = RuntimeSettings {
        engine: EngineSettings {
            max_instances: 1,
            keep_resident_bytes: None,
            allocator: AllocatorChoice::Pooling,
        },
        cache_dir: Some(common::shared_cache_dir()),
        max_dns_lookups: iicp_host::runtime::host::dns::DEFAULT_MAX_DNS_LOOKUPS,
    };
    let runtime = Arc::new(Runtime::new(&settings, Arc::new(Metrics::new())).unwrap());
    let mut reused = PluginSource::new(plugin("misbehave"));
    reused.limits.instance_reuse = 1000;
    let reused = Arc::new(runtime.load_plugin(&reused).await.unwrap());
    let echo = runtime
        .load_plugin(&PluginSource::new(plugin("echo")))
        .await
        .unwrap();
    // 17 overlapping tasks leave 17 idle instances: every slot.
    let sleepers: Vec<_> = (0..17)
        .map(|n| {
            let (runtime, reused) = (runtime.clone(), reused.clone());
            tokio::spawn(async move {
                let id = format!("sleep-{n}");
                let input = input(&id, "urn:iicp:intent:test:sleep:v1", r#"{"ms":1500}"#);
                runtime.run_task(&reused, input).await.0.is_ok()
            })
        })
        .collect();
    for sleeper in sleepers {
        assert!(sleeper.await.unwrap(), "a sleeping task failed");
    }
    assert_eq!(
        reused.idle_instances(),
        17,
        "the pool is not full of idle instances"
    );
    let (outcome, _) = runtime
        .run_task(&echo, input("echo", "urn:iicp:intent:util:echo:v1", "[1]"))
        .await;
    assert!(
        !matches!(outcome, Err(TaskFailure::PoolExhausted)),
        "idle instances were not evicted"
    );
    assert_eq!(outcome.unwrap().result.get(), "[1]");
    assert_eq!(reused.idle_instances(), 0);
}

#[test]
fn a_configuration_that_could_exhaust_the_machine_is_refused_unless_overcommit_is_allowed() {
    let echo = plugin("echo").display().to_string();
    let launcher = common::launcher();
    let state = launcher.fresh_state_dir();
    let args = [
        "run",
        "--plugin",
        &echo,
        "--listen",
        "127.0.0.1:0",
        "--max-concurrent",
        "256",
        "--memory-mb",
        "4096",
        "--allocator",
        "on-demand",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(args)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("256 tasks"), "{stderr}");
    assert!(stderr.contains("memory_overcommit"), "{stderr}");
    let mut with_overcommit: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    with_overcommit.extend(["--memory-overcommit", "--log-format", "json"].map(String::from));
    let node = Node::spawn(&with_overcommit, "info");
    assert!(node.log_text().contains("memory_overcommit"));
}
