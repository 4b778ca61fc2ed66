//! `chex sweep` at miniature size: 2 cells × 2 seeds, the aggregation checked against every
//! run's own metrics files, a killed sweep continuing where it stopped, and a folder holding
//! another configuration refused.

mod common;

use std::path::{Path, PathBuf};

use chex_grpo::study::evaluate::metrics_path;
use chex_grpo::sweep::{SeedInterval, SweepPlan, run_sweep};

fn plan(out: &Path) -> SweepPlan {
    SweepPlan {
        config: Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-cpu.toml"),
        overrides: common::MINIATURE
            .iter()
            .chain(&["eval.traces=1", "pretrain.enabled=true"])
            .map(|s| s.to_string())
            .collect(),
        grid: vec!["data.synthetic.cue=0,0.9".parse().unwrap()],
        seeds: vec![7, 8],
        out: out.to_path_buf(),
    }
}

fn macro_f1(path: &Path) -> f64 {
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    value["macro_f1"].as_f64().unwrap()
}

/// `sweep.csv` rows as (cell, figure) → (mean, low, high, n).
fn csv_rows(path: &Path) -> Vec<(String, String, f64, f64, f64, usize)> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (cell, figure, mean, low, high, seeds) = (
        column("cell"),
        column("figure"),
        column("mean"),
        column("ci_low"),
        column("ci_high"),
        column("seeds"),
    );
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (
                r[cell].to_string(),
                r[figure].to_string(),
                r[mean].parse().unwrap(),
                r[low].parse().unwrap(),
                r[high].parse().unwrap(),
                r[seeds].parse().unwrap(),
            )
        })
        .collect()
}

fn run_dirs(out: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["cue=0", "cue=0.9"]
        .iter()
        .flat_map(|cell| [7, 8].map(|s| out.join(cell).join(format!("seed-{s}"))))
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn a_miniature_sweep_aggregates_its_runs_and_continues_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let plan = plan(&out);
    let summary = run_sweep(&plan).unwrap();
    assert_eq!(summary.cells.len(), 2);
    assert_eq!(summary.runs.len(), 4);
    for run in run_dirs(&out) {
        assert!(run.join("report.md").exists(), "{}", run.display());
        assert!(run.join("checkpoints/pretrain-best/state.json").exists());
    }
    // Sites are shared by runs that draw the same ones: one set per seed and cue strength.
    assert_eq!(std::fs::read_dir(out.join("sites")).unwrap().count(), 4);
    for name in [
        "sweep.md",
        "sweep.csv",
        "runs.csv",
        "sweep.png",
        "sweep.json",
    ] {
        assert!(out.join(name).exists(), "{name}");
    }

    // Every aggregate is the mean and t-interval of the runs' own metrics files.
    let rows = csv_rows(&out.join("sweep.csv"));
    for (cell, folder) in [
        ("data.synthetic.cue=0", "cue=0"),
        ("data.synthetic.cue=0.9", "cue=0.9"),
    ] {
        for test in ["site-a", "site-b"] {
            let per_seed = |checkpoint: &str| -> Vec<f64> {
                [7, 8]
                    .iter()
                    .map(|s| {
                        let run = out.join(folder).join(format!("seed-{s}"));
                        macro_f1(&metrics_path(&run, checkpoint, test))
                    })
                    .collect()
            };
            let grpo = per_seed("grpo");
            let sft = per_seed("sft");
            let delta: Vec<f64> = grpo.iter().zip(&sft).map(|(g, s)| g - s).collect();
            for (figure, values) in [
                (format!("{test} macro-F1 grpo"), grpo.clone()),
                (format!("{test} macro-F1 sft"), sft.clone()),
                (format!("{test} Δ macro-F1 SFT→GRPO"), delta),
            ] {
                let row = rows
                    .iter()
                    .find(|r| r.0 == cell && r.1 == figure)
                    .unwrap_or_else(|| panic!("no row for {cell} {figure}"));
                let expected = SeedInterval::of(&values);
                assert_eq!(row.5, 2);
                assert!((row.2 - expected.mean).abs() < 1e-12, "{figure}: {row:?}");
                let mean = (values[0] + values[1]) / 2.0;
                assert!((row.2 - mean).abs() < 1e-12);
                // Two seeds: mean ± 12.706 · |a − b| / 2.
                let half = 12.706 * (values[0] - values[1]).abs() / 2.0;
                assert!((row.4 - row.2 - half).abs() < 1e-9, "{figure}: {row:?}");
                assert!((row.2 - row.3 - half).abs() < 1e-9, "{figure}: {row:?}");
            }
        }
        assert!(
            rows.iter()
                .any(|r| r.0 == cell && r.1 == "site-b Δ cue gap SFT→GRPO"),
            "the cue gap is summarised for the cross-site set"
        );
    }
    let markdown = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(markdown.contains("## Verdicts") && markdown.contains("data.synthetic.cue: 0 → 0.9"));

    // A sweep killed inside its last run: that run's results are gone; the rerun redoes only it
    // and ends with the same summary.
    let csv_before = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let runs = run_dirs(&out);
    let untouched = runs[0].join("report.md");
    let modified = std::fs::metadata(&untouched).unwrap().modified().unwrap();
    let last = runs.last().unwrap();
    std::fs::remove_file(last.join("report.md")).unwrap();
    std::fs::remove_file(metrics_path(last, "grpo", "site-b")).unwrap();
    run_sweep(&plan).unwrap();
    assert_eq!(
        std::fs::metadata(&untouched).unwrap().modified().unwrap(),
        modified,
        "a finished run is not run again"
    );
    assert!(last.join("report.md").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("sweep.csv")).unwrap(),
        csv_before
    );

    // The same folders under another configuration are refused, not overwritten.
    let mut changed = plan.clone();
    changed.overrides.push("grpo.steps=3".into());
    let e = run_sweep(&changed).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("different configuration"), "{e}");
}
