//! What a sweep found: every run's figures read back from its metrics files, the across-seed
//! mean and 95% interval of each per cell, a verdict per cell, and paired contrasts between
//! cells that differ in one setting.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::grid::Cell;
use crate::error::Result;
use crate::study::cue::cue_reliance;
use crate::study::evaluate::metrics_path;
use crate::study::report::read_evaluation;
use crate::study::{StudyConfig, TestRole};

/// One run's figures, by name (`site-a Δ macro-F1 SFT→GRPO`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFigures {
    pub cell: usize,
    pub seed: u64,
    pub values: BTreeMap<String, f64>,
}

/// The across-seed summary of one figure in one cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeedInterval {
    pub n: usize,
    pub mean: f64,
    /// Student-t 95% interval of the mean over seeds (NaN with one seed).
    pub low: f64,
    pub high: f64,
}

/// Two-sided 97.5% quantile of Student's t for `df` degrees of freedom (tabulated to 30,
/// then the normal's 1.96 plus the first correction term).
pub fn t_quantile_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => 1.959_964 + 2.37 / df as f64,
    }
}

impl SeedInterval {
    /// Mean and t-interval of `values` (non-finite values left out).
    pub fn of(values: &[f64]) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let n = finite.len();
        if n == 0 {
            return Self {
                n,
                mean: f64::NAN,
                low: f64::NAN,
                high: f64::NAN,
            };
        }
        let mean = finite.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Self {
                n,
                mean,
                low: f64::NAN,
                high: f64::NAN,
            };
        }
        let variance = finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t_quantile_975(n - 1) * (variance / n as f64).sqrt();
        Self {
            n,
            mean,
            low: mean - half,
            high: mean + half,
        }
    }

    /// `+0.012 [−0.004, +0.028]`.
    pub fn signed(&self) -> String {
        if self.low.is_finite() {
            format!("{:+.3} [{:+.3}, {:+.3}]", self.mean, self.low, self.high)
        } else {
            format!("{:+.3}", self.mean)
        }
    }

    /// `0.312 [0.298, 0.326]`.
    pub fn plain(&self) -> String {
        if self.low.is_finite() {
            format!("{:.3} [{:.3}, {:.3}]", self.mean, self.low, self.high)
        } else {
            format!("{:.3}", self.mean)
        }
    }

    /// Up, down, or no change the seeds can tell from zero.
    pub fn direction(&self) -> Direction {
        if !(self.low.is_finite() && self.high.is_finite()) {
            Direction::Unknown
        } else if self.low > 0.0 {
            Direction::Up
        } else if self.high < 0.0 {
            Direction::Down
        } else {
            Direction::Unclear
        }
    }
}

/// The sign of a change, as far as the seeds can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
    /// The interval contains zero.
    Unclear,
    /// Too few seeds for an interval.
    Unknown,
}

impl Direction {
    fn words(self) -> &'static str {
        match self {
            Self::Up => "rose",
            Self::Down => "fell",
            Self::Unclear => "did not change clearly (the interval contains 0)",
            Self::Unknown => "cannot be judged (one seed)",
        }
    }
}

/// The figure names of one test set.
pub fn macro_f1_name(test: &str, checkpoint: &str) -> String {
    format!("{test} macro-F1 {checkpoint}")
}

/// The paired SFT → GRPO change of a test set's macro-F1.
pub fn delta_name(test: &str) -> String {
    format!("{test} Δ macro-F1 SFT→GRPO")
}

fn label_delta_name(test: &str, label: &str) -> String {
    format!("{test} Δ F1 {label} SFT→GRPO")
}

fn cue_gap_name(test: &str, checkpoint: &str) -> String {
    format!("{test} cue gap {checkpoint}")
}

/// The paired SFT → GRPO change of a test set's cue gap.
pub fn cue_gap_delta_name(test: &str) -> String {
    format!("{test} Δ cue gap SFT→GRPO")
}

/// A finished run's figures, read from its metrics and predictions.
pub fn read_run(config: &StudyConfig, cell: usize, seed: u64) -> Result<RunFigures> {
    let out = &config.out;
    let mut values = BTreeMap::new();
    let cue_labels = ["Edema", "Support Devices"];
    for test in &config.data.tests {
        let mut per_checkpoint = BTreeMap::new();
        for checkpoint in ["base", "sft", "grpo"] {
            let evaluation = read_evaluation(&metrics_path(out, checkpoint, &test.name))?;
            values.insert(macro_f1_name(&test.name, checkpoint), evaluation.macro_f1);
            per_checkpoint.insert(checkpoint, evaluation);
        }
        values.insert(
            delta_name(&test.name),
            per_checkpoint["grpo"].macro_f1 - per_checkpoint["sft"].macro_f1,
        );
        for label in cue_labels {
            let f1 = |c: &str| {
                per_checkpoint[c]
                    .per_label
                    .iter()
                    .find(|l| l.label == label)
                    .map(|l| l.f1)
            };
            if let (Some(before), Some(after)) = (f1("sft"), f1("grpo")) {
                values.insert(label_delta_name(&test.name, label), after - before);
            }
        }
    }
    for checkpoint in ["sft", "grpo"] {
        for reliance in cue_reliance(config, out, checkpoint)? {
            values.insert(cue_gap_name(&reliance.test, checkpoint), reliance.gap());
        }
    }
    for test in &config.data.tests {
        if let (Some(before), Some(after)) = (
            values.get(&cue_gap_name(&test.name, "sft")),
            values.get(&cue_gap_name(&test.name, "grpo")),
        ) {
            values.insert(cue_gap_delta_name(&test.name), after - before);
        }
    }
    Ok(RunFigures { cell, seed, values })
}

/// Everything the sweep's files say.
pub struct SweepSummary {
    pub cells: Vec<Cell>,
    pub runs: Vec<RunFigures>,
    /// `stats[cell][figure]`.
    pub stats: Vec<BTreeMap<String, SeedInterval>>,
    /// The first in-distribution and the first cross-site test set.
    pub in_distribution: Option<String>,
    pub cross_site: Option<String>,
    /// Every test set, in the configuration's order.
    pub tests: Vec<String>,
}

impl SweepSummary {
    /// Summarise the runs of `cells` (`config` is any run's, for the test sets).
    pub fn new(cells: Vec<Cell>, runs: Vec<RunFigures>, config: &StudyConfig) -> Self {
        let stats = (0..cells.len())
            .map(|c| {
                let mut by_name: BTreeMap<String, Vec<f64>> = BTreeMap::new();
                for run in runs.iter().filter(|r| r.cell == c) {
                    for (name, value) in &run.values {
                        by_name.entry(name.clone()).or_default().push(*value);
                    }
                }
                by_name
                    .into_iter()
                    .map(|(name, values)| (name, SeedInterval::of(&values)))
                    .collect()
            })
            .collect();
        let first = |role: TestRole| {
            config
                .data
                .tests
                .iter()
                .find(|t| t.role == role)
                .map(|t| t.name.clone())
        };
        Self {
            cells,
            runs,
            stats,
            in_distribution: first(TestRole::InDistribution),
            cross_site: first(TestRole::CrossSite),
            tests: config.data.tests.iter().map(|t| t.name.clone()).collect(),
        }
    }

    fn stat(&self, cell: usize, name: &str) -> Option<&SeedInterval> {
        self.stats[cell].get(name)
    }

    /// One sentence on what SFT → GRPO did in distribution and cross-site in `cell`.
    pub fn verdict(&self, cell: usize) -> String {
        let (Some(id), Some(cross)) = (&self.in_distribution, &self.cross_site) else {
            return "needs an in-distribution and a cross-site test set".into();
        };
        let (Some(a), Some(b)) = (
            self.stat(cell, &delta_name(id)),
            self.stat(cell, &delta_name(cross)),
        ) else {
            return "no finished runs".into();
        };
        let mut text = format!(
            "in distribution macro-F1 {} ({}); cross-site it {} ({})",
            a.direction().words(),
            a.signed(),
            b.direction().words(),
            b.signed()
        );
        if a.direction() == Direction::Up && b.direction() == Direction::Down {
            text.push_str(" — ChexReason's paradox");
        }
        text
    }

    /// Paired contrasts between cells that differ in exactly one setting: the per-seed
    /// difference of `figure`, with its t-interval over the seeds both cells ran.
    pub fn contrasts(&self, figure: &str) -> Vec<(String, SeedInterval)> {
        let mut found = Vec::new();
        for (i, a) in self.cells.iter().enumerate() {
            for (j, b) in self.cells.iter().enumerate().skip(i + 1) {
                let differing: Vec<usize> = (0..a.settings.len())
                    .filter(|&k| a.settings[k] != b.settings[k])
                    .collect();
                let [k] = differing[..] else {
                    continue;
                };
                let value = |cell: usize, seed: u64| {
                    self.runs
                        .iter()
                        .find(|r| r.cell == cell && r.seed == seed)
                        .and_then(|r| r.values.get(figure).copied())
                };
                let differences: Vec<f64> = self
                    .runs
                    .iter()
                    .filter(|r| r.cell == i)
                    .filter_map(|r| Some(value(j, r.seed)? - value(i, r.seed)?))
                    .collect();
                if differences.is_empty() {
                    continue;
                }
                let others: Vec<String> = a
                    .settings
                    .iter()
                    .enumerate()
                    .filter(|(m, _)| *m != k)
                    .map(|(_, (key, v))| format!("{key}={v}"))
                    .collect();
                let label = format!(
                    "{}: {} → {}{}",
                    a.settings[k].0,
                    a.settings[k].1,
                    b.settings[k].1,
                    if others.is_empty() {
                        String::new()
                    } else {
                        format!(" (at {})", others.join(", "))
                    }
                );
                found.push((label, SeedInterval::of(&differences)));
            }
        }
        found
    }

    /// Every figure name any run has, in a stable order: per test set, the checkpoints'
    /// macro-F1, the SFT → GRPO change, the cue labels' changes, the cue gaps.
    pub fn figure_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for test in &self.tests {
            for checkpoint in ["base", "sft", "grpo"] {
                names.push(macro_f1_name(test, checkpoint));
            }
            names.push(delta_name(test));
            for label in ["Edema", "Support Devices"] {
                names.push(label_delta_name(test, label));
            }
            for checkpoint in ["sft", "grpo"] {
                names.push(cue_gap_name(test, checkpoint));
            }
            names.push(cue_gap_delta_name(test));
        }
        names.retain(|n| self.runs.iter().any(|r| r.values.contains_key(n)));
        names
    }

    /// `sweep.csv`: one row per cell and figure, with the mean, interval and every seed's
    /// value.
    pub fn csv(&self) -> String {
        let keys: Vec<&str> = self.cells[0]
            .settings
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        let mut text = String::new();
        let mut header: Vec<String> = vec!["cell".into()];
        header.extend(keys.iter().map(|k| k.to_string()));
        header.extend(
            ["figure", "seeds", "mean", "ci_low", "ci_high", "values"]
                .iter()
                .map(|s| s.to_string()),
        );
        let _ = writeln!(text, "{}", csv_row(&header));
        for (c, cell) in self.cells.iter().enumerate() {
            for name in self.figure_names() {
                let Some(stat) = self.stat(c, &name) else {
                    continue;
                };
                let values: Vec<String> = self
                    .runs
                    .iter()
                    .filter(|r| r.cell == c)
                    .filter_map(|r| r.values.get(&name).map(|v| format!("{}:{v}", r.seed)))
                    .collect();
                let mut row: Vec<String> = vec![cell.name.clone()];
                row.extend(cell.settings.iter().map(|(_, v)| v.clone()));
                row.extend([
                    name.clone(),
                    stat.n.to_string(),
                    stat.mean.to_string(),
                    stat.low.to_string(),
                    stat.high.to_string(),
                    values.join(";"),
                ]);
                let _ = writeln!(text, "{}", csv_row(&row));
            }
        }
        text
    }

    /// `sweep.md`: the verdicts, the main table, the cue figures and the contrasts.
    pub fn markdown(&self, title: &str, seeds: &[u64]) -> String {
        let mut text = format!(
            "# Sweep — {title}\n\n{} cells × {} seeds ({}). Every figure is the mean over seeds with its Student-t 95% interval; Δ is the paired SFT → GRPO change within a run. The scatter `sweep.png` shows every run.\n\n## Verdicts\n\n",
            self.cells.len(),
            seeds.len(),
            seeds
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (c, cell) in self.cells.iter().enumerate() {
            let _ = writeln!(text, "- **{}**: {}.", cell.name, self.verdict(c));
        }
        let tests = self.tests.clone();
        text.push_str("\n## Macro-F1 per checkpoint and the SFT → GRPO change\n\n| Cell |");
        for test in &tests {
            let _ = write!(
                text,
                " {test} base | {test} SFT | {test} GRPO | {test} Δ SFT→GRPO |"
            );
        }
        text.push_str("\n|---|");
        text.push_str(&"---:|".repeat(tests.len() * 4));
        text.push('\n');
        let cell_of = |c: usize, name: String, signed: bool| {
            self.stat(c, &name).map_or("—".to_string(), |s| {
                if signed { s.signed() } else { s.plain() }
            })
        };
        for (c, cell) in self.cells.iter().enumerate() {
            let _ = write!(text, "| {} |", cell.name);
            for test in &tests {
                for checkpoint in ["base", "sft", "grpo"] {
                    let _ = write!(
                        text,
                        " {} |",
                        cell_of(c, macro_f1_name(test, checkpoint), false)
                    );
                }
                let _ = write!(text, " {} |", cell_of(c, delta_name(test), true));
            }
            text.push('\n');
        }
        text.push_str(
            "\n## The cue's two labels and the cue gap\n\nPer-label F1 change SFT → GRPO of the cue's cause (Edema) and the cue (Support Devices) where the test set scores them (— where it does not), and the change of the cue gap: how much more often Edema is predicted on films with devices and no edema than on films with neither (see the study report's \"spurious cue\" section).\n\n| Cell |",
        );
        let mut columns = Vec::new();
        for test in &tests {
            for label in ["Edema", "Support Devices"] {
                columns.push((
                    format!("{test} Δ F1 {label}"),
                    label_delta_name(test, label),
                ));
            }
            columns.push((format!("{test} cue gap SFT"), cue_gap_name(test, "sft")));
            columns.push((format!("{test} Δ cue gap"), cue_gap_delta_name(test)));
        }
        for (title, _) in &columns {
            let _ = write!(text, " {title} |");
        }
        text.push_str("\n|---|");
        text.push_str(&"---:|".repeat(columns.len()));
        text.push('\n');
        for (c, cell) in self.cells.iter().enumerate() {
            let _ = write!(text, "| {} |", cell.name);
            for (title, name) in &columns {
                let signed = title.contains('Δ');
                let _ = write!(text, " {} |", cell_of(c, name.clone(), signed));
            }
            text.push('\n');
        }
        let mut contrasts = String::new();
        for test in &tests {
            for (what, figure) in [
                ("Δ macro-F1 SFT→GRPO", delta_name(test)),
                ("Δ cue gap SFT→GRPO", cue_gap_delta_name(test)),
            ] {
                for (label, stat) in self.contrasts(&figure) {
                    let _ = writeln!(contrasts, "| {label} | {test} {what} | {} |", stat.signed());
                }
            }
        }
        if !contrasts.is_empty() {
            let _ = write!(
                text,
                "\n## What one setting changes\n\nFor cells that differ in one setting: the per-seed difference (second value minus first) of a run's figure, paired by seed, with its t-interval. An interval that excludes 0 says the setting moves that figure.\n\n| Change | Figure | Difference [95% CI] |\n|---|---|---:|\n{contrasts}"
            );
        }
        text
    }
}

fn csv_row(cells: &[String]) -> String {
    cells
        .iter()
        .map(|c| {
            if c.contains([',', '"', '\n']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrasts_pair_runs_by_seed_between_cells_that_differ_in_one_setting() {
        let cell = |cue: &str, pretrain: &str| Cell {
            name: format!("cue={cue} pretrain={pretrain}"),
            folder: String::new(),
            settings: vec![
                ("cue".to_string(), cue.to_string()),
                ("pretrain".to_string(), pretrain.to_string()),
            ],
        };
        let cells = vec![cell("0", "no"), cell("0.9", "no"), cell("0.9", "yes")];
        let run = |cell: usize, seed: u64, delta: f64| RunFigures {
            cell,
            seed,
            values: [("x".to_string(), delta)].into_iter().collect(),
        };
        let summary = SweepSummary {
            cells,
            runs: vec![
                run(0, 1, 0.10),
                run(0, 2, 0.20),
                run(1, 1, 0.05),
                run(1, 2, 0.13),
                run(2, 1, 0.0),
                run(2, 2, 0.0),
            ],
            stats: vec![Default::default(); 3],
            in_distribution: None,
            cross_site: None,
            tests: vec![],
        };
        let contrasts = summary.contrasts("x");
        // Cells 0 and 2 differ in two settings, so only two pairs are contrasted.
        assert_eq!(contrasts.len(), 2);
        let (label, first) = &contrasts[0];
        assert_eq!(label, "cue: 0 → 0.9 (at pretrain=no)");
        // Per-seed differences −0.05 and −0.07.
        assert!((first.mean + 0.06).abs() < 1e-12);
        assert!((first.high - first.mean - 12.706 * 0.01).abs() < 1e-9);
        assert_eq!(contrasts[1].0, "pretrain: no → yes (at cue=0.9)");
    }

    #[test]
    fn intervals_match_the_t_distribution() {
        // scipy.stats.t.interval(0.95, 2, loc=2, scale=stats.sem([1, 2, 3])) = (-0.484, 4.484)
        let s = SeedInterval::of(&[1.0, 2.0, 3.0]);
        assert_eq!(s.n, 3);
        assert!((s.mean - 2.0).abs() < 1e-12);
        assert!(
            (s.low + 0.484).abs() < 1e-3 && (s.high - 4.484).abs() < 1e-3,
            "{s:?}"
        );
        assert_eq!(s.direction(), Direction::Unclear);
        assert_eq!(
            SeedInterval::of(&[0.1, 0.11, 0.12]).direction(),
            Direction::Up
        );
        assert_eq!(SeedInterval::of(&[0.1]).direction(), Direction::Unknown);
        assert!(SeedInterval::of(&[f64::NAN, 1.0]).low.is_nan());
    }
}
