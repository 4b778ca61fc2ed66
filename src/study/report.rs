//! The study report, built only from what a run left in its output folder (`config.toml`,
//! `metrics/`, `predictions/`, the training logs), so `chex report` can rebuild it and its
//! numbers are exactly the metrics files' numbers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chex_metrics::{
    Evaluation, PairedDifference, ZeroDivision, markdown_f1_table, paired_bootstrap, per_label_csv,
    summary_csv,
};
use serde::{Deserialize, Serialize};

use super::config::{StudyConfig, TestRole};
use super::cue::{PredictionRate, cue_reliance};
use super::evaluate::{
    CHECKPOINTS, Prediction, bootstrap_config, metrics_path, prediction_matrices, predictions_path,
    read_predictions,
};
use super::plots::{Panel, Series, grouped_bars, line_panels, rolling_mean};
use crate::error::{Error, Result, to_json};
use crate::training::log::read_jsonl;
use crate::training::records::{GrpoStepRecord, SftLogRecord};

/// One paired comparison between two checkpoints on one test set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub test: String,
    pub role: TestRole,
    pub from: String,
    pub to: String,
    pub macro_f1: PairedDifference,
    pub micro_f1: PairedDifference,
}

/// What the report says, for printing.
pub struct Report {
    pub path: PathBuf,
    /// Per test set: its title and its per-label table (Markdown).
    pub tables: Vec<(String, String)>,
    /// The generalization verdict in one paragraph.
    pub verdict: String,
    /// Every file written.
    pub files: Vec<PathBuf>,
}

fn write(path: &Path, text: &str, files: &mut Vec<PathBuf>) -> Result<()> {
    chex_data::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))?;
    files.push(path.to_path_buf());
    Ok(())
}

/// A checkpoint's scores on one test set, as `metrics/{checkpoint}-{test}.json` holds them.
pub(crate) fn read_evaluation(path: &Path) -> Result<Evaluation> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn signed(d: &PairedDifference) -> String {
    format!(
        "{:+.3} [{:+.3}, {:+.3}], p = {:.3}",
        d.delta, d.interval.low, d.interval.high, d.p_value
    )
}

fn significant(d: &PairedDifference) -> bool {
    d.interval.low > 0.0 || d.interval.high < 0.0
}

/// The plain-language verdict on SFT → GRPO.
fn verdict(comparisons: &[Comparison], collapsed: &[(String, String)]) -> String {
    let pick = |role: TestRole| {
        comparisons
            .iter()
            .find(|c| c.role == role && c.from == "sft" && c.to == "grpo")
    };
    let (Some(inside), Some(cross)) = (pick(TestRole::InDistribution), pick(TestRole::CrossSite))
    else {
        return "The generalization check needs SFT and GRPO scores on an in-distribution and a \
                cross-site test set; this run does not have both."
            .into();
    };
    let change = |d: &PairedDifference| {
        let how = if d.delta > 0.0 {
            "rose"
        } else if d.delta < 0.0 {
            "fell"
        } else {
            "did not change"
        };
        format!(
            "{how} ({:+.3}, 95% CI [{:+.3}, {:+.3}])",
            d.delta, d.interval.low, d.interval.high
        )
    };
    let mut text = format!(
        "From SFT to GRPO, macro-F1 {} in distribution ({}) and {} cross-site ({}). ",
        change(&inside.macro_f1),
        inside.test,
        change(&cross.macro_f1),
        cross.test
    );
    let paradox = inside.macro_f1.delta > 0.0 && cross.macro_f1.delta < 0.0;
    let both_significant = significant(&inside.macro_f1) && significant(&cross.macro_f1);
    text.push_str(match (paradox, both_significant) {
        (true, true) => {
            "**The paradox appeared in this run**: GRPO gained in distribution and lost \
             cross-site, and both paired-bootstrap intervals exclude zero."
        }
        (true, false) => {
            "**The paradox's direction appeared in this run** (up in distribution, down \
             cross-site), but at least one paired-bootstrap interval includes zero, so this run \
             cannot tell it from resampling noise."
        }
        (false, _) => {
            "**The paradox did not appear in this run**: GRPO did not both gain in distribution \
             and lose cross-site."
        }
    });
    for test in [&inside.test, &cross.test] {
        let same: Vec<&str> = collapsed
            .iter()
            .filter(|(t, c)| t == test && (c == "SFT" || c == "GRPO"))
            .map(|(_, c)| c.as_str())
            .collect();
        if !same.is_empty() {
            text.push_str(&format!(
                " Caution: on {test}, {} gave every image the same answer, so the scores there \
                 reflect that one answer, not reading the images.",
                same.join(" and ")
            ));
        }
    }
    text
}

/// One curve: `(x, y)` for every record that has a `y`.
fn series<R>(
    records: &[R],
    name: &str,
    x: impl Fn(&R) -> f64,
    y: impl Fn(&R) -> Option<f64>,
) -> Option<Series> {
    let points: Vec<(f64, f64)> = records.iter().filter_map(|r| Some((x(r), y(r)?))).collect();
    (!points.is_empty()).then(|| (name.to_string(), points))
}

/// A named curve of the GRPO log: the metric it reads from each record.
type GrpoCurve<'a> = (&'a str, fn(&GrpoStepRecord) -> Option<f64>);

/// A GRPO panel of the curves `curves` over steps.
fn grpo_panel(records: &[GrpoStepRecord], title: &str, curves: &[GrpoCurve<'_>]) -> Panel {
    Panel {
        title: title.into(),
        x_label: "GRPO step".into(),
        series: curves
            .iter()
            .filter_map(|(name, y)| series(records, name, |r| r.step as f64, y))
            .collect(),
    }
}

fn training_figures(out: &Path, files: &mut Vec<PathBuf>) -> Result<Vec<String>> {
    let figures = out.join("figures");
    let mut shown = Vec::new();
    let grpo_log = out.join("grpo_log.jsonl");
    if grpo_log.exists() {
        let records: Vec<GrpoStepRecord> = read_jsonl(&grpo_log)?;
        let mut reward = grpo_panel(&records, "Mean reward", &[("per step", |r| r.reward)]);
        if let Some((_, points)) = reward.series.first() {
            let smooth = rolling_mean(points, 10);
            reward.series.push(("10-step mean".into(), smooth));
        }
        let panels = vec![
            reward,
            grpo_panel(&records, "KL to the SFT policy", &[("kl", |r| r.kl)]),
            grpo_panel(
                &records,
                "Entropy (nats / token)",
                &[("entropy", |r| r.entropy)],
            ),
            grpo_panel(
                &records,
                "Completion length (tokens)",
                &[("mean length", |r| Some(r.completions_mean_length))],
            ),
            grpo_panel(
                &records,
                "Clip and truncation fractions",
                &[
                    ("low", |r| r.clip_ratio_low_mean),
                    ("high", |r| r.clip_ratio_high_mean),
                    ("region", |r| r.clip_ratio_region_mean),
                    ("truncated", |r| Some(r.completions_clipped_ratio)),
                ],
            ),
            grpo_panel(
                &records,
                "Validation macro-F1",
                &[("macro-F1", |r| r.eval_macro_f1)],
            ),
        ];
        let path = figures.join("grpo_curves.png");
        line_panels(&path, "GRPO training", &panels, 3)?;
        files.push(path);
        shown.push("![GRPO training curves](figures/grpo_curves.png)".into());
    }
    for (stage, title) in [
        ("pretrain", "Pretraining (label-only answers)"),
        ("sft", "SFT"),
    ] {
        let log = out.join(format!("{stage}_log.jsonl"));
        if !log.exists() {
            continue;
        }
        let records: Vec<SftLogRecord> = read_jsonl(&log)?;
        let steps: Vec<_> = records
            .iter()
            .filter_map(|r| match r {
                SftLogRecord::Step(s) => Some(s),
                SftLogRecord::Epoch(_) => None,
            })
            .collect();
        let epochs: Vec<_> = records
            .iter()
            .filter_map(|r| match r {
                SftLogRecord::Epoch(e) => Some(e),
                SftLogRecord::Step(_) => None,
            })
            .collect();
        let panels = vec![
            Panel {
                title: "Training loss per step".into(),
                x_label: "optimizer step".into(),
                series: series(&steps, "train", |r| r.step as f64, |r| r.loss)
                    .into_iter()
                    .collect(),
            },
            Panel {
                title: "Loss per epoch".into(),
                x_label: "epoch".into(),
                series: [
                    series(&epochs, "train", |r| r.epoch as f64, |r| r.train_loss),
                    series(&epochs, "validation", |r| r.epoch as f64, |r| r.eval_loss),
                ]
                .into_iter()
                .flatten()
                .collect(),
            },
        ];
        let path = figures.join(format!("{stage}_loss.png"));
        line_panels(&path, title, &panels, 2)?;
        files.push(path);
        shown.push(format!("![{title} loss](figures/{stage}_loss.png)"));
    }
    Ok(shown)
}

/// The last three components of an image path (patient / study / file for CheXpert).
fn short_path(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts[parts.len().saturating_sub(3)..].join("/")
}

fn one_line(text: &str) -> String {
    let flat = text.replace('\n', " ⏎ ").replace('|', "\\|");
    if flat.chars().count() > 600 {
        format!("{}…", flat.chars().take(600).collect::<String>())
    } else {
        flat
    }
}

/// A unit enum as configs spell it (`structured_steps`, `hard`).
fn serde_name(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Rebuild the report of the run in `out` from its files.
pub fn write_report(out: &Path) -> Result<Report> {
    let config = StudyConfig::from_file(&out.join("config.toml"), &[])?;
    let bootstrap = bootstrap_config(&config);
    let mut files = Vec::new();
    let mut tables = Vec::new();
    let mut sections = Vec::new();
    let mut comparisons = Vec::new();
    let mut parse_rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut traces = String::new();
    let mut collapsed: Vec<(String, String)> = Vec::new();

    for test in &config.data.tests {
        let mut columns: Vec<(&str, Evaluation, Vec<Prediction>)> = Vec::new();
        for (key, name) in CHECKPOINTS {
            let metrics = metrics_path(out, key, &test.name);
            if metrics.exists() {
                let predictions = read_predictions(&predictions_path(out, key, &test.name))?;
                columns.push((name, read_evaluation(&metrics)?, predictions));
            }
        }
        if columns.is_empty() {
            continue;
        }
        let view: Vec<(&str, &Evaluation)> = columns.iter().map(|(n, e, _)| (*n, e)).collect();
        let table = markdown_f1_table(&view)?;
        let metrics_dir = out.join("metrics");
        write(
            &metrics_dir.join(format!("{}-per-label.csv", test.name)),
            &per_label_csv(&view)?,
            &mut files,
        )?;
        write(
            &metrics_dir.join(format!("{}-summary.csv", test.name)),
            &summary_csv(&view),
            &mut files,
        )?;
        let labels: Vec<String> = columns[0]
            .1
            .per_label
            .iter()
            .map(|l| l.label.clone())
            .collect();
        let figure = out
            .join("figures")
            .join(format!("per_label_f1-{}.png", test.name));
        grouped_bars(
            &figure,
            &format!("Per-label F1 — {}", test.title),
            &labels,
            &columns
                .iter()
                .map(|(n, e, _)| (n.to_string(), e.per_label.iter().map(|l| l.f1).collect()))
                .collect::<Vec<_>>(),
        )?;
        files.push(figure);

        let mut deltas = String::new();
        for (from, to) in [("base", "sft"), ("sft", "grpo")] {
            let find = |key: &str| {
                let name = CHECKPOINTS.iter().find(|(k, _)| *k == key).map(|c| c.1);
                columns.iter().find(|(n, _, _)| Some(*n) == name)
            };
            let (Some(a), Some(b)) = (find(from), find(to)) else {
                continue;
            };
            let same_images =
                a.2.len() == b.2.len() && a.2.iter().zip(&b.2).all(|(x, y)| x.image == y.image);
            if !same_images {
                return Err(Error::Predictions {
                    path: predictions_path(out, to, &test.name),
                    message: format!(
                        "{} rows do not match the {} rows of {} image for image; \
                         evaluate both checkpoints again (`chex eval`)",
                        b.2.len(),
                        a.2.len(),
                        predictions_path(out, from, &test.name).display()
                    ),
                });
            }
            let (truth, predicted_a, _) = prediction_matrices(&a.2, &labels);
            let (_, predicted_b, _) = prediction_matrices(&b.2, &labels);
            let (macro_f1, micro_f1) = paired_bootstrap(
                &truth,
                &predicted_a,
                &predicted_b,
                ZeroDivision::Zero,
                &bootstrap,
            )?;
            let _ = writeln!(
                deltas,
                "| {} → {} | {} | {} |",
                a.0,
                b.0,
                signed(&macro_f1),
                signed(&micro_f1)
            );
            comparisons.push(Comparison {
                test: test.name.clone(),
                role: test.role,
                from: from.into(),
                to: to.into(),
                macro_f1,
                micro_f1,
            });
        }
        let samples = columns[0].1.samples;
        let mut section = format!(
            "## {}\n\n{samples} images, {} labels; 95% bootstrap intervals over {} resamples.\n\n{table}\n\n![Per-label F1](figures/per_label_f1-{}.png)\n",
            test.title,
            labels.len(),
            bootstrap.resamples,
            test.name
        );
        if !deltas.is_empty() {
            section.push_str(&format!(
                "\nPaired-bootstrap differences (same images resampled for both checkpoints):\n\n| Change | Δ macro-F1 [95% CI] | Δ micro-F1 [95% CI] |\n|---|---:|---:|\n{deltas}"
            ));
        }
        sections.push(section);
        tables.push((test.title.clone(), table));

        for (name, evaluation, predictions) in &columns {
            // A policy that gives every image the same answer has collapsed onto it; its F1 says
            // nothing about reading images, so the count is shown beside the parse failures.
            let distinct: std::collections::BTreeSet<Vec<String>> = predictions
                .iter()
                .filter(|p| p.parsed)
                .map(|p| p.predicted.clone())
                .collect();
            if distinct.len() <= 1 && predictions.len() > 1 {
                collapsed.push((test.name.clone(), name.to_string()));
            }
            let rate = format!(
                "{:.1}% ({} of {}); {} distinct",
                100.0 * evaluation.unparseable_rate,
                predictions.iter().filter(|p| !p.parsed).count(),
                predictions.len(),
                distinct.len()
            );
            match parse_rows.iter_mut().find(|(n, _)| n == name) {
                Some((_, cells)) => cells.push(rate),
                None => parse_rows.push((name.to_string(), vec![rate])),
            }
        }
        if test.role == TestRole::InDistribution && traces.is_empty() {
            let n = columns[0].2.len();
            let shown = config.eval.traces.min(n);
            // The same images for every checkpoint, spread over the test set.
            let picks: Vec<usize> = (0..shown).map(|i| i * n / shown.max(1)).collect();
            for (name, _, predictions) in &columns {
                let _ = writeln!(traces, "### {name}\n");
                for &i in &picks {
                    let p = &predictions[i];
                    let _ = writeln!(
                        traces,
                        "- `{}` — truth: {}; parsed: {}; reward {:.2}\n\n  > {}\n",
                        short_path(&p.image),
                        p.truth.join(", "),
                        if p.parsed {
                            if p.predicted.is_empty() {
                                "(no scored label)".to_string()
                            } else {
                                p.predicted.join(", ")
                            }
                        } else {
                            "unparseable".into()
                        },
                        p.reward,
                        one_line(&p.completion)
                    );
                }
            }
        }
    }
    if sections.is_empty() {
        return Err(Error::NoMetrics {
            out: out.to_path_buf(),
        });
    }
    let comparisons_json = to_json(&comparisons, &out.join("metrics/comparisons.json"), true)?;
    write(
        &out.join("metrics").join("comparisons.json"),
        &comparisons_json,
        &mut files,
    )?;
    let verdict = verdict(&comparisons, &collapsed);
    let figures = training_figures(out, &mut files)?;
    let cue = cue_section(&config, out, &mut files)?;

    let mut parse_table = String::from("| Checkpoint |");
    for test in &config.data.tests {
        let _ = write!(parse_table, " {} |", test.name);
    }
    parse_table.push_str("\n|---|");
    parse_table.push_str(&"---:|".repeat(config.data.tests.len()));
    parse_table.push('\n');
    for (name, cells) in &parse_rows {
        let _ = writeln!(parse_table, "| {name} | {} |", cells.join(" | "));
    }
    let model = config
        .model
        .pretrained
        .as_ref()
        .map(|p| p.display().to_string())
        .or_else(|| {
            config
                .model
                .preset
                .as_ref()
                .map(|p| format!("preset `{p}`"))
        })
        .unwrap_or_default();
    let timings = std::fs::read_to_string(out.join("timings.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<(String, f64)>>(&t).ok())
        .map(|t| {
            t.iter()
                .map(|(stage, s)| format!("{stage} {s:.0} s"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let mut report = format!(
        "# ChexReason study — {}\n\nModel: {model}, {} weights; prompt `{}`; device `{}`; seed {}. {} Draws from the training site: {} SFT, {} RL, {} validation images. SFT: {} epochs at most, learning rate {}, {}. GRPO: {} steps, G = {}, {} prompts per step, β = {}, learning rate {}, rewards {}.{}\n\nThe configuration is in `config.toml`; metrics in `metrics/`; every answer in `predictions/`.\n\n## Verdict\n\n{verdict}\n\n{}\n## Parse failures and distinct answers\n\nShare of answers with no answer block (they count as predicting nothing), and how many distinct label sets the parsed answers name: 1 means the checkpoint gives every image the same answer.\n\n{parse_table}\n## Training\n\n{}\n\n## Sampled reasoning traces\n\nThe same in-distribution images for every checkpoint.\n\n{traces}",
        config.name,
        config.model_dtype()?,
        serde_name(&config.model.prompt),
        config.device,
        config.seed,
        base_description(&config),
        config.data.sft_size,
        config.data.rl_size,
        config.data.validation_size,
        config.sft.epochs,
        config.sft.learning_rate,
        if config.sft.lora.is_some() {
            "LoRA"
        } else {
            "every weight"
        },
        config.grpo.steps,
        config.grpo.group_size,
        config.grpo.prompts_per_step,
        config.grpo.loss.beta,
        config.grpo.learning_rate,
        config
            .grpo
            .rewards
            .iter()
            .map(|r| format!("`{}` × {}", r.name, r.weight))
            .collect::<Vec<_>>()
            .join(" + "),
        if timings.is_empty() {
            String::new()
        } else {
            format!(" Wall time: {timings}.")
        },
        sections.join("\n"),
        if figures.is_empty() {
            "No training logs in this folder.".to_string()
        } else {
            figures.join("\n\n")
        },
    );
    if !report.ends_with('\n') {
        report.push('\n');
    }
    report.push_str(&cue);
    report.push_str(&data_section(out));
    let path = out.join("report.md");
    write(&path, &report, &mut files)?;
    Ok(Report {
        path,
        tables,
        verdict,
        files,
    })
}

/// What the base column measures: the untrained model, or the model after the pretrain stage.
fn base_description(config: &StudyConfig) -> String {
    if config.model.pretrained.is_some() {
        format!(
            "Base: the pretrained checkpoint as given{}.",
            if config.pretrain.enabled {
                " (the pretrain stage, which stands in for pretraining, is skipped)"
            } else {
                ""
            }
        )
    } else if config.pretrains() {
        format!(
            "Base: the preset after the pretrain stage ({} images of the pretraining site, \
             label-only answers, {} epochs at most, learning rate {}), the stand-in for a \
             pretrained model's broad exposure.",
            config.pretrain.size,
            config.pretrain.training.epochs,
            config.pretrain.training.learning_rate
        )
    } else {
        "Base: the preset initialised at random (no pretrain stage), which cannot answer yet."
            .into()
    }
}

/// The spurious-cue table (when the test sets are synthetic sites) and `metrics/cue.json`.
fn cue_section(config: &StudyConfig, out: &Path, files: &mut Vec<PathBuf>) -> Result<String> {
    let mut all = Vec::new();
    for (key, _) in CHECKPOINTS {
        all.extend(cue_reliance(config, out, key)?);
    }
    let Some(first) = all.first() else {
        return Ok(String::new());
    };
    let path = out.join("metrics").join("cue.json");
    write(&path, &to_json(&all, &path, true)?, files)?;
    let percent =
        |r: &PredictionRate| format!("{:.1}% ({} of {})", 100.0 * r.rate(), r.predicted, r.films);
    let mut text = format!(
        "\n## The spurious cue\n\nHow often each checkpoint predicts {cause} on films without {cause}, with and without {cue} (from the generator's truth, so {cue} counts even where the test set's labels do not score it). A reader that ignores the cue has a gap near 0; a positive gap is the shortcut learned where {cause} came with {cue}.\n\n| Checkpoint | Test set | with {cue} | without | gap |\n|---|---|---:|---:|---:|\n",
        cause = first.cause,
        cue = first.cue,
    );
    for r in &all {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {:+.3} |",
            r.checkpoint,
            r.test,
            percent(&r.with_cue),
            percent(&r.without_cue),
            r.gap()
        );
    }
    Ok(text)
}

/// What each load read, kept and left out (from `draws.json`), so a skipped image is never
/// silent.
fn data_section(out: &Path) -> String {
    let lines: Vec<String> = std::fs::read_to_string(out.join("draws.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("loaded")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|l| l.as_str().map(|l| format!("- {l}")))
                    .collect()
            })
        })
        .unwrap_or_default();
    if lines.is_empty() {
        return String::new();
    }
    format!("\n## Data\n\n{}\n", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use chex_metrics::Interval;

    use super::*;

    fn change(test: &str, role: TestRole, delta: f64, low: f64, high: f64) -> Comparison {
        let d = PairedDifference {
            delta,
            interval: Interval { low, high },
            p_value: 0.5,
        };
        Comparison {
            test: test.into(),
            role,
            from: "sft".into(),
            to: "grpo".into(),
            macro_f1: d,
            micro_f1: d,
        }
    }

    #[test]
    fn the_verdict_separates_a_significant_paradox_from_a_direction_and_from_none() {
        let inside = change("a", TestRole::InDistribution, 0.06, 0.02, 0.1);
        let significant = verdict(
            &[
                inside.clone(),
                change("b", TestRole::CrossSite, -0.05, -0.09, -0.01),
            ],
            &[],
        );
        assert!(significant.contains("**The paradox appeared in this run**"));
        let noisy = verdict(
            &[
                inside.clone(),
                change("b", TestRole::CrossSite, -0.05, -0.09, 0.02),
            ],
            &[],
        );
        assert!(noisy.contains("direction appeared") && noisy.contains("cannot tell"));
        let none = verdict(
            &[inside, change("b", TestRole::CrossSite, 0.0, 0.0, 0.0)],
            &[("b".into(), "GRPO".into())],
        );
        assert!(none.contains("did not appear") && none.contains("did not change"));
        assert!(none.contains("on b, GRPO gave every image the same answer"));
        assert!(verdict(&[], &[]).contains("does not have both"));
    }
}
