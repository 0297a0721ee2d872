//! The run's pictures: the node's resident memory over time during each
//! family, its cases laid end to end in the order of the report's table,
//! drawn with `iicp-charts` and written beside `docs/reliability.md`, which
//! embeds them by file name with a caption saying where each case lies.
//! One line, not one per case: a family has a dozen or more cases, more
//! than a legend and a palette keep apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use iicp_charts::{LineChart, Series, XScale, render_svg};

use crate::report::CaseReport;

/// Most points drawn per case. A case samples every 20 ms for minutes;
/// longer series keep the highest sample of each stretch, so no peak is
/// lost to the thinning.
const MAX_POINTS: usize = 200;

/// A family's picture as the report embeds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RssPicture {
    /// The SVG's file name, beside the report.
    pub file: String,
    /// Where each case lies on the time axis, one sentence.
    pub caption: String,
}

/// The chart file of `family` beside a report whose file stem is `stem`:
/// `<stem>-<family with dashes>-rss.svg`.
pub fn rss_chart_file(stem: &str, family: &str) -> String {
    format!("{stem}-{}-rss.svg", family.replace(' ', "-"))
}

/// RSS (MiB) over the sampled seconds of `family`'s cases, end to end, and
/// the caption placing each case; `None` when no case sampled RSS.
pub fn rss_chart(family: &str, reports: &[CaseReport]) -> Option<(LineChart, String)> {
    let mut points = Vec::new();
    let mut caption = String::from("Cases from left to right:");
    let mut offset = 0.0;
    for report in reports
        .iter()
        .filter(|r| r.family == family && !r.rss_series.is_empty())
    {
        let thinned = thinned_mib(&report.rss_series, MAX_POINTS);
        points.extend(thinned.iter().map(|&(t, mib)| (offset + t, mib)));
        let end = offset + thinned.last().map_or(0.0, |&(t, _)| t);
        let _ = write!(caption, " {} {offset:.1}–{end:.1} s;", report.name);
        offset = end;
    }
    if points.is_empty() {
        return None;
    }
    caption.pop();
    caption.push('.');
    let chart = LineChart {
        title: format!("Node RSS during the {family} cases"),
        x_label: "seconds of sampling, cases end to end".into(),
        y_label: "resident memory (MiB)".into(),
        x_scale: XScale::Linear,
        series: vec![Series::new("node RSS", points)],
    };
    Some((chart, caption))
}

/// Draws the RSS chart of every family of `reports` into `dir` (the report
/// file's directory, with file stem `stem`); returns family → picture for
/// the families that have one.
pub fn write_rss_charts(
    dir: &Path,
    stem: &str,
    reports: &[CaseReport],
) -> Result<BTreeMap<String, RssPicture>, String> {
    let mut families: Vec<&str> = reports.iter().map(|r| r.family.as_str()).collect();
    families.dedup();
    let mut written = BTreeMap::new();
    for family in families {
        let Some((chart, caption)) = rss_chart(family, reports) else {
            continue;
        };
        let file = rss_chart_file(stem, family);
        let svg = render_svg(&chart)?;
        std::fs::write(dir.join(&file), svg)
            .map_err(|error| format!("cannot write {}: {error}", dir.join(&file).display()))?;
        written.insert(family.to_string(), RssPicture { file, caption });
    }
    Ok(written)
}

/// `samples` (seconds, bytes) as (seconds, MiB), at most `max` points: each
/// of `max` equal stretches of samples gives its highest one.
fn thinned_mib(samples: &[(f64, u64)], max: usize) -> Vec<(f64, f64)> {
    let mib = |&(t, bytes): &(f64, u64)| (t, bytes as f64 / f64::from(1 << 20));
    if samples.len() <= max {
        return samples.iter().map(mib).collect();
    }
    let stretch = samples.len().div_ceil(max);
    samples
        .chunks(stretch)
        .filter_map(|chunk| chunk.iter().max_by_key(|(_, bytes)| *bytes))
        .map(mib)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(family: &str, name: &str, series: Vec<(f64, u64)>) -> CaseReport {
        let mut report = CaseReport::new(family, name);
        report.rss_series = series;
        report
    }

    #[test]
    fn thinning_bounds_the_points_and_keeps_the_peak() {
        let samples: Vec<(f64, u64)> = (0..10_000u64)
            .map(|i| {
                (
                    i as f64 * 0.02,
                    if i == 4_321 { 900 << 20 } else { 40 << 20 },
                )
            })
            .collect();
        let points = thinned_mib(&samples, MAX_POINTS);
        assert!(points.len() <= MAX_POINTS, "{} points", points.len());
        assert!(points.iter().any(|&(_, mib)| mib == 900.0));
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0), "x in order");
        assert_eq!(thinned_mib(&samples[..3], MAX_POINTS).len(), 3);
    }

    #[test]
    fn one_chart_per_family_with_its_cases_end_to_end() {
        let reports = vec![
            case(
                "hostile plugins",
                "memory bomb",
                vec![(0.0, 30 << 20), (1.0, 60 << 20)],
            ),
            case("hostile plugins", "priming", Vec::new()),
            case(
                "hostile plugins",
                "log flood",
                vec![(0.5, 30 << 20), (2.0, 31 << 20)],
            ),
            case("hostile clients", "slow heads", Vec::new()),
        ];
        let (chart, caption) = rss_chart("hostile plugins", &reports).unwrap();
        assert_eq!(chart.series.len(), 1);
        assert_eq!(
            chart.series[0].points,
            [(0.0, 30.0), (1.0, 60.0), (1.5, 30.0), (3.0, 31.0)]
        );
        assert_eq!(
            caption,
            "Cases from left to right: memory bomb 0.0–1.0 s; log flood 1.0–3.0 s."
        );
        assert!(rss_chart("hostile clients", &reports).is_none());

        let dir = tempfile::tempdir().unwrap();
        let written = write_rss_charts(dir.path(), "reliability", &reports).unwrap();
        assert_eq!(written.len(), 1);
        let picture = &written["hostile plugins"];
        assert_eq!(picture.file, "reliability-hostile-plugins-rss.svg");
        let svg = std::fs::read_to_string(dir.path().join(&picture.file)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("Node RSS during the hostile plugins cases")
        );
    }
}
