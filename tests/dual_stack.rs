//! Dual stack: a node listening on the IPv6 wildcard answers on `[::1]`
//! and on `127.0.0.1` (one socket, `IPV6_V6ONLY` off), and a node listening
//! on an IPv6 address registers an IPv6 endpoint the directory can probe.

mod common;

use std::time::Duration;

use common::fake_directory::FakeDirectory;
use common::{Node, client, fresh_state_dir, plugin, task};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn node_listening_on(listen: &str, extra: &[&str]) -> Node {
    let echo = plugin("echo").display().to_string();
    Node::start_at(&["--plugin", &echo], listen, &fresh_state_dir(), extra)
}

fn port_of(node: &Node) -> u16 {
    node.addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ipv6_wildcard_serves_ipv6_and_ipv4_consumers() {
    let node = node_listening_on("[::]:0", &[]);
    let port = port_of(&node);
    for host in ["[::1]", "127.0.0.1"] {
        let base = format!("http://{host}:{port}");
        let health: Value = client()
            .get(format!("{base}/iicp/health"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"))
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok", "{host}");
        let response = client()
            .post(format!("{base}/v1/task"))
            .json(&task(
                &format!("ds-{host}"),
                "urn:iicp:intent:util:echo:v1",
                json!({"from": host}),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["result"], json!({"from": host}));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ipv6_node_registers_an_ipv6_endpoint() {
    let fake = FakeDirectory::start().await;
    let directory = fake.url();
    let node = node_listening_on("[::1]:0", &["--directory", &directory]);
    let register = fake.registrations(1, WAIT).await.remove(0);
    let endpoint = format!("http://[::1]:{}", port_of(&node));
    assert_eq!(register["endpoint"], endpoint);
    // The directory probed it over IPv6 inside the register call and took it.
    assert!(
        fake.wait_for(WAIT, |state| state
            .nodes
            .values()
            .any(|n| n.endpoint == endpoint))
            .await
    );
}
