//! `reach/netns-demo` end to end: many nodes, each in its own network
//! namespace — a relay, three direct nodes (one registering its IPv6
//! endpoint), two workers behind a NAT that lets nothing in — discovered
//! through a directory stand-in and loaded by a consumer. Every node serves
//! tasks, workers only through the relay (a direct connection to them
//! fails), and the workers bind again after the relay is killed and
//! restarted. The script runs with this build's node and the echo plugin;
//! the load generator and the reference worker are `bench/`'s (make test
//! builds them). An interrupted run leaves no namespace and no process
//! behind, and neither does a failing test
//! (a guard removes whatever carries the test's tag).
//!
//! Needs root and iproute2, nftables, python3, curl (`.ci/debian-packages`);
//! a missing one fails the test with a line naming it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bounds the whole demo run here (the script bounds itself too).
const RUN_LIMIT: Duration = Duration::from_secs(900);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fails with one line naming what is missing.
fn require_tools() {
    let uid = Command::new("id").arg("-u").output().expect("id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the namespace demo needs root (it creates network namespaces)"
    );
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("python3", "python3"),
        ("curl", "curl"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is needed: apt-get install {package} (see .ci/debian-packages)"
        );
    }
}

/// Builds `bench/`'s package `package` and returns its binary `name`.
fn bench_binary(name: &str) -> PathBuf {
    let path = root().join("bench/target/debug").join(name);
    assert!(
        path.exists(),
        "bench/'s {name} is not built ({}): run `cargo build --manifest-path bench/Cargo.toml \
         -p native-node -p bench-harness` (make test and .ci/run do)",
        path.display()
    );
    path
}

/// `bench/`'s load generator (make test builds it).
fn load_generator() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| bench_binary("iicp-bench"))
}

/// The reference node (`bench/native-node`, make test builds it).
fn reference_node() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| bench_binary("native-node"))
}

/// Namespaces whose names start with `tag-`.
fn namespaces(tag: &str) -> Vec<String> {
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&format!("{tag}-")))
        .map(str::to_string)
        .collect()
}

/// Processes the run started (each carries `IICP_NETNS_DEMO_RUN=<tag>`).
fn processes(tag: &str) -> Vec<u32> {
    let marker = format!("IICP_NETNS_DEMO_RUN={tag}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|entry| entry == marker.as_bytes())
            })
        })
        .collect()
}

/// One run of the script, tagged; whatever carries the tag is removed when
/// it is dropped, so a failing assertion leaves nothing behind either.
struct Demo {
    tag: String,
    child: Child,
    output: PathBuf,
    /// Where it writes its results file.
    results: PathBuf,
}

impl Demo {
    fn start(tag: &str, args: &[&str]) -> Demo {
        let output = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("netns-demo-{tag}.out"));
        let log = std::fs::File::create(&output).unwrap();
        let results = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("netns-results-{tag}"));
        let _ = std::fs::remove_dir_all(&results);
        std::fs::create_dir_all(&results).unwrap();
        let child = Command::new(root().join("reach/netns-demo"))
            .args(args)
            .arg("--host")
            .arg(env!("CARGO_BIN_EXE_iicp-host"))
            .arg("--plugin")
            .arg(common::plugin("echo"))
            .arg("--load")
            .arg(load_generator())
            .arg("--reference")
            .arg(reference_node())
            .args(["--tag", tag])
            .arg("--results-dir")
            .arg(&results)
            .env("IICP_HOST_CACHE_DIR", common::shared_cache_dir())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start reach/netns-demo");
        Demo {
            tag: tag.to_string(),
            child,
            output,
            results,
        }
    }

    /// The figures of its one results file, which names its commit.
    fn figures(&self) -> serde_json::Map<String, serde_json::Value> {
        let files: Vec<PathBuf> = std::fs::read_dir(&self.results)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "one results file: {files:?}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
        assert!(
            json["run"]["commit"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        );
        json["figures"].as_object().cloned().unwrap_or_default()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits for the script to end (within `limit`); its success and output.
    fn wait(&mut self, limit: Duration) -> (bool, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.success(), self.output());
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not end within {limit:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in processes(&self.tag) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        for name in namespaces(&self.tag) {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        let _ = std::fs::remove_file(&self.output);
    }
}

/// A tag no other run on this machine uses now.
fn tag(letter: char) -> String {
    format!("{letter}{}", std::process::id() % 10_000_000)
        .chars()
        .take(8)
        .collect()
}

/// The number on the line `<node>: N tasks`.
fn tasks_of(output: &str, node: &str) -> u64 {
    output
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{node}: ")))
        .and_then(|rest| rest.strip_suffix(" tasks"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no task count for {node}:\n{output}"))
}

#[test]
fn many_nodes_serve_in_namespaces_and_natted_workers_only_through_the_relay() {
    require_tools();
    let tag = tag('d');
    let mut demo = Demo::start(
        &tag,
        &[
            "--direct",
            "3",
            "--workers",
            "2",
            "--seconds",
            "1",
            "--concurrency",
            "2",
        ],
    );
    let (ok, output) = demo.wait(RUN_LIMIT);
    assert!(ok, "the demo failed:\n{output}");
    assert!(output.ends_with("netns-demo: ok\n"), "{output}");
    let figures = demo.figures();
    let figure = |key: &str| {
        figures
            .get(&format!("netns/{key}"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("no figure netns/{key} in {figures:?}"))
    };
    for node in [
        "relay", "direct-1", "direct-2", "direct-3", "worker-1", "worker-2",
    ] {
        let tasks = tasks_of(&output, node);
        assert!(tasks > 0, "{node} served nothing:\n{output}");
        // The results file holds what the run printed.
        assert_eq!(figure(&format!("{node}/tasks_counted")), tasks as f64);
        assert!(figure(&format!("{node}/req_per_s")) > 0.0);
    }
    for key in ["overhead/c2/worker-1/p99_ms", "restart/worker-2/rebind_ms"] {
        assert!(figure(key) > 0.0, "{key}");
    }
    for worker in ["worker-1", "worker-2"] {
        assert!(
            output.contains(&format!(
                "{worker} (192.168.77.1{}): direct connections from the consumer and the NAT router fail; through the relay: ok",
                &worker[7..]
            )),
            "{output}"
        );
        assert!(
            output
                .lines()
                .any(|line| line.starts_with(&format!("{worker}: bound again "))),
            "{worker} did not bind again:\n{output}"
        );
    }
    assert!(
        output.contains("http://[fd77::11]:8080"),
        "direct-1 listed by IPv6:\n{output}"
    );
    assert!(
        output.contains("ref-worker (192.168.77.50, the reference's worker, native framing): direct connections fail; through the relay: ok"),
        "{output}"
    );
    assert!(
        output.contains("ref-worker through the relay (native framing): ")
            && output
                .lines()
                .any(|l| l.starts_with("ref-worker: bound again ")),
        "the reference worker did not serve and bind again:\n{output}"
    );
    for point in ["c=1   p50:", "c=1   p99:", "c=2   p50:", "c=2   p99:"] {
        assert!(
            output.contains(point),
            "no overhead figure {point}\n{output}"
        );
    }
    assert_eq!(namespaces(&tag), Vec::<String>::new(), "namespaces left");
    assert_eq!(processes(&tag), Vec::<u32>::new(), "processes left");
}

#[test]
fn an_interrupted_demo_leaves_no_namespace_and_no_process() {
    require_tools();
    let tag = tag('i');
    let mut demo = Demo::start(&tag, &["--seconds", "60"]);
    // Interrupted once its nodes run in their namespaces.
    let deadline = Instant::now() + RUN_LIMIT;
    while !demo.output().contains("== starting") || processes(&tag).len() < 2 {
        assert!(
            demo.child.try_wait().unwrap().is_none(),
            "the demo ended early:\n{}",
            demo.output()
        );
        assert!(
            Instant::now() < deadline,
            "no node started:\n{}",
            demo.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!namespaces(&tag).is_empty());
    demo.terminate();
    let (ok, output) = demo.wait(Duration::from_secs(120));
    assert!(!ok, "an interrupted run reports failure:\n{output}");
    assert_eq!(
        namespaces(&tag),
        Vec::<String>::new(),
        "namespaces left:\n{output}"
    );
    assert_eq!(
        processes(&tag),
        Vec::<u32>::new(),
        "processes left:\n{output}"
    );
}
