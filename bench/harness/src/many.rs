//! Many plugins per node, the multi-tenant case: one configuration with N
//! `[[plugin]]` tables on the same artifact (distinct ids and intents; the
//! first keeps the plugin's own intents and answers the chat task). For
//! each artifact and N: time from process start to the first served task,
//! resident memory once serving, and the time to reload one changed plugin
//! through the admin API (median of three; each reload changes the last
//! plugin's timeout, so exactly one plugin is loaded anew).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{self, Server, ServerKind};

/// The token the benchmark's admin API is opened with (loopback only).
const TOKEN: (&str, &str) = ("IICP_BENCH_ADMIN_TOKEN", "bench-admin-token");

/// One artifact at one N.
#[derive(Debug, Clone)]
pub struct ManyRow {
    pub artifact: String,
    pub plugins: usize,
    pub startup: Duration,
    pub rss_kib: u64,
    pub reload: Duration,
    /// The node's own figure for preparing the reload (reading the
    /// configuration, checking kept plugins, loading the changed one).
    pub reload_prepare_ms: f64,
}

fn config_text(plugin: &Path, plugins: usize, changed_timeout_ms: u32) -> String {
    let mut text = format!(
        "[node]\nmax_concurrent = 64\n\n[admin]\ntoken_env = \"{}\"\n",
        TOKEN.0
    );
    for i in 0..plugins {
        text.push_str(&format!(
            "\n[[plugin]]\nid = \"p{i}\"\npath = \"{}\"\n",
            plugin.display()
        ));
        if i + 1 == plugins && plugins > 1 {
            text.push_str(&format!("timeout_ms = {changed_timeout_ms}\n"));
        }
        if i > 0 {
            // The echo plugins declare what `also_declare` names: a node
            // refuses to route an intent its plugin does not declare.
            let intent = format!("urn:iicp:intent:bench:p{i}:v1");
            text.push_str(&format!(
                "intents = [\"{intent}\"]\n[plugin.config]\nalso_declare = \"{intent}\"\n"
            ));
        }
    }
    text
}

/// `POST /admin/reload`; the wall time and the node's `prepare_ms`.
async fn reload(admin: SocketAddr) -> Option<(Duration, f64)> {
    let request = format!(
        "POST /admin/reload HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        TOKEN.1
    );
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    if !text.starts_with("HTTP/1.1 200") {
        eprintln!(
            "reload refused: {}",
            text.lines().last().unwrap_or_default()
        );
        return None;
    }
    let prepare_ms = text
        .split("\"prepare_ms\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next()?.parse().ok());
    if prepare_ms.is_none() {
        eprintln!(
            "reload answer without prepare_ms: {}",
            text.lines().last().unwrap_or_default()
        );
    }
    Some((took, prepare_ms?))
}

/// Measures `plugin` served under `plugins` tables.
pub async fn measure(
    host: &Path,
    plugin: &Path,
    name: &str,
    cache_dir: &Path,
    plugins: usize,
) -> Option<ManyRow> {
    // A configuration's paths are relative to its own directory, not to
    // where bench/run was started.
    let plugin = &std::path::absolute(plugin).ok()?;
    let dir = process::fresh_dir(&format!("many-{name}-{plugins}"));
    let config: PathBuf = dir.join("node.toml");
    std::fs::write(&config, config_text(plugin, plugins, 10_000)).ok()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", process::free_port()).parse().ok()?;
    let kind = ServerKind::HostConfig {
        binary: host.to_path_buf(),
        config: config.clone(),
        cache_dir: cache_dir.to_path_buf(),
        admin,
        token: (TOKEN.0.to_string(), TOKEN.1.to_string()),
    };
    let started = Instant::now();
    let server = Server::spawn(&kind, 64);
    let Some(startup) = server
        .wait_first_success(started, Duration::from_secs(600))
        .await
    else {
        eprintln!(
            "many plugins: {name} N={plugins}: the node did not serve: {}",
            server.stderr_tail(3)
        );
        return None;
    };
    let rss_kib = process::rss_kib(server.pid());
    let mut reloads = Vec::new();
    for (round, timeout_ms) in [11_000, 12_000, 13_000].into_iter().enumerate() {
        std::fs::write(&config, config_text(plugin, plugins, timeout_ms)).ok()?;
        match reload(admin).await {
            Some(figures) => reloads.push(figures),
            None if round == 0 => return None,
            None => {}
        }
    }
    drop(server);
    process::remove_dir(&dir);
    reloads.sort_by_key(|a| a.0);
    let (reload, reload_prepare_ms) = reloads.get(reloads.len() / 2).copied()?;
    Some(ManyRow {
        artifact: name.to_string(),
        plugins,
        startup,
        rss_kib,
        reload,
        reload_prepare_ms,
    })
}
