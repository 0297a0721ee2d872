//! `reliability` — runs every case family at full size against a release
//! build, writes the run's results file (`docs/results/reliability-<date>.json`:
//! machine, date, commit, every case and figure) and a picture of the node's
//! RSS over time per family (`docs/reliability-<family>-rss.svg`), then
//! draws `docs/reliability.md` from the results files. Usually started by
//! `reliability/run`, which builds what it needs first.
//!
//! Usage: reliability --host-binary PATH --plugin-dir DIR [--out FILE]
//!                    [--only FAMILY]... [--fast]
//!        reliability --render [--out FILE]      (the page again, no run)
//!        reliability --refresh-figures [--out FILE]   (each results file's
//!            figures again from its cases, after a new figure key; then --render)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use iicp_reliability::cases::{self, FAMILIES};
use iicp_reliability::charts::write_rss_charts;
use iicp_reliability::report::CaseReport;
use iicp_reliability::results::{RunInfo, RunResults, load_runs, page};
use iicp_reliability::{Context, Scale};

struct Args {
    host_binary: PathBuf,
    plugin_dir: PathBuf,
    out: PathBuf,
    only: Vec<String>,
    scale: Scale,
    render_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut host_binary, mut plugin_dir) = (None, None);
    let mut out = PathBuf::from("docs/reliability.md");
    let mut only = Vec::new();
    let mut scale = Scale::Full;
    let mut render_only = false;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--host-binary" => host_binary = Some(PathBuf::from(value()?)),
            "--plugin-dir" => plugin_dir = Some(PathBuf::from(value()?)),
            "--out" => out = PathBuf::from(value()?),
            "--only" => only.push(value()?),
            "--fast" => scale = Scale::Fast,
            "--render" => render_only = true,
            "--refresh-figures" => {
                refresh_figures(&out)?;
                render_only = true;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    for family in &only {
        if !FAMILIES.contains(&family.as_str()) {
            return Err(format!("no family {family:?}; families: {FAMILIES:?}"));
        }
    }
    if render_only {
        return Ok(Args {
            host_binary: PathBuf::new(),
            plugin_dir: PathBuf::new(),
            out,
            only,
            scale,
            render_only,
        });
    }
    Ok(Args {
        host_binary: host_binary.ok_or("--host-binary is required")?,
        plugin_dir: plugin_dir.ok_or("--plugin-dir is required")?,
        out,
        only,
        scale,
        render_only,
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
    if args.render_only {
        return match render(&args.out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("reliability: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let work_dir = std::env::temp_dir().join(format!("iicp-reliability-{}", std::process::id()));
    let absolute = |path: PathBuf| std::path::absolute(&path).unwrap_or(path);
    let ctx = Context {
        host_binary: absolute(args.host_binary),
        plugin_dir: absolute(args.plugin_dir),
        cache_dir: work_dir.join("cache"),
        work_dir: work_dir.clone(),
    };
    let started = Instant::now();
    let started_at = iicp_run_info::now_utc();
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
    let scale = match args.scale {
        Scale::Fast => "fast",
        Scale::Full => "full",
    };
    let results = RunResults::new(
        RunInfo::here(scale, started_at, elapsed.as_secs_f64()),
        reports.clone(),
        charts,
    );
    let results_file = out_dir.join("results").join(results.file_name());
    let written = std::fs::create_dir_all(out_dir.join("results"))
        .map_err(|e| e.to_string())
        .and_then(|()| serde_json::to_string_pretty(&results).map_err(|e| e.to_string()))
        .and_then(|json| std::fs::write(&results_file, json + "\n").map_err(|e| e.to_string()))
        .and_then(|()| render(&args.out));
    if let Err(error) = written {
        eprintln!(
            "reliability: cannot write {}: {error}",
            results_file.display()
        );
        return ExitCode::FAILURE;
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    eprintln!(
        "reliability: {} cases, {} failed, {:.0} s; wrote {} and {}",
        reports.len(),
        failed.len(),
        elapsed.as_secs_f64(),
        results_file.display(),
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

/// Draws the page at `out` from the results files in `results/` beside it.
fn render(out: &std::path::Path) -> Result<(), String> {
    let dir = out
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let runs = load_runs(&dir.join("results"))?;
    std::fs::write(out, page(&runs, "results")).map_err(|e| format!("{}: {e}", out.display()))
}

/// Rewrites the figures of every results file beside `out` from its cases.
fn refresh_figures(out: &std::path::Path) -> Result<(), String> {
    let dir = out
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .join("results");
    for (file, mut run) in load_runs(&dir)? {
        run.figures = iicp_reliability::results::figures(&run.cases);
        let json = serde_json::to_string_pretty(&run).map_err(|e| e.to_string())?;
        std::fs::write(dir.join(&file), json + "\n").map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(())
}
