//! The reliability suite's fast cases (`reliability/`): every case family at
//! `Scale::Fast` against the debug build, each report must pass. The full
//! sizes run with `reliability/run`.

mod common;

use iicp_reliability::cases::{self, FAMILIES};
use iicp_reliability::{Context, Scale};

fn context(family: &str) -> Context {
    let launcher = common::launcher();
    Context {
        host_binary: launcher.binary,
        plugin_dir: common::plugin_dir().to_path_buf(),
        cache_dir: launcher.cache_dir,
        work_dir: launcher
            .state_root
            .join(format!("reliability-{}", family.replace(' ', "-"))),
    }
}

async fn run_family(family: &str) {
    let reports = cases::run(family, &context(family), Scale::Fast).await;
    assert!(!reports.is_empty(), "{family}: no cases ran");
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.failed_checks())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins() {
    run_family(cases::hostile_plugins::FAMILY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients() {
    run_family(cases::slow_clients::FAMILY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload() {
    run_family(cases::overload::FAMILY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_chaos() {
    run_family(cases::directory_chaos::FAMILY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown() {
    run_family(cases::shutdown::FAMILY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit() {
    run_family(cases::memory_limit::FAMILY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_boundaries() {
    run_family(cases::trust_boundaries::FAMILY).await;
}

#[test]
fn every_family_has_a_fast_test() {
    let this_file = include_str!("reliability.rs");
    for family in FAMILIES {
        let module = family.replace(' ', "_");
        assert!(
            this_file.contains(&format!("cases::{module}::FAMILY")),
            "tests/reliability.rs has no test for family {family:?}"
        );
    }
}
