//! `iicp-bench figures --tool TOOL --prefix PREFIX --results-dir DIR FILE`:
//! a results file (`DIR/<PREFIX>-<date>-<time>.json`, this machine, now,
//! the checked-out commit) from `FILE`'s `key value` lines, for the tools
//! that measure in a script (`reach/netns-demo`). Prints `results: PATH`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::results::{Results, Run};
use crate::usage_error;

/// The figures of `text`: one `key value` per line, blank lines skipped.
fn parse(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut figures = BTreeMap::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (key, value) = line
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("line {}: expected `key value`", number + 1))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("line {}: {value:?} is not a number", number + 1))?;
        figures.insert(key.to_string(), value);
    }
    Ok(figures)
}

/// Writes the results file.
pub fn run(mut args: impl Iterator<Item = String>) {
    let (mut tool, mut prefix, mut dir, mut file) = (None, None, None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tool" => tool = args.next(),
            "--prefix" => prefix = args.next(),
            "--results-dir" => dir = args.next().map(PathBuf::from),
            other if file.is_none() && !other.starts_with("--") => {
                file = Some(PathBuf::from(other))
            }
            other => usage_error(&format!("figures: unknown argument {other}")),
        }
    }
    let (Some(tool), Some(prefix), Some(dir), Some(file)) = (tool, prefix, dir, file) else {
        usage_error("figures needs --tool, --prefix, --results-dir and FILE");
    };
    let figures = std::fs::read_to_string(&file)
        .map_err(|e| e.to_string())
        .and_then(|text| parse(&text))
        .unwrap_or_else(|e| usage_error(&format!("{}: {e}", file.display())));
    if figures.is_empty() {
        usage_error(&format!("{}: no figures", file.display()));
    }
    let results = Results {
        run: Run::began_now(&tool),
        figures,
        ..Results::default()
    };
    let path = dir.join(iicp_run_info::results_file_name(&prefix, &results.run.date));
    if let Err(error) = crate::write_results(&results, &path) {
        usage_error(&error);
    }
    println!("results: {}", path.display());
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_are_key_value_lines() {
        let figures = super::parse("netns/direct-1/req_per_s 17680.5\n\nnetns/x 3\n").unwrap();
        assert_eq!(figures["netns/direct-1/req_per_s"], 17680.5);
        assert_eq!(figures.len(), 2);
        assert!(super::parse("netns/x fast\n")
            .unwrap_err()
            .contains("not a number"));
        assert!(super::parse("lonely\n").unwrap_err().contains("key value"));
    }
}
