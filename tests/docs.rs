//! The documents hold together: the README stays a short guide, every
//! relative link (and `#anchor`) resolves, no table cell is a wall of text,
//! every results file says which machine, date and commit it measured, and
//! every figure a page quotes from one — written as a link
//! `[12,606 req/s](results/benchmarks-….json#load/harness/iicp-host/16/req_per_s)` —
//! is under that key in that file, with the value the link shows.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const README_MAX_LINES: usize = 250;
const TABLE_CELL_MAX_CHARS: usize = 400;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    pages.sort();
    pages
}

/// The targets of the Markdown links `[text](target)` in `text`, with their
/// link text; code spans and fenced blocks are skipped.
fn links(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans, so `a[i](x)` in code is not a link.
        let line: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        let mut rest = line.as_str();
        while let Some(open) = rest.find("](") {
            let label_start = rest[..open].rfind('[').map_or(0, |i| i + 1);
            let label = rest[label_start..open].to_string();
            let after = &rest[open + 2..];
            let Some(close) = after.find(')') else { break };
            let target = after[..close].split_whitespace().next().unwrap_or("");
            found.push((label, target.to_string()));
            rest = &after[close..];
        }
    }
    found
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(page: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut fenced = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            anchors.insert(anchor(line.trim_start_matches('#')));
        }
    }
    anchors
}

#[test]
fn the_readme_is_a_short_guide() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines (at most {README_MAX_LINES}): move reference material to docs/"
    );
    // Exactly the two set-up commands a fresh machine needs.
    let setup = readme
        .split("## Set-up on a fresh machine")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a set-up section");
    let commands: Vec<&str> = setup
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(str::trim)
        .collect();
    assert_eq!(commands, ["make serve", "make test"]);
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (_, target) in links(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !resolved.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
            } else if !fragment.is_empty()
                && resolved.extension().is_some_and(|e| e == "md")
                && !anchors(&resolved).contains(fragment)
            {
                broken.push(format!("{}: {target} (no such heading)", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `text` as a reader sees it: link targets dropped (`[a](b)` → `a`).
fn rendered(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find("](") {
        out.push_str(&rest[..open]);
        match rest[open..].find(')') {
            Some(close) => rest = &rest[open + close + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn no_table_cell_is_a_wall_of_text() {
    let mut long = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (number, line) in text.lines().enumerate() {
            if !line.starts_with('|') {
                continue;
            }
            for cell in line.split('|') {
                let chars = rendered(cell.trim()).chars().count();
                if chars > TABLE_CELL_MAX_CHARS {
                    long.push(format!(
                        "{}:{}: {chars} characters",
                        page.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "table cells over {TABLE_CELL_MAX_CHARS} characters (use a section instead):\n{}",
        long.join("\n")
    );
}

fn results_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs/results"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_results_file_names_its_machine_date_and_commit() {
    let files = results_files();
    assert!(!files.is_empty(), "no results files in docs/results");
    for file in files {
        let json = read_json(&file);
        let run = &json["run"];
        for field in ["date", "commit"] {
            assert!(
                run[field].as_str().is_some_and(|v| !v.is_empty()),
                "{}: run.{field} missing",
                file.display()
            );
        }
        assert!(
            run["machine"].as_array().is_some_and(|m| !m.is_empty()),
            "{}: run.machine missing",
            file.display()
        );
        assert!(
            json["figures"].as_object().is_some_and(|f| !f.is_empty()),
            "{}: no figures",
            file.display()
        );
    }
}

/// The first number in `text` ("12,606 req/s" → 12606, with 0 decimals).
fn shown_number(text: &str) -> Option<(f64, usize)> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',' || *c == '.')
        .filter(|c| *c != ',')
        .collect();
    let digits = digits.trim_end_matches('.');
    let decimals = digits.split_once('.').map_or(0, |(_, d)| d.len());
    Some((digits.parse().ok()?, decimals))
}

#[test]
fn every_quoted_figure_is_in_its_results_file() {
    let mut wrong = Vec::new();
    let mut quoted = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (label, target) in links(&text) {
            let Some((file, key)) = target.split_once('#') else {
                continue;
            };
            if !file.contains("results/") || !file.ends_with(".json") {
                continue;
            }
            quoted += 1;
            let key = key.replace("%20", " ");
            let key = key.as_str();
            let path = page.parent().unwrap().join(file);
            let where_ = format!("{}: [{label}]({target})", page.display());
            if !path.exists() {
                wrong.push(format!("{where_}: no such results file"));
                continue;
            }
            let Some(value) = read_json(&path)["figures"][key].as_f64() else {
                wrong.push(format!("{where_}: no figure under that key"));
                continue;
            };
            let Some((shown, decimals)) = shown_number(&label) else {
                wrong.push(format!("{where_}: the link shows no number"));
                continue;
            };
            // Shown rounded to its own decimals (ratios may be shown ×100 as %).
            let half_unit = 0.5 * 10f64.powi(-(decimals as i32)) + 1e-9;
            let matches = |v: f64| (v - shown).abs() <= half_unit;
            if !(matches(value) || (label.contains('%') && matches(value * 100.0))) {
                wrong.push(format!("{where_}: the file says {value}"));
            }
        }
    }
    assert!(quoted > 0, "no page quotes a results file");
    assert!(
        wrong.is_empty(),
        "figures not traceable:\n{}",
        wrong.join("\n")
    );
}
