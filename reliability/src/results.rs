//! A run's results file, `docs/results/reliability-<date>-<time>.json`:
//! which machine, when, at which commit, every case as measured, the RSS
//! pictures it drew, and every figure under a flat key
//! (`<family>/<case>/<figure>`, names slugged) that other pages quote.
//! `docs/reliability.md` is drawn from these files alone — each family from
//! the newest run that has it — so a partial run (`--only`) updates its
//! families and names its own machine, date and commit beside them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cases::FAMILIES;
use crate::charts::RssPicture;
use crate::report::{CaseReport, markdown};

/// Who ran, where, when, on which commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunInfo {
    /// `full` or `fast`.
    pub scale: String,
    /// When the run began, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// The commit measured (`-dirty` when the tree had changes).
    pub commit: String,
    /// CPU, memory, kernel, compiler: one line each.
    pub machine: Vec<String>,
    /// Cores the run saw.
    pub cores: usize,
    /// Wall-clock time of the whole run.
    pub elapsed_s: f64,
    /// What the operator noted about the run, when anything.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Set when the file was read back from an older Markdown report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
}

impl RunInfo {
    /// This machine and checkout, now.
    pub fn here(scale: &str, date: String, elapsed_s: f64) -> Self {
        Self {
            scale: scale.to_string(),
            date,
            commit: iicp_run_info::commit(),
            machine: iicp_run_info::machine(),
            cores: iicp_run_info::cores(),
            elapsed_s,
            note: String::new(),
            imported_from: None,
        }
    }
}

/// One run's results file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunResults {
    /// Machine, date, commit.
    pub run: RunInfo,
    /// Every case as measured.
    pub cases: Vec<CaseReport>,
    /// Family → its RSS picture (file beside the report, caption).
    pub pictures: BTreeMap<String, RssPicture>,
    /// Every figure by key; see [`figures`].
    pub figures: BTreeMap<String, f64>,
}

impl RunResults {
    /// The results of a run, figures included.
    pub fn new(
        run: RunInfo,
        cases: Vec<CaseReport>,
        pictures: BTreeMap<String, RssPicture>,
    ) -> Self {
        let figures = figures(&cases);
        Self {
            run,
            cases,
            pictures,
            figures,
        }
    }

    /// The file name this run's results go under.
    pub fn file_name(&self) -> String {
        iicp_run_info::results_file_name("reliability", &self.run.date)
    }
}

/// `Hostile plugins, 3000 half-sent heads` → `hostile-plugins-3000-half-sent-heads`.
pub fn slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').to_string()
}

/// `<family>/<case>/<figure>` for every case: tries, failures, healthy
/// traffic (sent, failed, p50/p99/worst ms), RSS before/peak/after and the
/// bound (MiB), duration (s).
pub fn figures(cases: &[CaseReport]) -> BTreeMap<String, f64> {
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let mut figures = BTreeMap::new();
    for case in cases {
        let key = |figure: &str| format!("{}/{}/{figure}", slug(&case.family), slug(&case.name));
        let mut values = vec![
            ("tries", case.tries as f64),
            ("failures", case.failures as f64),
            ("healthy_sent", case.healthy.count as f64),
            ("healthy_failed", case.healthy.failures as f64),
            ("healthy_p50_ms", ms(case.healthy.p50)),
            ("healthy_p99_ms", ms(case.healthy.p99)),
            ("healthy_worst_ms", ms(case.healthy.max)),
            ("rss_before_mib", mib(case.rss.before)),
            ("rss_peak_mib", mib(case.rss.peak)),
            ("rss_after_mib", mib(case.rss.after)),
            ("duration_s", case.duration.as_secs_f64()),
        ];
        if let Some(bound) = case.rss_bound {
            values.push(("rss_bound_mib", mib(bound)));
        }
        for (figure, value) in values {
            figures.insert(key(figure), value);
        }
    }
    figures
}

/// Every `reliability-*.json` in `dir`, oldest first (by file name, which
/// starts with the run's date).
pub fn load_runs(dir: &Path) -> Result<Vec<(String, RunResults)>, String> {
    let mut runs = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !(name.starts_with("reliability-") && name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| format!("{name}: {e}"))?;
        let run: RunResults = serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
        runs.push((name, run));
    }
    runs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(runs)
}

/// `docs/reliability.md`: each family from the newest of `runs` that has
/// it, under a list of the runs used (`results_dir` is the results files'
/// directory relative to the page).
pub fn page(runs: &[(String, RunResults)], results_dir: &str) -> String {
    let mut chosen: Vec<(&str, usize)> = Vec::new();
    for family in FAMILIES {
        if let Some(index) = (0..runs.len())
            .rev()
            .find(|&i| runs[i].1.cases.iter().any(|c| c.family == *family))
        {
            chosen.push((family, index));
        }
    }
    let mut out = String::from(
        "# Reliability\n\nProduced by `reliability/run` from its results files — do not edit by hand. \
         Each family below comes from the newest run that has it; each case runs against a release build \
         of the node with healthy traffic of another plugin beside it; RSS is the node's resident memory. \
         Every figure is in the run's results file under `<family>/<case>/<figure>` (names slugged).\n\n## Runs\n\n",
    );
    for (index, (file, results)) in runs.iter().enumerate() {
        let families: Vec<&str> = (chosen.iter())
            .filter(|(_, i)| *i == index)
            .map(|(f, _)| *f)
            .collect();
        if families.is_empty() {
            continue;
        }
        let run = &results.run;
        let failed = results.cases.iter().filter(|c| !c.passed()).count();
        let _ = writeln!(
            out,
            "- [`{results_dir}/{file}`]({results_dir}/{file}): {} scale, {}, commit {}, {} ({} cores): \
             {} cases, {failed} failed, {:.0} s. Shown here: {}.{}",
            run.scale,
            run.date,
            run.commit,
            run.machine.join(", "),
            run.cores,
            results.cases.len(),
            run.elapsed_s,
            families.join(", "),
            if run.note.is_empty() {
                String::new()
            } else {
                format!(" {}", run.note)
            }
        );
    }
    out.push('\n');
    for (family, index) in chosen {
        let results = &runs[index].1;
        let cases: Vec<CaseReport> = (results.cases.iter())
            .filter(|c| c.family == family)
            .cloned()
            .collect();
        out.push_str(&markdown(&cases, &results.pictures));
    }
    out.trim_end().to_string() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_keep_letters_and_digits() {
        assert_eq!(
            slug("3000 half-sent heads, 500 trickled bodies"),
            "3000-half-sent-heads-500-trickled-bodies"
        );
        assert_eq!(
            slug("--memory-limit-mib 512: 2 hostile"),
            "memory-limit-mib-512-2-hostile"
        );
    }

    #[test]
    fn each_family_comes_from_the_newest_run_that_has_it() {
        let run = |date: &str, cases: Vec<CaseReport>| {
            let info = RunInfo {
                scale: "full".into(),
                date: date.into(),
                ..RunInfo::default()
            };
            let results = RunResults::new(info, cases, BTreeMap::new());
            (results.file_name(), results)
        };
        let mut old = CaseReport::new("slow clients", "heads");
        old.tries = 1;
        let mut new = CaseReport::new("slow clients", "heads");
        new.tries = 2;
        let runs = vec![
            run(
                "2026-12-01 10:00 UTC",
                vec![old, CaseReport::new("overload", "32 clients")],
            ),
            run("2026-12-02 11:30 UTC", vec![new]),
        ];
        assert_eq!(runs[1].0, "reliability-2026-12-02-1130.json");
        assert_eq!(runs[1].1.figures["slow-clients/heads/tries"], 2.0);
        let page = page(&runs, "results");
        assert!(page.contains("| heads | 2 |"), "{page}");
        assert!(!page.contains("| heads | 1 |"), "{page}");
        assert!(page.contains("| 32 clients | 0 |"), "{page}");
        assert!(page.contains("(results/reliability-2026-12-01-1000.json): full scale"));
    }

    /// The committed page is what the committed results files render, byte
    /// for byte: no figure on it is typed by hand.
    #[test]
    fn the_committed_page_is_rendered_from_the_results_files() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let runs = load_runs(&docs.join("results")).unwrap();
        assert!(!runs.is_empty(), "no results files");
        for (file, run) in &runs {
            // JSON numbers read back within a unit in the last place.
            let expected = figures(&run.cases);
            let keys = |m: &BTreeMap<String, f64>| m.keys().cloned().collect::<Vec<_>>();
            assert_eq!(
                keys(&run.figures),
                keys(&expected),
                "{file}: figure keys out of step"
            );
            for (key, value) in &expected {
                let stored = run.figures[key];
                assert!(
                    (stored - value).abs() <= value.abs() * 1e-12,
                    "{file}: {key} {stored} ≠ {value}"
                );
            }
        }
        let committed = std::fs::read_to_string(docs.join("reliability.md")).unwrap();
        assert_eq!(
            page(&runs, "results"),
            committed,
            "docs/reliability.md: run `reliability/run --render`"
        );
    }
}
