//! The operator's monitoring kit in `deploy/`: the alert rules pass
//! `promtool check rules` and their unit tests; every metric the Grafana
//! dashboard queries is in a live node's `/metrics` (read from the node,
//! never from a list, since metrics are added all the time), and so is
//! every metric an alert rule reads; and a real Prometheus scraping a real
//! node fires the trap alert for real traps and the node-down alert when
//! the node is killed.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, client, plugin, post_task, task};
use serde_json::{Value, json};

const TRAP: &str = "urn:iicp:intent:test:trap:v1";

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is needed: apt-get install prometheus (see .ci/debian-packages)"
    );
    path
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let output = Command::new(tool("promtool"))
            .args(&args)
            .current_dir(deploy("prometheus"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Every metric name in a Prometheus exposition, with the `_bucket`,
/// `_sum` and `_count` series of histograms.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every PromQL query of the dashboard (panels and template variables).
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/iicp-host.json")).unwrap())
            .unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_string());
        }
    }
    queries
}

/// The `iicp_…` metric names a query reads.
fn names_in(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(start) = rest.find("iicp_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// A node serving the misbehave plugin, with one trap counted.
async fn node_with_a_trap() -> Node {
    let node = Node::start(&plugin("misbehave"), &[]);
    let (status, _, body) = post_task(&node, &task("trap", TRAP, json!({}))).await;
    assert_eq!(status, 502, "{body}");
    node
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_queries_only_metrics_a_live_node_exports() {
    let node = node_with_a_trap().await;
    let exported = exported_names(&common::metrics(&node).await);
    let queries = dashboard_queries();
    let used: BTreeSet<String> = queries.iter().flat_map(|q| names_in(q)).collect();
    assert!(used.len() >= 15, "the dashboard shows little: {used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the node does not export: {missing:?}\nexported: {exported:?}"
    );
}

/// A real Prometheus, its config and data in a temp dir; stopped on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let binary = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        // The rules as shipped, with every `for:` shortened to 2 s so a
        // test sees them fire (promtool's unit tests check the real ones).
        let rules = dir.path().join("alerts.yml");
        let shipped = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
        let quick: Vec<String> = shipped
            .lines()
            .map(|line| match line.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 2s", &line[..line.len() - line.trim_start().len()]),
                None => line.to_string(),
            })
            .collect();
        std::fs::write(&rules, quick.join("\n")).unwrap();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: iicp-host\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// `GET /api/v1/<path>` as JSON, `None` until Prometheus answers.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let response = client()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Polls `path` until `accept` holds for its `data`; panics after `timeout`.
    async fn wait_for(
        &self,
        timeout: Duration,
        path: &str,
        query: &[(&str, &str)],
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.api(path, query).await;
            if let Some(answer) = &answer
                && accept(&answer["data"])
            {
                return answer["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus /api/v1/{path} did not get there in {timeout:?}: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Prometheus {
    /// Waits until the alert `name` fires; returns it.
    async fn wait_firing(&self, name: &str) -> Value {
        let alerts = self
            .wait_for(Duration::from_secs(60), "alerts", &[], |data| {
                data["alerts"].as_array().is_some_and(|alerts| {
                    alerts
                        .iter()
                        .any(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
                })
            })
            .await;
        alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .unwrap()
            .clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_fires_the_trap_alert_for_real_traps() {
    let node = Node::start(&plugin("misbehave"), &[]);
    let prometheus = Prometheus::start(&node.addr);
    // Scraped and healthy before anything goes wrong, with no alert.
    prometheus
        .wait_for(Duration::from_secs(60), "targets", &[], |data| {
            data["activeTargets"][0]["health"] == "up"
        })
        .await;
    let alerts = prometheus.api("alerts", &[]).await.unwrap();
    assert_eq!(alerts["data"]["alerts"], json!([]), "{alerts}");

    // Every dashboard query is valid PromQL for this Prometheus (Grafana's
    // `label_values(SELECTOR, LABEL)` reads SELECTOR).
    for query in dashboard_queries() {
        let query = match query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
        {
            Some((selector, _)) => selector.to_string(),
            None => query,
        };
        let query = query
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        let answer = prometheus.api("query", &[("query", &query)]).await.unwrap();
        assert_eq!(answer["status"], "success", "{query}: {answer}");
    }

    // A plugin keeps trapping: the alert fires, naming the plugin and the
    // kind.
    for n in 0..3 {
        let (status, _, body) =
            post_task(&node, &task(&format!("trap-{n}"), TRAP, json!({}))).await;
        assert_eq!(status, 502, "{body}");
    }
    let alert = prometheus.wait_firing("IicpPluginTrapsOrTimeouts").await;
    assert_eq!(alert["labels"]["plugin"], "misbehave", "{alert}");
    assert_eq!(alert["labels"]["kind"], "unreachable", "{alert}");
    assert_eq!(
        alert["annotations"]["summary"],
        format!(
            "{}: plugin misbehave keeps stopping by unreachable",
            node.addr
        )
    );
    eprintln!("fired: {alert}");

    // The node goes away: the one failure it cannot report itself.
    let addr = node.addr.clone();
    drop(node);
    let alert = prometheus.wait_firing("IicpNodeDown").await;
    assert_eq!(alert["labels"]["instance"], addr, "{alert}");
    eprintln!("fired: {alert}");
}

/// Every metric an alert rule reads is in the `/metrics` of a live node
/// that joined a directory, reloaded, refused a task over capacity and
/// trapped (labelled counters appear at their first event): a rule over a
/// misspelt or renamed metric would never fire.
#[tokio::test(flavor = "multi_thread")]
async fn every_alert_rule_reads_metrics_a_live_node_exports() {
    let fake = common::fake_directory::FakeDirectory::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nmax_concurrent = 1\n[directory]\nurl = \"{}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"IICP_OBSERVABILITY_ADMIN\"\n\
             [[plugin]]\nid = \"misbehave\"\npath = {:?}\n",
            fake.url(),
            plugin("misbehave").display().to_string()
        ),
    )
    .unwrap();
    let node = Node::start_config_env(&config, &[], &[("IICP_OBSERVABILITY_ADMIN", "admin")]);
    fake.registrations(1, Duration::from_secs(60)).await;
    let reload = client()
        .post(node.admin_url("/admin/reload"))
        .bearer_auth("admin")
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    let (status, _, body) = post_task(&node, &task("trap", TRAP, json!({}))).await;
    assert_eq!(status, 502, "{body}");
    // One slot, held by a sleeping task: a batch task is refused at once.
    let sleeper = {
        let url = node.url("/v1/task");
        tokio::spawn(async move {
            client()
                .post(url)
                .json(&task(
                    "sleep",
                    "urn:iicp:intent:test:sleep:v1",
                    json!({"ms": 20_000}),
                ))
                .send()
                .await
        })
    };
    common::wait_active(&node, 1, Duration::from_secs(60)).await;
    let mut batch = task("over", TRAP, json!({}));
    batch["constraints"] = json!({"qos": "batch"});
    assert_eq!(post_task(&node, &batch).await.0, 429);
    // The sleeper hangs up: its slot comes back.
    sleeper.abort();

    let exported = exported_names(&common::metrics(&node).await);
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let used: BTreeSet<String> = names_in(&rules).into_iter().collect();
    assert!(used.len() >= 8, "the rules read little: {used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "alert rules read metrics the node does not export: {missing:?}\nexported: {exported:?}"
    );
}
