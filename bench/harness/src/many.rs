//! Many plugins per node, the multi-tenant case: N `[[plugin]]` tables on
//! the same artifact (distinct ids and intents; the first keeps the
//! plugin's own intents and answers the chat task). For each artifact and
//! N: time from process start to the first served task, resident memory
//! once serving, and the time to reload one changed plugin through the
//! admin API (median of seven after one unmeasured; each reload changes
//! the last plugin's timeout, so exactly one plugin is loaded anew) in both
//! layouts an operator can use: every table in one file, of which a reload
//! parses only the tables whose text changed, and one file per plugin in a
//! `node.plugin_dirs` directory, of which a reload reads only the files
//! the directory's watch names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{self, Server, ServerKind};

/// The token the benchmark's admin API is opened with (loopback only).
const TOKEN: (&str, &str) = ("IICP_BENCH_ADMIN_TOKEN", "bench-admin-token");
/// The node trusts a plugin-directory file's stamp only once the file is
/// this much older than its last read (`config::file_cache::RACY_WINDOW`,
/// plus a margin); until then every reload parses it again.
const SETTLE: Duration = Duration::from_millis(2_100);

/// One reload's wall time and the node's own `prepare_ms` for it.
#[derive(Debug, Clone, Copy)]
pub struct ReloadFigure {
    pub wall: Duration,
    /// Reading the configuration, checking kept plugins, loading the
    /// changed one.
    pub prepare_ms: f64,
}

/// One artifact at one N.
#[derive(Debug, Clone)]
pub struct ManyRow {
    pub artifact: String,
    pub plugins: usize,
    pub startup: Duration,
    pub rss_kib: u64,
    /// Every table in the main file.
    pub one_file: ReloadFigure,
    /// One file per plugin in a plugin directory.
    pub plugin_dir: ReloadFigure,
}

/// How the N tables are laid out on disk.
#[derive(Clone, Copy)]
enum Layout {
    OneFile,
    PluginDir,
}

const PLUGIN_DIR: &str = "plugins.d";

fn main_text(layout: Layout) -> String {
    let dirs = match layout {
        Layout::OneFile => String::new(),
        Layout::PluginDir => format!("plugin_dirs = [\"{PLUGIN_DIR}\"]\n"),
    };
    format!(
        "[node]\nmax_concurrent = 64\n{dirs}\n[admin]\ntoken_env = \"{}\"\n",
        TOKEN.0
    )
}

fn plugin_table(plugin: &Path, index: usize, plugins: usize, changed_timeout_ms: u32) -> String {
    let mut text = format!(
        "\n[[plugin]]\nid = \"p{index}\"\npath = \"{}\"\n",
        plugin.display()
    );
    if index + 1 == plugins && plugins > 1 {
        text.push_str(&format!("timeout_ms = {changed_timeout_ms}\n"));
    }
    if index > 0 {
        // The echo plugins declare what `also_declare` names: a node
        // refuses to route an intent its plugin does not declare.
        let intent = format!("urn:iicp:intent:bench:p{index}:v1");
        text.push_str(&format!(
            "intents = [\"{intent}\"]\n[plugin.config]\nalso_declare = \"{intent}\"\n"
        ));
    }
    text
}

fn plugin_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(PLUGIN_DIR).join(format!("p{index:05}.toml"))
}

/// Writes the configuration in `layout`; with `only_last`, rewrites just
/// the last plugin's file (the plugin-directory layout's edit of one
/// plugin).
fn write_config(
    dir: &Path,
    layout: Layout,
    plugin: &Path,
    plugins: usize,
    changed_timeout_ms: u32,
    only_last: bool,
) -> std::io::Result<()> {
    let table = |i| plugin_table(plugin, i, plugins, changed_timeout_ms);
    match layout {
        Layout::OneFile => {
            let tables: String = (0..plugins).map(table).collect();
            std::fs::write(dir.join("node.toml"), main_text(layout) + &tables)
        }
        Layout::PluginDir => {
            if !only_last {
                std::fs::create_dir_all(dir.join(PLUGIN_DIR))?;
                std::fs::write(dir.join("node.toml"), main_text(layout))?;
            }
            let first = if only_last { plugins - 1 } else { 0 };
            (first..plugins).try_for_each(|i| std::fs::write(plugin_file(dir, i), table(i)))
        }
    }
}

/// `POST /admin/reload`; the wall time and the node's `prepare_ms`.
async fn reload(admin: SocketAddr) -> Option<ReloadFigure> {
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
    Some(ReloadFigure {
        wall: took,
        prepare_ms: prepare_ms?,
    })
}

/// Reloads measured per layout (after one unmeasured): a reload of 1,000
/// plugins varies by half between runs on a busy machine.
const RELOADS: u32 = 7;

/// [`RELOADS`] reloads, each after `edit` changed the last plugin's timeout
/// to the next value from `first_timeout_ms` on; the median.
async fn median_reload(
    admin: SocketAddr,
    first_timeout_ms: u32,
    edit: impl Fn(u32) -> std::io::Result<()>,
) -> Option<ReloadFigure> {
    edit(first_timeout_ms).ok()?;
    reload(admin).await?;
    let mut reloads = Vec::new();
    for round in 1..=RELOADS {
        edit(first_timeout_ms + round * 1_000).ok()?;
        match reload(admin).await {
            Some(figure) => reloads.push(figure),
            None if round == 1 => return None,
            None => {}
        }
    }
    reloads.sort_by_key(|figure| figure.wall);
    reloads.get(reloads.len() / 2).copied()
}

/// Measures `plugin` served under `plugins` tables: started with one file
/// per plugin, reloaded in that layout, then switched to one file (a
/// reload that keeps every plugin) and reloaded in that layout.
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
    write_config(&dir, Layout::PluginDir, plugin, plugins, 10_000, false).ok()?;
    let written = Instant::now();
    let admin: SocketAddr = format!("127.0.0.1:{}", process::free_port()).parse().ok()?;
    let kind = ServerKind::HostConfig {
        binary: host.to_path_buf(),
        config,
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
    // Measure the steady state an operator sees, not the first seconds
    // after writing every file (when each reload parses all of them).
    tokio::time::sleep(SETTLE.saturating_sub(written.elapsed())).await;
    let plugin_dir = median_reload(admin, 11_000, |timeout| {
        write_config(&dir, Layout::PluginDir, plugin, plugins, timeout, true)
    })
    .await?;
    let one_file = median_reload(admin, 21_000, |timeout| {
        write_config(&dir, Layout::OneFile, plugin, plugins, timeout, false)
    })
    .await?;
    drop(server);
    process::remove_dir(&dir);
    Some(ManyRow {
        artifact: name.to_string(),
        plugins,
        startup,
        rss_kib,
        one_file,
        plugin_dir,
    })
}

/// `iicp-bench many`: this case alone, for working on reload or memory per
/// plugin without a full run. Each round measures every N once, so the
/// ratios printed come from nodes measured back to back.
pub async fn run(mut args: impl Iterator<Item = String>) {
    let (mut host, mut plugin, mut cache_dir) = (PathBuf::new(), PathBuf::new(), None);
    let (mut counts, mut rounds) = (vec![10, 1000], 1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| crate::usage_error(&format!("{arg} needs a value")));
        let numbers = || -> Vec<usize> {
            value
                .split(',')
                .map(|n| {
                    n.parse()
                        .unwrap_or_else(|_| crate::usage_error(&format!("{arg}: {n}?")))
                })
                .collect()
        };
        match arg.as_str() {
            "--host" => host = value.clone().into(),
            "--plugin" => plugin = value.clone().into(),
            "--cache-dir" => cache_dir = Some(PathBuf::from(&value)),
            "--plugins" => counts = numbers(),
            "--rounds" => rounds = numbers().first().copied().unwrap_or(1),
            _ => crate::usage_error(&format!("unknown option {arg}")),
        }
    }
    if crate::any_missing(&[&host, &plugin]) {
        crate::usage_error("many needs --host and --plugin");
    }
    let fresh_cache = process::fresh_dir("many-cache");
    let cache = cache_dir.unwrap_or_else(|| fresh_cache.clone());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for round in 1..=rounds {
        let mut rows = Vec::new();
        for &n in &counts {
            let Some(row) = measure(&host, &plugin, "echo", &cache, n).await else {
                println!("round {round} N={n}: did not serve or reload");
                continue;
            };
            println!(
                "round {round} N={n}: plugin dir {:.2} ms (prepare {:.2}), one file {:.2} ms (prepare {:.2})",
                ms(row.plugin_dir.wall),
                row.plugin_dir.prepare_ms,
                ms(row.one_file.wall),
                row.one_file.prepare_ms
            );
            rows.push(row);
        }
        if let [first, .., last] = &rows[..] {
            println!(
                "round {round} ratio N={}/N={}: plugin dir {:.2}, one file {:.2}",
                last.plugins,
                first.plugins,
                ms(last.plugin_dir.wall) / ms(first.plugin_dir.wall),
                ms(last.one_file.wall) / ms(first.one_file.wall)
            );
        }
    }
    process::remove_dir(&fresh_cache);
}
