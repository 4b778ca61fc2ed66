//! The training logs' records, one struct per kind of line, with TRL's metric names. The
//! trainers write them and the report reads them, so renaming a metric is a compile error in
//! both places rather than a curve silently missing from a figure.
//!
//! Floating-point metrics are `Option`s: a value that is not finite (a skipped step's loss)
//! is written as `null` and read back as `None`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `Some(x)` when `x` is finite.
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// One SFT optimizer step (`sft_log.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftStepRecord {
    /// Optimizer steps taken, this one included.
    pub step: usize,
    /// The epoch it belongs to (0-based).
    pub epoch: usize,
    /// Mean completion-token cross-entropy of the step's examples.
    pub loss: Option<f64>,
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: Option<f64>,
    /// Seconds.
    pub step_time: f64,
    /// Whether the step was skipped for a non-finite loss or gradient.
    pub skipped: bool,
    pub skipped_steps: usize,
}

/// The end of an SFT epoch (`sft_log.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftEpochRecord {
    /// Epochs finished.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// Mean training loss of the epoch's applied steps.
    pub train_loss: Option<f64>,
    /// Validation loss.
    pub eval_loss: Option<f64>,
    /// Whether this is the best validation loss so far.
    pub best: bool,
}

/// A line of `sft_log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SftLogRecord {
    Step(SftStepRecord),
    Epoch(SftEpochRecord),
}

/// One GRPO step (`grpo_log.jsonl`): the rollout's statistics, the policy updates' (averaged
/// over the μ updates, as TRL averages over its logging interval) and validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoStepRecord {
    /// Rollout steps taken, this one included.
    pub step: usize,
    /// Mean total reward of the rollouts.
    pub reward: Option<f64>,
    /// Standard deviation (n − 1) of the total reward.
    pub reward_std: Option<f64>,
    /// Fraction of prompt groups whose rewards were all equal (no learning signal).
    pub frac_reward_zero_std: f64,
    #[serde(rename = "completions/mean_length")]
    pub completions_mean_length: f64,
    /// Fraction of completions cut at `max_completion_length`.
    #[serde(rename = "completions/clipped_ratio")]
    pub completions_clipped_ratio: f64,
    /// Learning rate of the step's first update.
    pub learning_rate: f64,
    pub loss: Option<f64>,
    pub grad_norm: Option<f64>,
    pub kl: Option<f64>,
    pub entropy: Option<f64>,
    #[serde(rename = "clip_ratio/low_mean")]
    pub clip_ratio_low_mean: Option<f64>,
    #[serde(rename = "clip_ratio/high_mean")]
    pub clip_ratio_high_mean: Option<f64>,
    #[serde(rename = "clip_ratio/region_mean")]
    pub clip_ratio_region_mean: Option<f64>,
    /// Validation macro-F1, on the steps that validate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_macro_f1: Option<f64>,
    pub skipped_steps: usize,
    /// Seconds.
    pub step_time: f64,
    /// `rewards/{name}/mean` and `rewards/{name}/std` of each configured reward.
    #[serde(flatten)]
    pub rewards: BTreeMap<String, Option<f64>>,
}

impl GrpoStepRecord {
    /// The mean of reward `name` (as configured in `[[grpo.rewards]]`).
    pub fn reward_mean(&self, name: &str) -> Option<f64> {
        self.rewards
            .get(&format!("rewards/{name}/mean"))
            .copied()
            .flatten()
    }
}

/// A line of `grpo_samples.jsonl`: one completion shown for a look at what the policy writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoSampleRecord {
    pub step: usize,
    pub image: std::path::PathBuf,
    pub truth: Vec<String>,
    pub completion: String,
    pub tokens: usize,
    pub reward: f64,
}
