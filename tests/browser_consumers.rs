//! Browser consumers: CORS on every response (preflight included) and the
//! per-Origin task limit, over real sockets.

mod common;

use common::{Node, client, error_of, metrics, plugin, task};
use serde_json::{Value, json};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

async fn post_from(node: &Node, origin: Option<&str>, id: &str) -> reqwest::Response {
    let body = task(
        id,
        CHAT,
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    let mut request = client().post(node.url("/v1/task")).json(&body);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.expect("send task")
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_and_every_response_carry_cors_headers() {
    let node = Node::start(&plugin("echo"), &[]);
    let preflight = client()
        .request(reqwest::Method::OPTIONS, node.url("/v1/task"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,traceparent,x-iicp-consumer-token",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(headers["access-control-max-age"], "86400");
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in ["content-type", "traceparent", "x-iicp-consumer-token"] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }

    let answer = post_from(&node, Some("https://app.example"), "cors-1").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["access-control-allow-origin"], "*");
    let exposed = answer.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("x-iicp-trace-id"), "{exposed}");

    // Errors too, or a page could not read why it was refused.
    let missing = client()
        .get(node.url("/nowhere"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["access-control-allow-origin"], "*");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_origin_gets_its_window_of_tasks_and_others_are_unaffected() {
    let node = Node::start(&plugin("echo"), &["--origin-rate-limit", "3"]);
    let page = Some("https://page.example");
    for i in 0..3 {
        assert_eq!(
            post_from(&node, page, &format!("o-{i}")).await.status(),
            200
        );
    }
    let refused = post_from(&node, page, "o-3").await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(refused.headers()["access-control-allow-origin"], "*");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "IICP-E023");
    assert!(error_of(&body)["retry_after_ms"].as_u64().unwrap() <= 60_000);

    // Another origin, and callers without Origin, are not held back.
    assert_eq!(
        post_from(&node, Some("https://other.example"), "p-1")
            .await
            .status(),
        200
    );
    for i in 0..5 {
        assert_eq!(
            post_from(&node, None, &format!("sdk-{i}")).await.status(),
            200
        );
    }
    assert!(
        metrics(&node)
            .await
            .contains("iicp_origin_rate_limited_total 1"),
        "the refusal is counted"
    );
}
