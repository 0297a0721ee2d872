//! Directory chaos: one node, one directory stand-in that misbehaves in
//! turn — down when the node starts, flapping, slow, garbage, 500 storms,
//! 401 on every heartbeat, redirects — while healthy clients keep calling
//! echo. In each mode: serving never stops (no healthy task fails), the
//! requests the directory receives stay under the ceiling the lifecycle
//! documents for the node's timing (`src/directory/lifecycle.rs`: at most
//! `2·(N(T)+1)` in a failure episode of length T), and once the directory
//! behaves again the node is registered within one backoff step.

use std::time::{Duration, Instant};

use crate::directory::{Behaviour, StandInDirectory};
use crate::memory::{QUIET_AFTER_TASKS, RssSampler, settled_rss};
use crate::report::CaseReport;
use crate::traffic::HealthyLoad;
use crate::{Context, Scale};

/// The family's name in reports.
pub const FAMILY: &str = "directory chaos";

/// The node's directory call timeout.
const DIRECTORY_TIMEOUT_MS: u64 = 1000;
/// What recovery may overrun the backoff by on a busy machine.
const MARGIN: Duration = Duration::from_secs(5);

/// The node's lifecycle timing in this family: the fast size uses a
/// shrunken table (same shape) so each mode takes seconds; the full size
/// the defaults.
struct Timing {
    retry_floor_ms: u64,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    min_heartbeat_ms: u64,
}

impl Timing {
    fn for_scale(scale: Scale) -> Self {
        scale.pick(
            Self {
                retry_floor_ms: 100,
                backoff_initial_ms: 200,
                backoff_max_ms: 1600,
                min_heartbeat_ms: 100,
            },
            Self {
                retry_floor_ms: 500,
                backoff_initial_ms: 1000,
                backoff_max_ms: 60_000,
                min_heartbeat_ms: 250,
            },
        )
    }

    /// The documented ceiling on requests in a failure episode of `window`.
    fn ceiling(&self, window: Duration) -> usize {
        let mut waited = Duration::ZERO;
        let mut failures: u32 = 0;
        loop {
            let step = Duration::from_millis(
                (self.backoff_initial_ms << failures.min(20)).min(self.backoff_max_ms) / 2,
            )
            .max(Duration::from_millis(self.retry_floor_ms));
            if waited + step > window {
                return 2 * (failures as usize + 1);
            }
            waited += step;
            failures += 1;
        }
    }

    /// How long registration may take once the directory is healthy: one
    /// full backoff step and a call.
    fn recovery(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms + DIRECTORY_TIMEOUT_MS) + MARGIN
    }

    fn config_lines(&self) -> String {
        format!(
            "retry_floor_ms = {}\nbackoff_initial_ms = {}\nbackoff_max_ms = {}\nmin_heartbeat_ms = {}\n",
            self.retry_floor_ms,
            self.backoff_initial_ms,
            self.backoff_max_ms,
            self.min_heartbeat_ms
        )
    }
}

/// One way for the directory to fail.
#[derive(Clone, Copy)]
enum Chaos {
    DownAtStart,
    Flapping,
    Steady(Behaviour),
}

/// Runs every mode, one node each.
pub async fn run(ctx: &Context, scale: Scale) -> Vec<CaseReport> {
    let window = Duration::from_secs(scale.pick(5, 60));
    let slow = Behaviour::Slow(Duration::from_millis(DIRECTORY_TIMEOUT_MS * 3));
    let modes = [
        ("down at start", Chaos::DownAtStart),
        ("flapping", Chaos::Flapping),
        ("slow", Chaos::Steady(slow)),
        ("garbage", Chaos::Steady(Behaviour::Garbage)),
        ("500 storm", Chaos::Steady(Behaviour::ServerErrors)),
        ("401 storm", Chaos::Steady(Behaviour::Unauthorized)),
        ("redirect", Chaos::Steady(Behaviour::Redirect)),
    ];
    let mut reports = Vec::new();
    for (name, chaos) in modes {
        reports.push(one_mode(ctx, scale, name, chaos, window).await);
    }
    reports
}

async fn one_mode(
    ctx: &Context,
    scale: Scale,
    name: &str,
    chaos: Chaos,
    window: Duration,
) -> CaseReport {
    let timing = Timing::for_scale(scale);
    let mut report = CaseReport::new(FAMILY, name);
    let started = Instant::now();
    let mut directory = match chaos {
        Chaos::DownAtStart => StandInDirectory::down().await,
        _ => StandInDirectory::start(Behaviour::Healthy).await,
    };
    let config = ctx
        .work_dir
        .join(format!("chaos-{}.toml", name.replace(' ', "-")));
    std::fs::create_dir_all(&ctx.work_dir).expect("create the work dir");
    std::fs::write(
        &config,
        format!(
            "[directory]\nurl = \"{}\"\ntimeout_ms = {DIRECTORY_TIMEOUT_MS}\n{}\n[[plugin]]\npath = \"{}\"\n",
            directory.url(),
            timing.config_lines(),
            ctx.plugin("echo").display()
        ),
    )
    .expect("write the node's configuration");
    directory.ask_heartbeats_every(Duration::from_millis(scale.pick(200, 1000)));
    let node = ctx.launcher().start_config(&config, &[], &[]);
    if !matches!(chaos, Chaos::DownAtStart) {
        wait_until(timing.recovery(), || directory.registered()).await;
    }
    let before = settled_rss(node.pid(), QUIET_AFTER_TASKS, Duration::from_secs(5));
    let sampler = RssSampler::start(node.pid());
    let healthy = HealthyLoad::start(
        node.url("/v1/task"),
        2,
        u64::MAX,
        window + timing.recovery() * 2,
    );

    let chaos_started = Instant::now();
    match chaos {
        Chaos::DownAtStart => tokio::time::sleep(window).await,
        Chaos::Flapping => {
            let period = window / 10;
            while chaos_started.elapsed() < window {
                directory.stop().await;
                tokio::time::sleep(period / 2).await;
                directory.start_again().await;
                tokio::time::sleep(period / 2).await;
            }
        }
        Chaos::Steady(behaviour) => {
            directory.behave(behaviour);
            tokio::time::sleep(window).await;
        }
    }
    let received = directory.received_since(chaos_started);
    let in_window = received
        .iter()
        .filter(|r| r.at - chaos_started <= window && r.route != "POST /v1/credits/award")
        .count();
    let awards = received
        .iter()
        .filter(|r| r.route == "POST /v1/credits/award")
        .count();

    // Healthy again: the node must be registered within one backoff step.
    if matches!(chaos, Chaos::DownAtStart) {
        directory.start_again().await;
    }
    directory.behave(Behaviour::Healthy);
    let healed = Instant::now();
    let recovered = wait_until(timing.recovery(), || directory.registered()).await;
    let took = healed.elapsed();
    let served = healthy.finish().await;
    let series = sampler.finish();
    let after = settled_rss(node.pid(), QUIET_AFTER_TASKS, Duration::from_secs(10));

    // Flapping gets heartbeats accepted in its up phases, so the backoff
    // resets: its ceiling is the pace limit, one request per gap.
    let ceiling = match chaos {
        Chaos::Flapping => {
            (window.as_millis() / u128::from(timing.retry_floor_ms.min(timing.min_heartbeat_ms)))
                as usize
                + 1
        }
        _ => timing.ceiling(window),
    };
    report.tries = in_window as u64;
    if matches!(chaos, Chaos::DownAtStart) {
        // A node that never tried would pass the ceiling too: it must have
        // tried, and been refused, while the directory was down.
        report.check(
            "the node tried the directory while it was down",
            in_window >= 1,
            format!("{in_window} connections closed unanswered"),
        );
    }
    report.check(
        "requests to the directory under the documented ceiling",
        in_window <= ceiling,
        format!(
            "{in_window} register/heartbeat requests in {:.0} s ({:.2}/s; ceiling {ceiling}), {awards} credit awards",
            window.as_secs_f64(),
            in_window as f64 / window.as_secs_f64()
        ),
    );
    report.check(
        "serving never stopped",
        served.failures == 0 && served.count > 0,
        format!("{} healthy tasks, {} failed", served.count, served.failures),
    );
    report.check(
        "registered again once the directory behaved",
        recovered,
        format!(
            "after {:.1} s (bound {:.1} s)",
            took.as_secs_f64(),
            timing.recovery().as_secs_f64()
        ),
    );
    report.healthy = served;
    report.record_rss(before, &series, after);
    report.check_memory(16 << 20);
    report.duration = started.elapsed();
    report
}

/// Polls `condition` every 50 ms until it holds or `limit` passes.
async fn wait_until(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}
