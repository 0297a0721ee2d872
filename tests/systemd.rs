//! systemd integration: the node speaks sd_notify to a socket this test
//! owns (READY once it serves, STATUS with its load, WATCHDOG pings, then
//! STOPPING on drain), and the shipped unit passes `systemd-analyze
//! verify`, and a node under its `MemoryMax=` sizes its defaults to fit it.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, plugin};

/// Receives datagrams until one satisfies `accept`; returns it.
fn wait_for(socket: &UnixDatagram, timeout: Duration, accept: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no matching notification within {timeout:?}"
        );
        socket.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).to_string();
            if accept(&message) {
                return message;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_notifies_readiness_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_iicp-host"));
    command
        .args(["run", "--plugin"])
        .arg(plugin("echo"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--cache-dir",
        ])
        .arg(common::shared_cache_dir())
        .arg("--state-dir")
        .arg(common::fresh_state_dir())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let mut node = Node::spawn_command(&mut command, "info");

    let ready = wait_for(&socket, Duration::from_secs(30), |m| m.contains("READY=1"));
    assert!(
        ready.contains("STATUS=serving 1 plugin(s), 2 intent(s); 0 of 32 slots busy"),
        "{ready}"
    );
    // Ready means serving: the listener answers.
    assert_eq!(common::health(&node).await["status"], "ok");

    // Pings at half the watchdog interval, each with a fresh status.
    for _ in 0..2 {
        let ping = wait_for(&socket, Duration::from_secs(30), |m| {
            m.contains("WATCHDOG=1")
        });
        assert!(ping.contains("STATUS=serving"), "{ping}");
    }

    node.terminate();
    let stopping = wait_for(&socket, Duration::from_secs(30), |m| {
        m.contains("STOPPING=1")
    });
    assert!(
        stopping.contains("STATUS=draining 0 in-flight task(s)"),
        "{stopping}"
    );
    assert!(
        node.wait_exit(Duration::from_secs(30))
            .expect("exited")
            .success()
    );
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_node_serves() {
    // The same binary outside systemd: no variable, no notification, no error.
    let node = Node::start(&plugin("echo"), &[]);
    assert!(
        !node.log_text().contains("cannot notify systemd"),
        "{}",
        node.log_text()
    );
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "verifying deploy/iicp-host.service needs systemd-analyze: apt-get install systemd"
    );
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/iicp-host.service"),
    )
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/iicp-host run "));
    // Verify it as installed, with the binary where the unit expects it.
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("iicp-host.service");
    std::fs::write(
        &installed,
        unit.replace("/usr/local/bin/iicp-host", env!("CARGO_BIN_EXE_iicp-host")),
    )
    .unwrap();
    let output = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&installed)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Unknown keys are only warnings (exit 0) that name the file.
    assert!(
        output.status.success() && !stderr.contains("iicp-host.service:"),
        "systemd-analyze verify found problems:\n{stderr}"
    );
}

/// `MemoryMax=` of the shipped unit, in bytes, on a machine of
/// `machine` bytes (systemd's K/M/G/T suffixes are powers of 1024; a
/// percentage is of the machine's memory).
fn unit_memory_max(machine: u64) -> u64 {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/iicp-host.service"),
    )
    .unwrap();
    let value = unit
        .lines()
        .find_map(|line| line.strip_prefix("MemoryMax="))
        .expect("the unit sets MemoryMax");
    let number = |text: &str| text.parse::<u64>().expect("MemoryMax is a number");
    match value.chars().last() {
        Some('%') => machine / 100 * number(&value[..value.len() - 1]),
        Some('K') => number(&value[..value.len() - 1]) << 10,
        Some('M') => number(&value[..value.len() - 1]) << 20,
        Some('G') => number(&value[..value.len() - 1]) << 30,
        Some('T') => number(&value[..value.len() - 1]) << 40,
        _ => number(value),
    }
}

/// The value of `series` in `node`'s metrics; a missing series fails.
async fn gauge(node: &Node, series: &str) -> u64 {
    let text = common::metrics(node).await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not exported:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_units_memory_ceiling_the_default_worst_case_fits_on_any_machine() {
    // The node reads MemoryMax= from its cgroup; --memory-limit-mib stands
    // in for it here (it can only lower what the node sees). Machines of
    // 1 GiB, 4 GiB and this one's; and the pool
    // residency of a kernel without PAGEMAP_SCAN (64 KiB) and with it
    // (1 MiB), given explicitly, so that both fit whatever this kernel has.
    let this_machine = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .expect("MemTotal")
        << 10;
    for machine in [1 << 30, 4 << 30, this_machine] {
        // In whole MiB, as the flag takes it.
        let ceiling = unit_memory_max(machine) >> 20 << 20;
        assert!(ceiling <= machine, "MemoryMax above the machine");
        let limit = (ceiling >> 20).to_string();
        for residency in [None, Some("64"), Some("1024")] {
            let mut extra = vec!["--memory-limit-mib", &limit];
            if let Some(kib) = residency {
                extra.extend(["--keep-resident-kib", kib]);
            }
            let node = Node::start(&plugin("echo"), &extra);
            let worst = gauge(&node, "iicp_memory_worst_case_bytes").await;
            assert_eq!(gauge(&node, "iicp_memory_limit_bytes").await, ceiling);
            assert!(
                worst <= ceiling,
                "{} MiB machine, keep-resident {residency:?}: worst case {} MiB over MemoryMax={} MiB",
                machine >> 20,
                worst >> 20,
                ceiling >> 20
            );
        }
    }
}
