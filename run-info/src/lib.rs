//! Which machine, when and at which commit a measuring run ran: what
//! `bench/run` and `reliability/run` write at the head of their results
//! files (`docs/results/`), so every figure names its run.

#![deny(missing_docs)]

/// A command's trimmed standard output ("" when it cannot run).
fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn now_utc() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

/// The checked-out commit, short, with `-dirty` when tracked files changed.
pub fn commit() -> String {
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty =
        !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}

/// CPU model and cores, memory, kernel and compiler, one line each.
pub fn machine() -> Vec<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    vec![
        format!("CPU: {cpu}, {} cores", cores()),
        memory,
        format!("kernel {}", kernel.trim()),
        command_output("rustc", &["-V"]),
    ]
}

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// `<prefix>-YYYY-MM-DD-HHMM.json` for a run that began at `date`
/// (`YYYY-MM-DD HH:MM UTC`): results files sort by date.
pub fn results_file_name(prefix: &str, date: &str) -> String {
    let stamp: String = (date.trim_end_matches(" UTC").chars())
        .filter_map(|c| match c {
            ' ' => Some('-'),
            ':' => None,
            c => Some(c),
        })
        .collect();
    format!("{prefix}-{stamp}.json")
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_files_are_named_by_their_date() {
        assert_eq!(
            super::results_file_name("benchmarks", "2026-12-02 16:30 UTC"),
            "benchmarks-2026-12-02-1630.json"
        );
    }
}
