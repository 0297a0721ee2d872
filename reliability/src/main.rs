//! `reliability` — runs every case family at full size against a release
//! build and writes `docs/reliability.md`, with a picture of the node's RSS
//! over time per family beside it (`docs/reliability-<family>-rss.svg`).
//! Usually started by `reliability/run`, which builds what it needs first.
//!
//! Usage: reliability --host-binary PATH --plugin-dir DIR [--out FILE]
//!                    [--only FAMILY]... [--fast]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use iicp_reliability::cases::{self, FAMILIES};
use iicp_reliability::charts::write_rss_charts;
use iicp_reliability::report::{CaseReport, markdown};
use iicp_reliability::{Context, Scale};

struct Args {
    host_binary: PathBuf,
    plugin_dir: PathBuf,
    out: PathBuf,
    only: Vec<String>,
    scale: Scale,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut host_binary, mut plugin_dir) = (None, None);
    let mut out = PathBuf::from("docs/reliability.md");
    let mut only = Vec::new();
    let mut scale = Scale::Full;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--host-binary" => host_binary = Some(PathBuf::from(value()?)),
            "--plugin-dir" => plugin_dir = Some(PathBuf::from(value()?)),
            "--out" => out = PathBuf::from(value()?),
            "--only" => only.push(value()?),
            "--fast" => scale = Scale::Fast,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    for family in &only {
        if !FAMILIES.contains(&family.as_str()) {
            return Err(format!("no family {family:?}; families: {FAMILIES:?}"));
        }
    }
    Ok(Args {
        host_binary: host_binary.ok_or("--host-binary is required")?,
        plugin_dir: plugin_dir.ok_or("--plugin-dir is required")?,
        out,
        only,
        scale,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("reliability: {error}");
            return ExitCode::from(2);
        }
    };
    let work_dir = std::env::temp_dir().join(format!("iicp-reliability-{}", std::process::id()));
    let absolute = |path: PathBuf| std::path::absolute(&path).unwrap_or(path);
    let ctx = Context {
        host_binary: absolute(args.host_binary),
        plugin_dir: absolute(args.plugin_dir),
        cache_dir: work_dir.join("cache"),
        work_dir: work_dir.clone(),
    };
    let started = Instant::now();
    let mut reports: Vec<CaseReport> = Vec::new();
    for family in FAMILIES
        .iter()
        .filter(|f| args.only.is_empty() || args.only.iter().any(|o| o == *f))
    {
        let family_started = Instant::now();
        eprintln!("reliability: {family} ...");
        let found = cases::run(family, &ctx, args.scale).await;
        for report in &found {
            eprintln!(
                "  {:<40} tries {:>6}  failures {:>3}  {}",
                report.name,
                report.tries,
                report.failures,
                if report.passed() { "pass" } else { "FAIL" }
            );
        }
        eprintln!("  ({:.0} s)", family_started.elapsed().as_secs_f64());
        reports.extend(found);
    }
    let elapsed = started.elapsed();
    let failed: Vec<&CaseReport> = reports.iter().filter(|r| !r.passed()).collect();
    let out_dir = args
        .out
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let stem = args
        .out
        .file_stem()
        .map_or("reliability".into(), |s| s.to_string_lossy());
    let charts = match write_rss_charts(out_dir, &stem, &reports) {
        Ok(charts) => charts,
        Err(error) => {
            eprintln!("reliability: {error}");
            return ExitCode::FAILURE;
        }
    };
    let document = format!(
        "# Reliability\n\nProduced by `reliability/run` ({} scale) on {} cores in {:.0} s: \
         {} cases, {} failed. Each case runs against a release build of the node with healthy \
         traffic of another plugin beside it; RSS is the node's resident memory.\n\n{}",
        match args.scale {
            Scale::Fast => "fast",
            Scale::Full => "full",
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        elapsed.as_secs_f64(),
        reports.len(),
        failed.len(),
        markdown(&reports, &charts)
    );
    if let Err(error) = std::fs::write(&args.out, document) {
        eprintln!("reliability: cannot write {}: {error}", args.out.display());
        return ExitCode::FAILURE;
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    eprintln!(
        "reliability: {} cases, {} failed, {:.0} s; wrote {}",
        reports.len(),
        failed.len(),
        elapsed.as_secs_f64(),
        args.out.display()
    );
    for report in &failed {
        eprintln!("{}", report.failed_checks());
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
