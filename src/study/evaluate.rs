//! Scoring one checkpoint on every test set: greedy answers, parsed labels, ChexReason's hard
//! reward per answer, written as predictions JSONL; metrics with bootstrap intervals written as
//! JSON.

use std::path::{Path, PathBuf};

use chex_data::labels::CHEXPERT_LABELS;
use chex_metrics::{BootstrapConfig, EvalInput, Evaluation, ZeroDivision, evaluate};
use chex_model::burn::tensor::Device;
use chex_rewards::{HardReward, RewardContext, RewardSet};
use serde::{Deserialize, Serialize};

use super::config::StudyConfig;
use super::data::TestSet;
use crate::error::{Error, Result, to_json};
use crate::evaluation::{AnswerSettings, answer_images};
use crate::progress::progress_bar;
use crate::training::Policy;
use crate::training::log::read_jsonl;

/// The checkpoints a study scores, in order.
pub const CHECKPOINTS: [(&str, &str); 3] = [("base", "Base"), ("sft", "SFT"), ("grpo", "GRPO")];

/// One line of a predictions file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    pub image: PathBuf,
    /// The question the model was asked (the user turn).
    pub prompt: String,
    /// The raw completion, special tokens removed.
    pub completion: String,
    /// Whether an answer block was found.
    pub parsed: bool,
    /// Findings read from the answer, among the test set's labels.
    pub predicted: Vec<String>,
    /// The true findings among the test set's labels.
    pub truth: Vec<String>,
    /// ChexReason's hard reward of this answer.
    pub reward: f64,
    /// Completion length in tokens.
    pub tokens: usize,
}

/// `out/predictions/{checkpoint}-{test}.jsonl`.
pub fn predictions_path(out: &Path, checkpoint: &str, test: &str) -> PathBuf {
    out.join("predictions")
        .join(format!("{checkpoint}-{test}.jsonl"))
}

/// `out/metrics/{checkpoint}-{test}.json`.
pub fn metrics_path(out: &Path, checkpoint: &str, test: &str) -> PathBuf {
    out.join("metrics")
        .join(format!("{checkpoint}-{test}.json"))
}

/// The bootstrap every interval of a study uses.
pub fn bootstrap_config(config: &StudyConfig) -> BootstrapConfig {
    BootstrapConfig {
        resamples: config.eval.bootstrap_resamples,
        seed: config.seed,
        ..Default::default()
    }
}

/// `[image][label]` matrices of truth and prediction over `labels`, read back from predictions.
pub fn prediction_matrices(
    rows: &[Prediction],
    labels: &[String],
) -> (Vec<Vec<bool>>, Vec<Vec<bool>>, Vec<bool>) {
    let matrix = |names: &dyn Fn(&Prediction) -> &Vec<String>| -> Vec<Vec<bool>> {
        rows.iter()
            .map(|r| labels.iter().map(|l| names(r).contains(l)).collect())
            .collect()
    };
    (
        matrix(&|r| &r.truth),
        matrix(&|r| &r.predicted),
        rows.iter().map(|r| r.parsed).collect(),
    )
}

/// Read a predictions file; a malformed line is an error naming the file and line.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    read_jsonl(path)
}

/// Score `labels`-space predictions against the truth; unparseable answers predict nothing.
pub fn score(
    rows: &[Prediction],
    labels: &[String],
    bootstrap: &BootstrapConfig,
) -> Result<Evaluation> {
    let (truth, predicted, parsed) = prediction_matrices(rows, labels);
    Ok(evaluate(
        EvalInput {
            labels,
            truth: &truth,
            predicted: &predicted,
            parsed: Some(&parsed),
        },
        ZeroDivision::Zero,
        Some(bootstrap),
    )?)
}

/// One console line per test set: macro-F1 with its interval, micro-F1, parse failures.
pub fn print_scores(checkpoint: &str, tests: &[TestSet], scores: &[Evaluation]) {
    for (test, e) in tests.iter().zip(scores) {
        println!(
            "{checkpoint} on {}: macro-F1 {:.3} [{}], micro-F1 {:.3}, unparseable {:.1}%",
            test.config.name,
            e.macro_f1,
            e.macro_f1_ci
                .map_or("–".into(), |c| format!("{:.3}, {:.3}", c.low, c.high)),
            e.micro_f1,
            100.0 * e.unparseable_rate
        );
    }
}

/// Answer every test image with `policy`, write the predictions and metrics of `checkpoint`,
/// and return the evaluations in test-set order.
pub fn evaluate_checkpoint(
    policy: &Policy,
    checkpoint: &str,
    tests: &[TestSet],
    config: &StudyConfig,
    device: &Device,
) -> Result<Vec<Evaluation>> {
    let context = RewardContext::default();
    let mut hard = RewardSet::default().with(1.0, HardReward::default());
    let question = policy.variant.question();
    let settings = AnswerSettings::greedy(config.eval.max_new_tokens, config.eval.batch);
    let mut evaluations = Vec::new();
    for test in tests {
        let bar = progress_bar(
            test.examples.len(),
            &format!("evaluating {checkpoint} on {}", test.config.name),
        );
        let mut rows = Vec::with_capacity(test.examples.len());
        for chunk in test.examples.chunks(config.eval.batch) {
            let images: Vec<_> = chunk.iter().map(|e| e.image.as_ref()).collect();
            let truths: Vec<Vec<usize>> =
                chunk.iter().map(|e| e.truth(&context.vocabulary)).collect();
            let answers = answer_images(policy, &images, &truths, &settings, &context, device)?;
            let prepared: Vec<_> = answers.iter().map(|a| a.prepared.clone()).collect();
            let rewards = hard.score_batch(&prepared).total;
            for (answer, reward) in answers.iter().zip(rewards) {
                let example = &chunk[answer.image];
                let found: Vec<&str> = answer
                    .prepared
                    .extracted
                    .labels
                    .iter()
                    .map(|&l| CHEXPERT_LABELS[l])
                    .collect();
                rows.push(Prediction {
                    image: example.path.clone(),
                    prompt: question.clone(),
                    completion: answer.text.clone(),
                    parsed: answer.prepared.parsed.answer.is_some(),
                    predicted: test
                        .labels
                        .iter()
                        .filter(|l| found.contains(&l.as_str()))
                        .cloned()
                        .collect(),
                    truth: test
                        .labels
                        .iter()
                        .zip(&test.truth[rows.len()])
                        .filter(|(_, t)| **t)
                        .map(|(l, _)| l.clone())
                        .collect(),
                    reward,
                    tokens: answer.completion.tokens.len(),
                });
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let evaluation = score(&rows, &test.labels, &bootstrap_config(config))?;
        let predictions = predictions_path(&config.out, checkpoint, &test.config.name);
        let mut jsonl = String::new();
        for row in &rows {
            jsonl.push_str(&to_json(row, &predictions, false)?);
            jsonl.push('\n');
        }
        chex_data::write_atomic(&predictions, jsonl.as_bytes())
            .map_err(|e| Error::io(&predictions, e))?;
        let metrics = metrics_path(&config.out, checkpoint, &test.config.name);
        let json = to_json(&evaluation, &metrics, true)?;
        chex_data::write_atomic(&metrics, json.as_bytes()).map_err(|e| Error::io(&metrics, e))?;
        evaluations.push(evaluation);
    }
    Ok(evaluations)
}
