//! The admission gate under a parallel burst: excess tasks get 429 with the
//! protocol's body, and no slot leaks — neither from finished tasks nor from
//! clients that hang up mid-task.

mod common;

use std::time::Duration;

use common::{
    Node, client, error_of, health, join_all, metrics, plugin, post_task, sample, spawn_post, task,
    wait_active, wait_for_sample, wait_idle,
};
use serde_json::json;

const SLEEP: &str = "urn:iicp:intent:test:sleep:v1";

fn sleep_task(id: &str, ms: u64, qos: &str) -> serde_json::Value {
    let mut body = task(id, SLEEP, json!({ "ms": ms }));
    body["constraints"] = json!({ "timeout_ms": 20_000, "qos": qos });
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_over_capacity_gets_429_and_leaks_no_slot() {
    let node = Node::start(&plugin("misbehave"), &["--max-concurrent", "3"]);
    let url = node.url("/v1/task");
    // Three long tasks hold every slot (until their clients hang up, below),
    // so the burst meets a full node however slowly a busy machine sends it.
    let holders: Vec<_> = (0..3)
        .map(|i| {
            spawn_post(
                url.clone(),
                sleep_task(&format!("hold-{i}"), 19_000, "batch"),
            )
        })
        .collect();
    wait_active(&node, 3, Duration::from_secs(60)).await;
    let handles = (0..9)
        .map(|i| {
            let (url, body) = (
                url.clone(),
                sleep_task(&format!("burst-{i}"), 3000, "batch"),
            );
            tokio::spawn(async move {
                let response = client().post(url).json(&body).send().await.unwrap();
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").cloned();
                let body: serde_json::Value = response.json().await.unwrap();
                (status, retry_after, body)
            })
        })
        .collect();
    let results = join_all(handles).await;
    let refused: Vec<_> = results.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(refused.len(), 9, "{results:?}");
    for (_, retry_after, body) in refused {
        let error = error_of(body);
        assert_eq!(error["code"], "IICP-E021");
        assert_eq!(error["message"], "capacity_exceeded");
        assert_eq!(error["qos_class"], "batch");
        assert!(error["retry_after_ms"].as_u64().unwrap() > 0);
        assert_eq!(retry_after.as_ref().unwrap(), "1");
    }
    // The holders hang up: their slots come back.
    for holder in holders {
        holder.abort();
    }
    let idle = wait_idle(&node, Duration::from_secs(30)).await;
    assert_eq!(idle["active_jobs"], 0);
    assert_eq!(idle["available"], true);
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"iicp_capacity_rejections_total{plugin="misbehave"} 9"#),
        "{text}"
    );

    // All three slots are usable again, at once.
    let handles = (0..3)
        .map(|i| {
            spawn_post(
                url.clone(),
                sleep_task(&format!("again-{i}"), 200, "interactive"),
            )
        })
        .collect();
    assert_eq!(join_all(handles).await, vec![200, 200, 200]);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_hang_up_release_their_slots() {
    let node = Node::start(&plugin("misbehave"), &["--max-concurrent", "2"]);
    // Two tasks that would run for 10 s, abandoned by their clients after 300 ms.
    let handles = (0..2)
        .map(|i| {
            let (url, body) = (
                node.url("/v1/task"),
                sleep_task(&format!("gone-{i}"), 10_000, "batch"),
            );
            tokio::spawn(async move {
                let impatient = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_millis(300))
                    .build()
                    .unwrap();
                impatient.post(url).json(&body).send().await.is_err()
            })
        })
        .collect();
    assert_eq!(
        join_all(handles).await,
        vec![true, true],
        "the requests should have timed out"
    );
    let idle = wait_idle(&node, Duration::from_secs(5)).await;
    assert_eq!(
        idle["active_jobs"], 0,
        "slots leaked after client disconnects: {idle}"
    );

    // Both slots serve new work concurrently.
    let (task_a, task_b) = (
        sleep_task("after-1", 100, "batch"),
        sleep_task("after-2", 100, "batch"),
    );
    let (first, second) = tokio::join!(post_task(&node, &task_a), post_task(&node, &task_b));
    assert_eq!((first.0, second.0), (200, 200));
}

#[tokio::test(flavor = "multi_thread")]
async fn slots_come_back_after_failures_and_timeouts() {
    let node = Node::start(
        &plugin("misbehave"),
        &["--max-concurrent", "1", "--memory-mb", "16"],
    );
    for case in ["trap", "memory-bomb", "invalid-json", "loop"] {
        let mut body = task(
            case,
            &format!("urn:iicp:intent:test:{case}:v1"),
            json!(null),
        );
        body["constraints"] = json!({"timeout_ms": 300});
        let (status, _, _) = post_task(&node, &body).await;
        assert!(status >= 500, "{case}: {status}");
        assert_eq!(
            health(&node).await["active_jobs"],
            0,
            "slot leaked after {case}"
        );
    }
    let (status, _, _) = post_task(&node, &sleep_task("last", 10, "batch")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn interactive_tasks_wait_for_a_slot_and_batch_tasks_do_not() {
    // A long QoS wait, so only the task's own deadline, the waiting room
    // and a release can end a wait in this test — never the machine's speed.
    let node = Node::start(
        &plugin("misbehave"),
        &[
            "--max-concurrent",
            "1",
            "--qos-wait-ms",
            "30000",
            "--qos-max-waiting",
            "1",
        ],
    );
    let url = node.url("/v1/task");
    let mut long = sleep_task("holder", 120_000, "batch");
    long["constraints"]["timeout_ms"] = json!(180_000);
    let holder = spawn_post(url.clone(), long);
    wait_for_sample(&node, "iicp_active_jobs", Duration::from_secs(30), |v| {
        v == 1.0
    })
    .await;

    // An interactive task whose own deadline ends first waits until then.
    let mut short = sleep_task("short-deadline", 10, "interactive");
    short["constraints"]["timeout_ms"] = json!(300);
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let response = impatient.post(&url).json(&short).send().await.unwrap();
    assert_eq!(response.status(), 429);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_of(&body)["qos_class"], "interactive");

    // An interactive task waits for the slot, holding none.
    let waiter = spawn_post(url.clone(), sleep_task("waiter", 10, "interactive"));
    wait_for_sample(&node, "iicp_qos_waiting", Duration::from_secs(30), |v| {
        v == 1.0
    })
    .await;
    assert_eq!(health(&node).await["active_jobs"], 1);

    // Batch fails fast; another interactive task finds the waiting room full.
    let (status, headers, body) = post_task(&node, &sleep_task("batch", 10, "batch")).await;
    assert_eq!(status, 429);
    assert_eq!(error_of(&body)["qos_class"], "batch");
    assert!(headers.contains_key("retry-after"));
    let (status, _, _) = post_task(&node, &sleep_task("crowded", 10, "realtime")).await;
    assert_eq!(status, 429);
    assert_eq!(sample(&metrics(&node).await, "iicp_qos_waiting"), 1.0);

    // The holder's client hangs up: its slot goes to the waiter.
    holder.abort();
    assert_eq!(waiter.await.unwrap(), 200);
    let text = metrics(&node).await;
    for (outcome, count) in [
        ("admitted", 1.0),
        ("expired", 1.0),
        ("waiting_room_full", 1.0),
    ] {
        let name = format!(r#"iicp_qos_waits_total{{outcome="{outcome}",plugin="misbehave"}}"#);
        assert_eq!(sample(&text, &name), count, "{name}\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            r#"iicp_capacity_rejections_total{plugin="misbehave"}"#
        ),
        3.0
    );
    assert_eq!(
        wait_idle(&node, Duration::from_secs(10)).await["active_jobs"],
        0
    );
}
