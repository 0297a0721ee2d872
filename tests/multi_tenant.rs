//! Multi-tenant operator mode: several plugins from one config file, each
//! with its own limits and tenants, isolated from each other; hot reload
//! under load; the admin API; precise configuration errors; the shipped
//! example configuration.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::fake_directory::FakeDirectory;
use common::{
    Node, client, error_of, health, join_all, message, metric_value, metrics, plugin, post_task,
    sample, spawn_post, task,
};
use serde_json::{Value, json};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";
const VERSIONED: &str = "urn:iicp:intent:test:versioned:v1";
const ADMIN_TOKEN: &str = "admin-token-for-tests";

fn case(name: &str) -> String {
    format!("urn:iicp:intent:test:{name}:v1")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn two_plugin_config(dir: &Path, tools_extra: &str) -> PathBuf {
    write(
        dir,
        "two.toml",
        &format!(
            r#"
[node]
max_concurrent = 16

[admin]
token_env = "TEST_ADMIN_TOKEN"

[[plugin]]
id = "echo"
path = "{echo}"
max_concurrent = 8

[[plugin]]
id = "tools"
path = "{misbehave}"
max_concurrent = 2
memory_mb = 32
timeout_ms = 2000
{tools_extra}
"#,
            echo = plugin("echo").display(),
            misbehave = plugin("misbehave").display(),
        ),
    )
}

fn admin_env() -> Vec<(&'static str, &'static str)> {
    vec![("TEST_ADMIN_TOKEN", ADMIN_TOKEN)]
}

fn start(config: &Path, env: &[(&str, &str)]) -> Node {
    Node::start_config_env(config, &["--admin-listen", "127.0.0.1:0"], env)
}

async fn reload(node: &Node) -> (u16, Value) {
    operator(node, reqwest::Method::POST, "/admin/reload").await
}

async fn admin(
    node: &Node,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = client().request(method, node.admin_url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The admin API with the operator's token.
async fn operator(node: &Node, method: reqwest::Method, path: &str) -> (u16, Value) {
    admin(node, method, path, Some(ADMIN_TOKEN)).await
}

fn chat(id: &str) -> Value {
    task(
        id,
        CHAT,
        json!({"messages": [{"role": "user", "content": "hi there"}]}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_plugins_serve_their_intents_from_one_config() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&two_plugin_config(dir.path(), ""), &admin_env());
    assert_eq!(post_task(&node, &chat("c")).await.0, 200);
    let (status, _, body) = post_task(&node, &task("t", &case("ok"), json!({"x": 1}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"x": 1}));
    let intents = health(&node).await["intents"].clone();
    assert!(intents.as_array().unwrap().contains(&json!(CHAT)));
    assert!(intents.as_array().unwrap().contains(&json!(case("ok"))));
    let text = metrics(&node).await;
    assert!(text.contains(&format!(
        r#"iicp_tasks_total{{intent="{CHAT}",plugin="echo",status="success"}} 1"#
    )));
    assert!(text.contains(&format!(
        r#"iicp_tasks_total{{intent="{}",plugin="tools",status="success"}} 1"#,
        case("ok")
    )));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_plugin_does_not_fail_or_stall_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&two_plugin_config(dir.path(), ""), &admin_env());
    let abuse: Vec<_> = ["loop", "memory-bomb", "loop", "memory-bomb", "loop"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            // Batch: the abuse beyond the plugin's slots is refused at once
            // rather than waiting for the slots of the tasks it follows.
            let mut body = task(&format!("bad-{i}"), &case(name), json!(null));
            body["constraints"] = json!({"qos": "batch"});
            spawn_post(node.url("/v1/task"), body)
        })
        .collect();
    // Some of the abuse holds the tools plugin's slots before the echo load
    // starts, or has already ended: a loop task lives 2 s, which a poll on
    // a loaded machine can miss.
    common::wait_until("the abuse to start", Duration::from_secs(60), || async {
        let active = common::health(&node).await["active_jobs"].as_u64();
        active.unwrap_or(0) > 0 || abuse.iter().any(|task| task.is_finished())
    })
    .await;
    let good: Vec<_> = (0..8)
        .map(|worker| {
            let url = node.url("/v1/task");
            tokio::spawn(async move {
                for i in 0..8 {
                    let body = chat(&format!("good-{worker}-{i}"));
                    let status = client()
                        .post(&url)
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16();
                    assert_eq!(
                        status, 200,
                        "an echo task failed while the other plugin misbehaved"
                    );
                }
            })
        })
        .collect();
    for worker in good {
        worker.await.unwrap();
    }
    // Not stalled: no echo task waited for a slot or was turned away (the
    // tools plugin's tasks hold only its own two slots). Counted, not
    // timed, so a loaded machine cannot fail it.
    let text = metrics(&node).await;
    for line in text.lines().filter(|l| l.contains(r#"plugin="echo""#)) {
        if line.starts_with("iicp_qos_waits_total")
            || line.starts_with("iicp_capacity_rejections_total")
        {
            assert!(line.ends_with(" 0"), "an echo task had to wait: {line}");
        }
    }
    let statuses: Vec<u16> = join_all(abuse).await;
    // Two slots: the rest of the abuse is refused with 429, the rest stopped.
    assert!(
        statuses.iter().all(|s| [429, 502, 504].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_tokens_are_enforced_per_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_plugin_config(
        dir.path(),
        "[plugin.tenants]\nacme = \"TEST_ACME\"\nglobex = \"TEST_GLOBEX\"\n",
    );
    let mut env = admin_env();
    env.extend([
        ("TEST_ACME", "acme-secret-token"),
        ("TEST_GLOBEX", "globex-secret-token"),
    ]);
    let node = start(&config, &env);
    let ok_task = |id: &str| task(id, &case("ok"), json!(1));

    let (status, _, body) = post_task(&node, &ok_task("none")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_of(&body)["code"], "unauthorized");
    let mut wrong = ok_task("wrong");
    wrong["auth"] = json!({"node_token": "acme-secret-tokem"});
    assert_eq!(post_task(&node, &wrong).await.0, 401);

    let mut acme = ok_task("acme");
    acme["auth"] = json!({"node_token": "acme-secret-token"});
    assert_eq!(post_task(&node, &acme).await.0, 200);
    let mut sdk_style = ok_task("sdk");
    sdk_style["auth"] = json!({"token": "globex-secret-token"});
    assert_eq!(post_task(&node, &sdk_style).await.0, 200);
    let response = client()
        .post(node.url("/v1/task"))
        .bearer_auth("globex-secret-token")
        .json(&ok_task("bearer"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The other plugin stays open, and a tenant token is no key to it either way.
    assert_eq!(post_task(&node, &chat("open")).await.0, 200);
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"iicp_unauthorized_total{plugin="tools"} 2"#),
        "{text}"
    );
    let log = node.log_text();
    assert!(!log.contains("acme-secret-token") && !log.contains("globex-secret-token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_lists_drains_and_resumes_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&two_plugin_config(dir.path(), ""), &admin_env());
    assert_eq!(
        admin(&node, reqwest::Method::GET, "/admin/plugins", None)
            .await
            .0,
        401
    );
    assert_eq!(
        admin(&node, reqwest::Method::GET, "/admin/plugins", Some("nope"))
            .await
            .0,
        401
    );
    assert_eq!(post_task(&node, &chat("count")).await.0, 200);

    let (status, list) = operator(&node, reqwest::Method::GET, "/admin/plugins").await;
    assert_eq!(status, 200, "{list}");
    let echo = &list["plugins"][0];
    assert_eq!(echo["id"], "echo");
    assert_eq!(echo["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        echo["intents"],
        json!([CHAT, "urn:iicp:intent:util:echo:v1"])
    );
    assert_eq!(echo["limits"]["max_concurrent"], 8);
    assert_eq!(echo["served"], 1);
    assert_eq!(echo["access"], "open");
    let tools = &list["plugins"][1];
    assert_eq!(tools["limits"]["memory_mb"], 32);
    assert_eq!(tools["limits"]["timeout_ms"], 2000);

    let (status, drained) =
        operator(&node, reqwest::Method::POST, "/admin/plugins/echo/drain").await;
    assert_eq!((status, drained["draining"].clone()), (200, json!(true)));
    let (status, _, body) = post_task(&node, &chat("drained")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_of(&body)["code"], "IICP-E024");
    assert_eq!(error_of(&body)["reason"], "plugin_draining");
    assert_eq!(
        post_task(&node, &task("t", &case("ok"), json!(1))).await.0,
        200
    );
    operator(&node, reqwest::Method::POST, "/admin/plugins/echo/resume").await;
    assert_eq!(post_task(&node, &chat("resumed")).await.0, 200);
    assert_eq!(
        operator(&node, reqwest::Method::POST, "/admin/plugins/nope/drain")
            .await
            .0,
        404
    );
}

/// `versioned.toml` serving the plugin at `wasm` as "svc".
/// A node serving one plugin as `svc`. Its worst-case memory at hundreds
/// of slots exceeds a test machine's, which the test accepts on purpose
/// (`memory_overcommit`): the tasks here sleep and hold no memory.
fn svc_config(dir: &Path, wasm: &Path, max_concurrent: u32) -> PathBuf {
    write(
        dir,
        "versioned.toml",
        &format!(
            "[node]\nmax_concurrent = {max_concurrent}\nmemory_overcommit = true\n[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n[[plugin]]\nid = \"svc\"\npath = \"{}\"\n",
            wasm.display()
        ),
    )
}

fn versioned_config(dir: &Path, version: u8, max_concurrent: u32) -> PathBuf {
    svc_config(
        dir,
        &plugin(&format!("versioned-v{version}")),
        max_concurrent,
    )
}

async fn version_of(node: &Node) -> String {
    let (status, _, body) = post_task(node, &task("v", VERSIONED, json!({"ms": 0}))).await;
    assert_eq!(status, 200, "{body}");
    body["result"]["version"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_under_load_drops_no_task_and_swaps_the_version() {
    const CLIENTS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let config = versioned_config(dir.path(), 1, 512);
    let node = start(&config, &admin_env());
    assert_eq!(version_of(&node).await, "1");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, v1, v2) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|worker| {
            let (http, url, stop) = (http.clone(), node.url("/v1/task"), stop.clone());
            let (ok, failed, v1, v2) = (ok.clone(), failed.clone(), v1.clone(), v2.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = task(&format!("load-{worker}-{i}"), VERSIONED, json!({"ms": 300}));
                    match http.post(&url).json(&body).send().await {
                        Ok(response) if response.status() == 200 => {
                            let body: Value = response.json().await.unwrap_or_default();
                            ok.fetch_add(1, Ordering::Relaxed);
                            match body["result"]["version"].as_str() {
                                Some("1") => v1.fetch_add(1, Ordering::Relaxed),
                                Some("2") => v2.fetch_add(1, Ordering::Relaxed),
                                _ => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    // Let the load build up, then swap to version 2 while it runs. Every
    // wait is for a condition (bounded generously: a busy 2-core machine
    // is slow, not wrong); no timing is asserted.
    let load_deadline = std::time::Instant::now() + Duration::from_secs(120);
    let wait_until = |what: &'static str, done: &dyn Fn() -> bool| {
        assert!(
            std::time::Instant::now() < load_deadline,
            "gave up waiting for {what}"
        );
        done()
    };
    loop {
        let in_flight = health(&node).await["active_jobs"].as_u64().unwrap();
        if wait_until("300 tasks in flight", &|| in_flight >= 300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    versioned_config(dir.path(), 2, 512);
    let (status, report) = reload(&node).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["loaded"], json!(["svc"]));
    assert!(
        report["in_flight"].as_u64().unwrap() > 0,
        "the swap happened under load: {report}"
    );
    // Version 2 serves as much as version 1 did before the swap.
    while !wait_until("300 answers from version 2", &|| {
        v2.load(Ordering::Relaxed) >= 300
    }) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let (ok, failed, v1, v2) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        v1.load(Ordering::Relaxed),
        v2.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed, 0,
        "{failed} tasks failed across the swap ({ok} succeeded)"
    );
    assert!(v1 >= 300 && v2 >= 300, "v1 answered {v1}, v2 answered {v2}");
    assert_eq!(version_of(&node).await, "2");
    let reload = node
        .log_entries()
        .into_iter()
        .find(|e| message(e) == "reload applied")
        .expect("reload log line");
    eprintln!(
        "reload under load: in_flight={} swap_us={} prepare_ms={} tasks ok={ok}",
        reload["fields"]["in_flight"], reload["fields"]["swap_us"], reload["fields"]["prepare_ms"]
    );
}

/// `[[plugin]]` tables for misbehave at `path`, one per tenant, each serving
/// (and told to declare) `urn:iicp:intent:<tenant>:<case>:v1` for `cases`,
/// with its own memory cap, instance reuse and configuration.
fn tenant_tables(path: &Path, tenants: &[(&str, u32)], cases: &[&str]) -> String {
    let mut tables = String::new();
    for (tenant, memory_mb) in tenants {
        let intents: Vec<String> = cases
            .iter()
            .map(|case| format!("urn:iicp:intent:{tenant}:{case}:v1"))
            .collect();
        tables.push_str(&format!(
            "\n[[plugin]]\nid = {tenant:?}\npath = {path:?}\nintents = {intents:?}\n\
             memory_mb = {memory_mb}\ninstance_reuse = 4\n\
             [plugin.config]\nalso_declare = {declare:?}\ntenant = {tenant:?}\n",
            path = path.display().to_string(),
            declare = intents.join(","),
        ));
    }
    tables
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_loaded_from_one_artifact_share_its_compiled_code() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("misbehave.wasm");
    std::fs::copy(plugin("misbehave"), &shared).unwrap();
    let tenants = [("alpha", 16), ("beta", 48)];
    let config = write(
        dir.path(),
        "shared.toml",
        &format!(
            "[node]\nmax_concurrent = 4\n{}",
            tenant_tables(&shared, &tenants, &["config", "counter", "memory-bomb"])
        ),
    );
    let node = Node::start_config_env(&config, &[], &[]);
    let shared_flags: Vec<Value> = node
        .log_entries()
        .iter()
        .filter(|e| message(e) == "plugin loaded")
        .map(|e| e["fields"]["shared"].clone())
        .collect();
    assert_eq!(
        shared_flags,
        vec![json!(false), json!(true)],
        "the second plugin reuses the first one's compiled code"
    );
    let intent = |tenant: &str, case: &str| format!("urn:iicp:intent:{tenant}:{case}:v1");

    // Each keeps its own configuration (and declared what its own said).
    for (tenant, _) in tenants {
        let (status, _, body) =
            post_task(&node, &task("c", &intent(tenant, "config"), json!({}))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["values"]["tenant"], json!(tenant), "{body}");
    }
    // Each keeps its own instances: alpha's reused instance counts alpha's
    // calls only, and beta starts from its own fresh instance.
    for expected in 1..=3 {
        let (status, _, body) =
            post_task(&node, &task("n", &intent("alpha", "counter"), json!({}))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["calls"], json!(expected), "{body}");
    }
    let (status, _, body) =
        post_task(&node, &task("n", &intent("beta", "counter"), json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["calls"], json!(1), "{body}");
    // Each keeps its own limits.
    for (tenant, memory_mb) in tenants {
        let (status, _, body) =
            post_task(&node, &task("m", &intent(tenant, "memory-bomb"), json!({}))).await;
        assert_eq!(status, 502, "{body}");
        assert_eq!(
            error_of(&body)["message"],
            format!("plugin exceeded its memory limit of {memory_mb} MiB")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_file_rewritten_in_place_is_loaded_anew_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("svc.wasm");
    std::fs::copy(plugin("versioned-v1"), &wasm).unwrap();
    let node = start(&svc_config(dir.path(), &wasm, 8), &admin_env());
    assert_eq!(version_of(&node).await, "1");
    // Same path, same inode: only the content and the file times change.
    std::fs::write(&wasm, std::fs::read(plugin("versioned-v2")).unwrap()).unwrap();
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["loaded"], json!(["svc"]), "{body}");
    assert_eq!(version_of(&node).await, "2");
    // And back: the bytes of a version loaded before are loaded again too.
    std::fs::write(&wasm, std::fs::read(plugin("versioned-v1")).unwrap()).unwrap();
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["loaded"], json!(["svc"]), "{body}");
    assert_eq!(version_of(&node).await, "1");
}

/// The intents a node serves, from its health answer.
async fn served_intents(node: &Node) -> Vec<Value> {
    health(node).await["intents"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_directories_add_change_and_remove_plugins_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let plugins_d = dir.path().join("plugins.d");
    std::fs::create_dir(&plugins_d).unwrap();
    // A directory file's relative paths start from its own directory.
    std::fs::copy(plugin("misbehave"), plugins_d.join("misbehave.wasm")).unwrap();
    write(
        &plugins_d,
        "tools.toml",
        "[[plugin]]\nid = \"tools\"\npath = \"misbehave.wasm\"\nmax_concurrent = 2\n",
    );
    write(&plugins_d, ".editor-swap.toml", "not toml at all [");
    write(&plugins_d, "notes.txt", "not a configuration file");
    let config = write(
        dir.path(),
        "node.toml",
        &format!(
            "[node]\nplugin_dirs = [\"plugins.d\"]\n[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n[[plugin]]\nid = \"echo\"\npath = \"{}\"\n",
            plugin("echo").display()
        ),
    );
    let node = start(&config, &admin_env());
    assert_eq!(post_task(&node, &chat("c")).await.0, 200);
    let (status, _, body) = post_task(&node, &task("t", &case("ok"), json!({"x": 1}))).await;
    assert_eq!(status, 200, "{body}");

    // A new file adds a plugin; the others are kept.
    let svc = |version: u8| {
        format!(
            "[[plugin]]\nid = \"svc\"\npath = \"{}\"\n",
            plugin(&format!("versioned-v{version}")).display()
        )
    };
    write(&plugins_d, "svc.toml", &svc(1));
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["loaded"], json!(["svc"]), "{body}");
    assert_eq!(body["kept"], json!(["echo", "tools"]), "{body}");
    assert_eq!(version_of(&node).await, "1");

    // Rewritten at once with the same size (the file times may not move
    // within one tick of the filesystem clock): still read again.
    write(&plugins_d, "svc.toml", &svc(2));
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["loaded"], json!(["svc"]), "{body}");
    assert_eq!(version_of(&node).await, "2");

    // A broken file fails the reload, names itself, and changes nothing.
    write(
        &plugins_d,
        "broken.toml",
        "[node]\nlisten = \"0.0.0.0:1\"\n",
    );
    let (status, body) = reload(&node).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("broken.toml") && message.contains("node"),
        "{message}"
    );
    assert!(served_intents(&node).await.contains(&json!(case("ok"))));

    // Removing files removes their plugins.
    std::fs::remove_file(plugins_d.join("broken.toml")).unwrap();
    std::fs::remove_file(plugins_d.join("tools.toml")).unwrap();
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], json!(["tools"]), "{body}");
    assert!(!served_intents(&node).await.contains(&json!(case("ok"))));
    assert_eq!(post_task(&node, &chat("c2")).await.0, 200);
    assert_eq!(version_of(&node).await, "2");
}

/// A plugin whose table moves from the main file to a plugin directory is
/// built again to the same settings: it is kept (not loaded anew), keeps
/// its counters, and stays kept on the reloads after.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_moved_to_a_plugin_directory_keeps_its_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let plugins_d = dir.path().join("plugins.d");
    std::fs::create_dir(&plugins_d).unwrap();
    let table = format!(
        "[[plugin]]\nid = \"echo\"\npath = \"{}\"\n",
        plugin("echo").display()
    );
    let head = "[node]\nplugin_dirs = [\"plugins.d\"]\n[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n";
    let config = write(dir.path(), "node.toml", &format!("{head}{table}"));
    let node = start(&config, &admin_env());
    assert_eq!(post_task(&node, &chat("c1")).await.0, 200);
    let served = || async {
        let (status, list) = operator(&node, reqwest::Method::GET, "/admin/plugins").await;
        assert_eq!(status, 200, "{list}");
        list["plugins"][0]["served"].as_u64().unwrap()
    };
    assert_eq!(served().await, 1);

    write(&plugins_d, "echo.toml", &table);
    write(dir.path(), "node.toml", head);
    for _ in 0..2 {
        let (status, body) = reload(&node).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["loaded"], json!([]), "{body}");
        assert_eq!(body["kept"], json!(["echo"]), "{body}");
    }
    assert_eq!(post_task(&node, &chat("c2")).await.0, 200);
    assert_eq!(served().await, 2, "the counters carried over");
}

/// Each plugin's id and intents, in the table's order, from the admin API.
async fn plugin_intents(node: &Node) -> Vec<(String, Value)> {
    let (status, list) = operator(node, reqwest::Method::GET, "/admin/plugins").await;
    assert_eq!(status, 200, "{list}");
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), p["intents"].clone()))
        .collect()
}

/// A reload patches the serving table with what changed: intents that
/// move between two changed plugins, a plugin removed while another
/// changes, a reload that changes nothing, and tables reordered.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_applies_moves_removals_and_reorders_to_the_serving_table() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y, z) = (case("x"), case("y"), case("z"));
    let table = |id: &str, intent: &str, declared: &str, timeout: u32| {
        format!(
            "[[plugin]]\nid = \"{id}\"\npath = \"{}\"\nintents = [\"{intent}\"]\ntimeout_ms = {timeout}\n[plugin.config]\nalso_declare = \"{declared}\"\n",
            plugin("echo").display()
        )
    };
    let both = format!("{x},{y}");
    let config = |tables: &[String]| {
        write(
            dir.path(),
            "node.toml",
            &format!(
                "[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n{}",
                tables.concat()
            ),
        )
    };
    let path = config(&[
        table("a", &x, &both, 1000),
        table("b", &y, &both, 1000),
        table("c", &z, &z, 1000),
    ]);
    let node = start(&path, &admin_env());

    // Two changed plugins trade intents: each takes the one the other gives up.
    config(&[
        table("a", &y, &both, 1000),
        table("b", &x, &both, 1000),
        table("c", &z, &z, 1000),
    ]);
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["loaded"], json!(["a", "b"]), "{body}");
    assert_eq!(body["kept"], json!(["c"]), "{body}");
    assert_eq!(
        plugin_intents(&node).await,
        [
            ("a".to_string(), json!([y])),
            ("b".to_string(), json!([x])),
            ("c".to_string(), json!([z]))
        ]
    );
    let (status, _, answer) = post_task(&node, &task("moved", &x, json!({"k": 1}))).await;
    assert_eq!(status, 200, "{answer}");

    // One plugin removed while another changes.
    config(&[table("b", &x, &both, 1000), table("c", &z, &z, 2000)]);
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["loaded"], &body["kept"], &body["removed"]),
        (&json!(["c"]), &json!(["b"]), &json!(["a"])),
        "{body}"
    );
    assert!(!served_intents(&node).await.contains(&json!(y)));
    assert_eq!(post_task(&node, &task("gone", &y, json!(1))).await.0, 404);

    // Nothing changed: everything kept, the intents as they were. Then
    // reordered: kept as they are, served in the new order.
    for (tables, kept, intents_changed) in [
        (None, json!(["b", "c"]), false),
        (
            Some([table("c", &z, &z, 2000), table("b", &x, &both, 1000)]),
            json!(["c", "b"]),
            true,
        ),
    ] {
        if let Some(tables) = tables {
            config(&tables);
        }
        let (status, body) = reload(&node).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["loaded"], &body["kept"], &body["intents_changed"]),
            (&json!([]), &kept, &json!(intents_changed)),
            "{body}"
        );
    }
    let order: Vec<String> = plugin_intents(&node)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(order, ["c", "b"]);
    assert_eq!(post_task(&node, &task("z", &z, json!(1))).await.0, 200);
}

/// Two tables without an id that name one serving plugin, while another
/// plugin is removed in the same reload: the second table is refused, and
/// the removed plugin's intent is no longer routed.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_named_twice_is_refused_and_a_removed_one_stops_serving() {
    let dir = tempfile::tempdir().unwrap();
    let echo = format!("[[plugin]]\npath = \"{}\"\n", plugin("echo").display());
    let gone = case("gone");
    let b = format!(
        "[[plugin]]\nid = \"b\"\npath = \"{}\"\nintents = [\"{gone}\"]\n[plugin.config]\nalso_declare = \"{gone}\"\n",
        plugin("echo").display()
    );
    let head = "[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n";
    let path = write(dir.path(), "node.toml", &format!("{head}{echo}{b}"));
    let node = start(&path, &admin_env());
    assert_eq!(post_task(&node, &task("b", &gone, json!(1))).await.0, 200);
    write(dir.path(), "node.toml", &format!("{head}{echo}{echo}"));
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], json!(["b"]), "{body}");
    assert_eq!(body["failed"][0]["plugin"], "echo", "{body}");
    assert_eq!(post_task(&node, &task("b2", &gone, json!(1))).await.0, 404);
    assert_eq!(post_task(&node, &chat("still")).await.0, 200);
}

/// A reload reports each changed `[node]` key it leaves to a restart by
/// name, a key without a flag (`lingering_close_max_bytes`) as any other,
/// and nothing for a file that did not change (the sized keys the node
/// runs with are not changes).
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_names_the_node_keys_that_need_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_plugin_config(dir.path(), "");
    let node = start(&config, &admin_env());
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restart_needed"], json!([]), "{body}");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "max_concurrent = 16\n",
        "max_concurrent = 16\nregion = \"eu-west\"\nlingering_close_max_bytes = 8192\n",
    );
    std::fs::write(&config, text).unwrap();
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], true, "{body}");
    assert_eq!(
        body["restart_needed"],
        json!(["node.lingering_close_max_bytes", "node.region"]),
        "{body}"
    );
    assert_eq!(post_task(&node, &chat("after")).await.0, 200);
}

/// A tenant who can write in a plugin directory floods it with changes
/// (thousands of files written between two reloads, more names than the
/// watch remembers): the next reload lists every file instead of trusting
/// the watch, so no edit is missed, and the one after is back to events.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_changes_in_a_plugin_directory_misses_no_edit() {
    let dir = tempfile::tempdir().unwrap();
    let plugins_d = dir.path().join("plugins.d");
    std::fs::create_dir(&plugins_d).unwrap();
    let svc = |version: u8| {
        format!(
            "[[plugin]]\nid = \"svc\"\npath = \"{}\"\n",
            plugin(&format!("versioned-v{version}")).display()
        )
    };
    write(&plugins_d, "svc.toml", &svc(1));
    let config = write(
        dir.path(),
        "node.toml",
        "[node]\nplugin_dirs = [\"plugins.d\"]\n[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n",
    );
    let node = start(&config, &admin_env());
    assert_eq!(version_of(&node).await, "1");
    // Which of the two a flood trips depends on the kernel's queue bound
    // (`fs.inotify.max_queued_events`).
    let listings = |text: &str| {
        ["too_many_changes", "overflow"]
            .iter()
            .map(|reason| {
                metric_value(
                    text,
                    &format!("iicp_plugin_dir_full_listings_total{{reason=\"{reason}\"}}"),
                )
            })
            .sum::<f64>()
    };
    // Events only: an edit is seen without listing the directory.
    write(&plugins_d, "svc.toml", &svc(2));
    let (status, body) = reload(&node).await;
    assert_eq!((status, &body["loaded"]), (200, &json!(["svc"])), "{body}");
    assert_eq!(version_of(&node).await, "2");
    let before = metrics(&node).await;
    assert!(
        metric_value(&before, "iicp_plugin_dir_events_total") >= 1.0,
        "{before}"
    );

    for i in 0..=iicp_host::config::dir_watch::MAX_CHANGED_NAMES {
        write(&plugins_d, &format!("junk-{i}.txt"), "x");
    }
    write(&plugins_d, "svc.toml", &svc(1));
    let (status, body) = reload(&node).await;
    assert_eq!((status, &body["loaded"]), (200, &json!(["svc"])), "{body}");
    assert_eq!(version_of(&node).await, "1");
    let after = metrics(&node).await;
    assert_eq!(listings(&after), listings(&before) + 1.0, "{after}");

    write(&plugins_d, "svc.toml", &svc(2));
    let (status, body) = reload(&node).await;
    assert_eq!((status, &body["loaded"]), (200, &json!(["svc"])), "{body}");
    assert_eq!(version_of(&node).await, "2");
    let last = metrics(&node).await;
    assert_eq!(listings(&last), listings(&after), "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_reload_keeps_the_old_version_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = versioned_config(dir.path(), 1, 8);
    let node = start(&config, &admin_env());
    let core_module = write(dir.path(), "core.wasm", "\0asm\u{1}\0\0\0");
    svc_config(dir.path(), &core_module, 8);
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["failed"][0]["plugin"], "svc", "{body}");
    assert_eq!(body["failed"][0]["kept_previous"], true, "{body}");
    assert!(
        body["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module"),
        "{body}"
    );
    assert_eq!(version_of(&node).await, "1");
    let (_, list) = operator(&node, reqwest::Method::GET, "/admin/plugins").await;
    assert_eq!(list["last_reload"]["ok"], false);
    assert!(
        metrics(&node)
            .await
            .contains(r#"iicp_reloads_total{result="partial"} 1"#)
    );
    assert!(
        node.log_entries()
            .iter()
            .any(|e| message(e) == "a plugin failed to reload; the others are applied")
    );
    // A configuration that does not parse fails the whole reload.
    write(dir.path(), "versioned.toml", "[[plugin]\n");
    let (status, body) = reload(&node).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "reload_failed");
    assert_eq!(version_of(&node).await, "1");
    assert!(
        metrics(&node)
            .await
            .contains(r#"iicp_reloads_total{result="error"} 1"#)
    );
    assert!(
        node.log_entries()
            .iter()
            .any(|e| message(e) == "reload failed; the previous plugins keep serving")
    );

    // SIGHUP reloads too.
    versioned_config(dir.path(), 2, 8);
    let status = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut swapped = false;
    for _ in 0..100 {
        if version_of(&node).await == "2" {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped, "SIGHUP did not reload");
    // Only the version now served is exported, the replaced one is gone.
    let text = metrics(&node).await;
    let info: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("iicp_plugin_info{"))
        .collect();
    let (_, list) = operator(&node, reqwest::Method::GET, "/admin/plugins").await;
    let served_sha = list["plugins"][0]["sha256"].as_str().unwrap();
    assert_eq!(info.len(), 1, "{info:?}");
    assert!(info[0].contains(served_sha), "{info:?} vs {served_sha}");
}

/// Tenants share a node. One tenant's plugin is replaced by a file that no
/// longer loads (a moved tag, a bad build) and gets new settings with it,
/// another adds a plugin that fails, a third one that claims an intent
/// already served, and a fourth adds a good plugin: the good one is served,
/// each failure keeps its previous version whole (code and settings) or is
/// absent, and the answer names every failure.
#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_broken_plugin_does_not_hold_back_the_others_reload() {
    let dir = tempfile::tempdir().unwrap();
    let table = |id: &str, path: &Path, extra: &str| {
        format!(
            "[[plugin]]\nid = {id:?}\npath = {:?}\n{extra}\n",
            path.display().to_string()
        )
    };
    let head = "[node]\nmax_concurrent = 8\n[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n";
    let before = format!(
        "{head}{}{}",
        table("svc", &plugin("versioned-v1"), "max_concurrent = 4"),
        table("echo", &plugin("echo"), "")
    );
    let config = write(dir.path(), "tenants.toml", &before);
    let node = start(&config, &admin_env());
    assert_eq!(version_of(&node).await, "1");

    let broken = write(dir.path(), "broken.wasm", "\0asm\u{1}\0\0\0");
    let after = format!(
        "{head}{}{}{}{}{}",
        table("svc", &broken, "max_concurrent = 2"),
        table("tools", &plugin("misbehave"), ""),
        table("echo-twin", &plugin("echo"), ""),
        table("echo", &plugin("echo"), ""),
        table("ghost", &broken, "")
    );
    write(dir.path(), "tenants.toml", &after);
    let (status, body) = reload(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["loaded"], json!(["tools"]), "{body}");
    assert_eq!(body["kept"], json!(["echo"]), "{body}");
    let failed: Vec<(String, bool, String)> = body["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["plugin"].as_str().unwrap().to_string(),
                f["kept_previous"].as_bool().unwrap(),
                f["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let failure = |id: &str| {
        failed
            .iter()
            .find(|(plugin, _, _)| plugin == id)
            .unwrap_or_else(|| panic!("{id} not reported: {body}"))
    };
    assert!(failure("svc").1 && failure("svc").2.contains("core WebAssembly module"));
    assert!(!failure("ghost").1 && failure("ghost").2.contains("core WebAssembly module"));
    assert!(!failure("echo-twin").1 && failure("echo-twin").2.contains("both serve intent"));
    assert_eq!(failed.len(), 3, "{body}");

    // Served: the new plugin, the kept one, and svc's previous version with
    // its previous settings; not the failed new ones.
    assert_eq!(version_of(&node).await, "1");
    assert_eq!(post_task(&node, &chat("c")).await.0, 200);
    let (status, _, _) = post_task(&node, &task("t", &case("ok"), json!(1))).await;
    assert_eq!(status, 200);
    let (_, list) = operator(&node, reqwest::Method::GET, "/admin/plugins").await;
    let ids: Vec<&str> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    // In configuration order; a new plugin colliding with one that serves
    // unchanged is the one left out, wherever it is listed.
    assert_eq!(ids, ["svc", "tools", "echo"], "{list}");
    assert_eq!(list["plugins"][0]["limits"]["max_concurrent"], 4, "{list}");
    assert_eq!(list["last_reload"]["failed"].as_array().unwrap().len(), 3);
    assert!(
        metrics(&node)
            .await
            .contains(r#"iicp_reloads_total{result="partial"} 1"#)
    );

    // Fixed: the next reload applies everything.
    std::fs::copy(plugin("versioned-v2"), &broken).unwrap();
    let fixed = format!(
        "{head}{}{}{}",
        table("svc", &broken, "max_concurrent = 2"),
        table("echo", &plugin("echo"), ""),
        table("tools", &plugin("misbehave"), "")
    );
    write(dir.path(), "tenants.toml", &fixed);
    let (status, body) = reload(&node).await;
    assert_eq!((status, &body["ok"]), (200, &json!(true)), "{body}");
    assert_eq!(body["loaded"], json!(["svc"]), "{body}");
    assert_eq!(version_of(&node).await, "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_changes_intents_registers_again() {
    let fake = FakeDirectory::start().await;
    let dir = tempfile::tempdir().unwrap();
    let echo_only = format!(
        "[directory]\nurl = \"{}\"\n[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n[[plugin]]\nid = \"echo\"\npath = \"{}\"\n",
        fake.url(),
        plugin("echo").display()
    );
    let config = write(dir.path(), "dir.toml", &echo_only);
    let node = start(&config, &admin_env());
    assert!(
        fake.wait_for(Duration::from_secs(15), |s| s.registrations >= 1)
            .await
    );
    let both = format!(
        "{echo_only}[[plugin]]\nid = \"tools\"\npath = \"{}\"\n",
        plugin("misbehave").display()
    );
    write(dir.path(), "dir.toml", &both);
    let (status, report) = reload(&node).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["intents_changed"], true);
    assert!(
        fake.wait_for(Duration::from_secs(15), |s| s.registrations >= 2)
            .await,
        "no re-registration"
    );
    let second = &fake.requests("/v1/register")[1].body;
    let intents: Vec<&str> = second["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["intent"].as_str().unwrap())
        .collect();
    assert!(
        intents.contains(&CHAT) && intents.contains(&case("loop").as_str()),
        "{intents:?}"
    );
    assert!(second["current_node_token"].is_string());
}

/// Runs the binary with `config` and returns its single error line.
fn refused(config: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--no-cache", "--state-dir"])
        .arg(common::fresh_state_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

#[test]
fn configuration_errors_name_the_file_the_field_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let echo = plugin("echo").display().to_string();
    // (file name, contents, every fragment the one error line must carry)
    let cases: [(&str, String, &[&str]); 7] = [
        (
            "unknown.toml",
            format!("[[plugin]]\npth = \"{echo}\"\n"),
            &["unknown.toml", "unknown field `pth`"],
        ),
        (
            "twice.toml",
            format!(
                "[[plugin]]\nid = \"a\"\npath = \"{echo}\"\n[[plugin]]\nid = \"b\"\npath = \"{echo}\"\n"
            ),
            &[
                "twice.toml",
                r#"plugins "a" and "b" both serve intent urn:iicp:intent:llm:chat:v1"#,
            ],
        ),
        (
            "missing.toml",
            "[[plugin]]\nid = \"m\"\npath = \"nowhere/echo.wasm\"\n".to_string(),
            &["missing.toml", "plugin file not found", "nowhere/echo.wasm"],
        ),
        (
            "range.toml",
            format!("[[plugin]]\nid = \"r\"\npath = \"{echo}\"\nmemory_mb = 5000\n"),
            &[
                "range.toml",
                r#"plugin "r": memory_mb must be between 1 and 4096, got 5000"#,
            ],
        ),
        (
            "undeclared.toml",
            format!(
                "[[plugin]]\nid = \"u\"\npath = \"{echo}\"\nintents = [\"urn:iicp:intent:util:echo:v1\", \"urn:iicp:intent:nope:v1\"]\n"
            ),
            &[
                "undeclared.toml",
                r#"plugin "u": intents: urn:iicp:intent:nope:v1 is not declared by the plugin (it declares urn:iicp:intent:llm:chat:v1, urn:iicp:intent:util:echo:v1)"#,
            ],
        ),
        (
            "secret.toml",
            format!(
                "[[plugin]]\nid = \"s\"\npath = \"{echo}\"\n[plugin.secrets]\nkey = \"IICP_TEST_NOT_SET_ANYWHERE\"\n"
            ),
            &[
                r#"plugin "s": secrets.key: environment variable IICP_TEST_NOT_SET_ANYWHERE is not set"#,
            ],
        ),
        (
            "nodir.toml",
            "[node]\nplugin_dirs = [\"absent.d\"]\n".to_string(),
            &["nodir.toml", "node.plugin_dirs", "absent.d", "No such file"],
        ),
    ];
    for (name, contents, fragments) in cases {
        let line = refused(&write(dir.path(), name, &contents));
        for fragment in fragments {
            assert!(
                line.contains(fragment),
                "{name}: {fragment:?} missing from {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_configuration_starts_and_registers() {
    let fake = FakeDirectory::start().await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("iicp-host.example.toml");
    plugin("echo");
    let env = [
        ("IICP_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TOOLS_API_KEY", "tools-key"),
        ("ACME_TOKEN", "acme"),
        ("GLOBEX_TOKEN", "globex"),
    ];
    let node = Node::start_config_env(
        &example,
        &["--admin-listen", "127.0.0.1:0", "--directory", &fake.url()],
        &env,
    );
    assert_eq!(post_task(&node, &chat("example")).await.0, 200);
    let mut tools = task("t", &case("ok"), json!(1));
    assert_eq!(post_task(&node, &tools).await.0, 401);
    tools["auth"] = json!({"node_token": "acme"});
    assert_eq!(post_task(&node, &tools).await.0, 200);
    assert!(
        fake.wait_for(Duration::from_secs(15), |s| s.registrations >= 1)
            .await
    );
    let register = &fake.requests("/v1/register")[0].body;
    assert_eq!(register["region"], "eu-central");
    // The example leaves max_concurrent to the sizing: the node advertises
    // what it chose for this machine's memory.
    let chosen = sample(
        &metrics(&node).await,
        r#"iicp_memory_setting{setting="max_concurrent"}"#,
    );
    assert!(chosen >= 1.0);
    assert_eq!(register["limits"]["max_concurrent"], chosen as u64);
    assert_eq!(register["policy"]["max_concurrent_remote"], 2);
    assert_eq!(register["transport_method"], "direct");
    let (status, list) = operator(&node, reqwest::Method::GET, "/admin/plugins").await;
    assert_eq!(status, 200);
    assert_eq!(list["plugins"][1]["tenants"], json!(["acme", "globex"]));
}
