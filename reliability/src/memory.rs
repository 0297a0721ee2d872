//! A process's resident memory, read from `/proc/<pid>/status` and sampled
//! in the background so a case can report before, peak and after.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the sampler reads RSS.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Resident memory of `pid` in bytes (`VmRSS`), or 0 once it has exited.
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// Minor page faults so far of the process (or thread) whose `stat` file is
/// `stat_path` (`/proc/<pid>/stat`, `/proc/self/stat`): field 10, counted
/// after the parenthesised command name, which may hold spaces.
pub fn minor_faults(stat_path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let fields = stat.rsplit_once(')')?.1;
    fields.split_whitespace().nth(7)?.parse().ok()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples a process's RSS until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    series: Arc<Mutex<Vec<(Duration, u64)>>>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid` every [`SAMPLE_EVERY`].
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let series = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, samples) = (stop.clone(), series.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !stop_flag.load(Ordering::Relaxed) {
                samples
                    .lock()
                    .unwrap()
                    .push((started.elapsed(), rss_bytes(pid)));
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Self {
            stop,
            series,
            thread: Some(thread),
        }
    }

    /// The highest RSS seen so far.
    pub fn peak(&self) -> u64 {
        self.series
            .lock()
            .unwrap()
            .iter()
            .map(|&(_, rss)| rss)
            .max()
            .unwrap_or(0)
    }

    /// Stops sampling; returns (time since start, RSS) samples.
    pub fn finish(mut self) -> Vec<(Duration, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::mem::take(&mut self.series.lock().unwrap())
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long RSS must hold still before it counts as settled after tasks:
/// the node trims right after a task that made the host allocate.
pub const QUIET_AFTER_TASKS: Duration = Duration::from_millis(300);
/// The same after a burst of connections: longer than the node's delayed
/// trim once such a burst ends (1 s), so "after" is not read in the quiet
/// moment before that trim.
pub const QUIET_AFTER_CONNECTIONS: Duration = Duration::from_millis(2500);

/// Waits until `pid`'s RSS stops moving (every sample within 1 % of the
/// first for `quiet`) or `limit` passes, and returns it: memory freed after
/// a hostile act is returned to the kernel lazily, so "after" is read once
/// settled.
pub fn settled_rss(pid: u32, quiet: Duration, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    let mut anchor = rss_bytes(pid);
    let mut since = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline || now - since >= quiet {
            return rss_bytes(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
        let rss = rss_bytes(pid);
        if rss.abs_diff(anchor) * 100 > anchor.max(1) {
            anchor = rss;
            since = Instant::now();
        }
    }
}
