//! Sweeps: one study configuration run over a grid of settings × seeds, so that a claim rests
//! on intervals over seeds instead of one run. Each cell and seed is a whole study in its own
//! folder (`<out>/<cell>/seed-<n>`); runs that draw the same synthetic sites share one copy
//! (`<out>/sites/<fingerprint>`); a killed sweep continues where it stopped; at the end
//! `sweep.md`, `sweep.csv`, `runs.csv` and the scatter `sweep.png` summarise every run.
//!
//! ```no_run
//! use chex_grpo::sweep::{SweepPlan, run_sweep};
//!
//! let plan = SweepPlan {
//!     config: "configs/tiny-cpu.toml".into(),
//!     overrides: vec![],
//!     grid: vec!["data.synthetic.cue=0,0.9".parse()?],
//!     seeds: vec![1, 2, 3],
//!     out: "outputs/sweep-cue".into(),
//! };
//! let summary = run_sweep(&plan)?;
//! println!("{}", summary.verdict(0));
//! # Ok::<(), chex_grpo::Error>(())
//! ```

pub mod figure;
pub mod grid;
pub mod summary;

use std::fmt::Write as _;

pub use grid::{Cell, GridAxis, PlannedRun, SweepPlan};
pub use summary::{RunFigures, SeedInterval, SweepSummary};

use crate::error::{Error, Result};
use crate::study::evaluate::metrics_path;
use crate::study::{StudyConfig, run_study};

/// Whether a run's study has finished: its report written and its last checkpoint scored on
/// every test set.
pub fn finished(config: &StudyConfig) -> bool {
    config.out.join("report.md").exists()
        && config
            .data
            .tests
            .iter()
            .all(|t| metrics_path(&config.out, "grpo", &t.name).exists())
}

/// A run folder that already holds another configuration is never overwritten.
fn check_folder(config: &StudyConfig) -> Result<bool> {
    let saved = config.out.join("config.toml");
    if !saved.exists() {
        return Ok(false);
    }
    let earlier = StudyConfig::from_file(&saved, &[])?;
    if earlier.to_toml()? != config.to_toml()? {
        return Err(Error::setting(
            "sweep",
            format!(
                "{} holds a run of a different configuration; give the sweep another --out, \
                 or remove that folder",
                config.out.display()
            ),
        ));
    }
    Ok(true)
}

/// A run's wall time: the sum of its stages in `timings.json`.
fn run_seconds(out: &std::path::Path) -> Option<f64> {
    let text = std::fs::read_to_string(out.join("timings.json")).ok()?;
    let stages: Vec<(String, f64)> = serde_json::from_str(&text).ok()?;
    Some(stages.iter().map(|(_, s)| s).sum())
}

/// `3 min 20 s`.
fn minutes(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// Run every cell and seed of `plan` not yet finished, then write the summary files.
pub fn run_sweep(plan: &SweepPlan) -> Result<SweepSummary> {
    let runs = plan.runs()?;
    let cells = plan.cells();
    std::fs::create_dir_all(&plan.out).map_err(|e| Error::io(&plan.out, e))?;
    // Every folder is checked before anything runs; a run with a folder continues it.
    let resume = runs
        .iter()
        .map(|r| check_folder(&r.config))
        .collect::<Result<Vec<bool>>>()?;
    plan.save()?;
    let total = runs.len();
    let mut done = runs.iter().filter(|r| finished(&r.config)).count();
    for (index, run) in runs.iter().enumerate() {
        if finished(&run.config) {
            continue;
        }
        let left = total - done;
        // From the finished runs' own stage times, so runs finished by an earlier invocation
        // count and a run that only rewrote its report does not.
        let spent: Vec<f64> = runs
            .iter()
            .filter(|r| finished(&r.config))
            .filter_map(|r| run_seconds(&r.config.out))
            .collect();
        let estimate = if spent.is_empty() {
            String::new()
        } else {
            let mean = spent.iter().sum::<f64>() / spent.len() as f64;
            format!("; about {} left", minutes(mean * left as f64))
        };
        println!(
            "\n=== sweep run {} of {total}: {} seed {} ({done} of {total} done{estimate}) ===",
            index + 1,
            cells[run.cell].name,
            run.seed,
        );
        run_study(&run.config, resume[index])?;
        done += 1;
    }
    let figures = runs
        .iter()
        .map(|r| summary::read_run(&r.config, r.cell, r.seed))
        .collect::<Result<Vec<_>>>()?;
    let config = &runs[0].config;
    let summary = SweepSummary::new(cells, figures, config);
    write_summary(plan, &summary)?;
    Ok(summary)
}

/// `sweep.md`, `sweep.csv`, `runs.csv` and `sweep.png` in the sweep's folder.
pub fn write_summary(plan: &SweepPlan, summary: &SweepSummary) -> Result<()> {
    let write = |name: &str, text: &str| {
        let path = plan.out.join(name);
        chex_data::write_atomic(&path, text.as_bytes()).map_err(|e| Error::io(&path, e))
    };
    let title = plan.config.display().to_string();
    let mut markdown = summary.markdown(&title, &plan.seeds);
    if let (Some(id), Some(cross)) = (&summary.in_distribution, &summary.cross_site) {
        let groups: Vec<figure::ScatterGroup> = summary
            .cells
            .iter()
            .enumerate()
            .map(|(c, cell)| figure::ScatterGroup {
                name: cell.name.clone(),
                points: summary
                    .runs
                    .iter()
                    .filter(|r| r.cell == c)
                    .filter_map(|r| {
                        Some((
                            *r.values.get(&summary::delta_name(id))?,
                            *r.values.get(&summary::delta_name(cross))?,
                        ))
                    })
                    .collect(),
            })
            .collect();
        figure::delta_scatter(
            &plan.out.join("sweep.png"),
            // The compiled-in font has no arrow glyph.
            "Change of macro-F1 from SFT to GRPO, one point per run",
            &format!("Δ macro-F1 in distribution ({id})"),
            &format!("Δ macro-F1 cross-site ({cross})"),
            &groups,
        )?;
        markdown.push_str("\n![Δ in distribution against Δ cross-site](sweep.png)\n");
    }
    let mut settings = String::from("\n## Runs\n\n");
    for cell in &summary.cells {
        let _ = writeln!(
            settings,
            "- `{}/`: {}",
            cell.folder,
            if cell.settings.is_empty() {
                "the base configuration".to_string()
            } else {
                cell.name.clone()
            }
        );
    }
    let _ = writeln!(
        settings,
        "\nBase configuration `{}`{}. Each run's own report is `<cell>/seed-<n>/report.md`.",
        plan.config.display(),
        if plan.overrides.is_empty() {
            String::new()
        } else {
            format!(" with `--set {}`", plan.overrides.join(" --set "))
        }
    );
    markdown.push_str(&settings);
    write("sweep.md", &markdown)?;
    write("sweep.csv", &summary.csv())?;
    let mut runs_csv = String::from("cell,seed,figure,value\n");
    for run in &summary.runs {
        for (name, value) in &run.values {
            let _ = writeln!(
                runs_csv,
                "\"{}\",{},\"{name}\",{value}",
                summary.cells[run.cell].name, run.seed
            );
        }
    }
    write("runs.csv", &runs_csv)
}
