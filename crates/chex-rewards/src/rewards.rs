//! The reward functions. Each scores a [`Prepared`] completion (parsed once, shared by all);
//! a [`RewardSet`] sums weighted components and keeps each one's statistics for logging.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::labels::{ExtractedLabels, LabelVocabulary, extract_labels};
use crate::parser::{OutputFormat, ParseMode, ParsedOutput, parse_output};

/// How completions are read: tags, strictness and the label vocabulary.
#[derive(Debug, Clone)]
pub struct RewardContext {
    pub format: OutputFormat,
    pub mode: ParseMode,
    pub vocabulary: LabelVocabulary,
}

impl Default for RewardContext {
    fn default() -> Self {
        Self {
            format: OutputFormat::default(),
            mode: ParseMode::Strict,
            vocabulary: LabelVocabulary::chexpert(),
        }
    }
}

/// A completion parsed once, with its truth.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub parsed: ParsedOutput,
    /// Empty when there is no answer block.
    pub extracted: ExtractedLabels,
    /// Completion length in tokens (the tokenizer's count).
    pub token_count: usize,
    /// True label indices.
    pub truth: Vec<usize>,
}

impl Prepared {
    /// An answer block was found (under the context's mode) and it named at least one label and
    /// nothing unrecognised: ChexReason's "valid output".
    pub fn is_valid(&self) -> bool {
        self.parsed.answer.is_some()
            && !self.extracted.labels.is_empty()
            && self.extracted.invalid.is_empty()
    }

    fn correct(&self) -> usize {
        self.extracted
            .labels
            .iter()
            .filter(|l| self.truth.contains(l))
            .count()
    }
}

impl RewardContext {
    /// Parses a completion and extracts its labels.
    pub fn prepare(&self, text: &str, token_count: usize, truth: &[usize]) -> Prepared {
        let parsed = parse_output(text, &self.format, self.mode);
        let extracted = parsed
            .answer
            .as_deref()
            .map(|a| extract_labels(a, &self.vocabulary))
            .unwrap_or_default();
        let mut truth = truth.to_vec();
        truth.sort_unstable();
        truth.dedup();
        Prepared {
            parsed,
            extracted,
            token_count,
            truth,
        }
    }
}

/// |Y ∩ Ŷ| / |Y ∪ Ŷ|, 1 when both are empty.
pub fn jaccard(truth: &[usize], predicted: &[usize]) -> f64 {
    let inter = predicted.iter().filter(|p| truth.contains(p)).count();
    let union = truth.len() + predicted.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// A reward function; `&mut self` because some keep state across calls.
pub trait Reward: Send {
    /// Name used in logs (`rewards/<name>/mean`).
    fn name(&self) -> &str;
    /// Scores one completion.
    fn score(&mut self, input: &Prepared) -> f64;
}

/// ChexReason's hard reward: Jaccard(Y, Ŷ) − λ_len when the output is valid and shorter than
/// `min_tokens`, Jaccard when valid and at least that long, 0 when invalid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HardReward {
    pub length_penalty: f64,
    pub min_tokens: usize,
}

impl Default for HardReward {
    fn default() -> Self {
        Self {
            length_penalty: 0.1,
            min_tokens: 32,
        }
    }
}

impl Reward for HardReward {
    fn name(&self) -> &str {
        "hard"
    }

    fn score(&mut self, input: &Prepared) -> f64 {
        if !input.is_valid() {
            return 0.0;
        }
        let j = jaccard(&input.truth, &input.extracted.labels);
        if input.token_count < self.min_tokens {
            j - self.length_penalty
        } else {
            j
        }
    }
}

/// Weights of ChexReason's nuanced reward.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NuancedConfig {
    pub exact_match_bonus: f64,
    /// × correct / |Y|.
    pub recall_weight: f64,
    /// × correct / |Ŷ|.
    pub precision_weight: f64,
    /// Penalty per false positive for a label of average frequency.
    pub false_positive_base: f64,
    pub invalid_label_penalty: f64,
    pub duplicate_penalty: f64,
    /// Applied once when there is non-whitespace text outside the blocks.
    pub outside_text_penalty: f64,
    /// Sliding window of recent predictions for the mode-collapse guard.
    pub window: usize,
    /// How often the same label set may recur in the window before each repeat costs.
    pub allowed_repeats: usize,
    pub repeat_penalty: f64,
    /// Cap on the summed repeat penalty of one completion.
    pub max_repeat_penalty: f64,
    /// A label in more than this fraction of the window's predictions means collapse.
    pub collapse_fraction: f64,
    pub collapse_penalty: f64,
    /// The guard waits for this many predictions before judging collapse.
    pub min_window_for_collapse: usize,
}

impl Default for NuancedConfig {
    fn default() -> Self {
        Self {
            exact_match_bonus: 100.0,
            recall_weight: 30.0,
            precision_weight: 20.0,
            false_positive_base: 10.0,
            invalid_label_penalty: 100.0,
            duplicate_penalty: 25.0,
            outside_text_penalty: 20.0,
            window: 100,
            allowed_repeats: 20,
            repeat_penalty: 30.0,
            max_repeat_penalty: 150.0,
            collapse_fraction: 0.7,
            collapse_penalty: 50.0,
            min_window_for_collapse: 20,
        }
    }
}

/// ChexReason's nuanced reward with its mode-collapse guard (state kept across calls).
#[derive(Debug, Clone)]
pub struct NuancedReward {
    pub config: NuancedConfig,
    /// Per-label false-positive penalty.
    false_positive_weights: Vec<f64>,
    recent: VecDeque<Vec<usize>>,
}

impl NuancedReward {
    /// Uniform false-positive weights over `labels` labels.
    pub fn new(config: NuancedConfig, labels: usize) -> Self {
        let weights = vec![config.false_positive_base; labels];
        Self {
            config,
            false_positive_weights: weights,
            recent: VecDeque::new(),
        }
    }

    /// Weights false positives by label frequency (e.g. the training prevalence): a label as
    /// frequent as the most frequent one costs 3× the base, a rare one about 1×, so the policy
    /// cannot farm partial credit by always adding No Finding or Support Devices.
    pub fn with_label_frequencies(mut self, frequencies: &[f64]) -> Self {
        let max = frequencies.iter().copied().fold(0.0, f64::max);
        self.false_positive_weights = frequencies
            .iter()
            .map(|f| {
                self.config.false_positive_base
                    * (1.0 + if max > 0.0 { 2.0 * f / max } else { 0.0 })
            })
            .collect();
        self
    }

    /// Penalty of the collapse guard for this prediction, given the window before it.
    fn guard(&self, predicted: &[usize]) -> f64 {
        let c = &self.config;
        let repeats = self
            .recent
            .iter()
            .filter(|p| p.as_slice() == predicted)
            .count();
        let mut penalty = (c.repeat_penalty * repeats.saturating_sub(c.allowed_repeats) as f64)
            .min(c.max_repeat_penalty);
        if self.recent.len() >= c.min_window_for_collapse {
            let collapsed = predicted.iter().any(|l| {
                let share = self.recent.iter().filter(|p| p.contains(l)).count() as f64
                    / self.recent.len() as f64;
                share > c.collapse_fraction
            });
            if collapsed {
                penalty += c.collapse_penalty;
            }
        }
        penalty
    }
}

impl Reward for NuancedReward {
    fn name(&self) -> &str {
        "nuanced"
    }

    fn score(&mut self, input: &Prepared) -> f64 {
        let c = self.config.clone();
        let outside = if input.parsed.outside_chars > 0 {
            c.outside_text_penalty
        } else {
            0.0
        };
        if input.parsed.answer.is_none() {
            return -c.invalid_label_penalty - outside;
        }
        let mut predicted = input.extracted.labels.clone();
        predicted.sort_unstable();
        let correct = input.correct() as f64;
        let mut score = 0.0;
        if predicted == input.truth {
            score += c.exact_match_bonus;
        }
        if !input.truth.is_empty() {
            score += c.recall_weight * correct / input.truth.len() as f64;
        }
        if !predicted.is_empty() {
            score += c.precision_weight * correct / predicted.len() as f64;
        }
        for l in predicted.iter().filter(|l| !input.truth.contains(l)) {
            score -= self
                .false_positive_weights
                .get(*l)
                .copied()
                .unwrap_or(c.false_positive_base);
        }
        score -= c.invalid_label_penalty * input.extracted.invalid.len() as f64;
        score -= c.duplicate_penalty * input.extracted.duplicates.len() as f64;
        score -= outside;
        score -= self.guard(&predicted);
        self.recent.push_back(predicted);
        while self.recent.len() > c.window {
            self.recent.pop_front();
        }
        score
    }
}

/// NV-Reason-CXR's accuracy reward: Jaccard only when the strict format holds.
#[derive(Debug, Clone, Default)]
pub struct StrictJaccardReward;

impl Reward for StrictJaccardReward {
    fn name(&self) -> &str {
        "strict_jaccard"
    }

    fn score(&mut self, input: &Prepared) -> f64 {
        if input.parsed.strict_format && input.extracted.invalid.is_empty() {
            jaccard(&input.truth, &input.extracted.labels)
        } else {
            0.0
        }
    }
}

/// NV-Reason-CXR's soft over-short punishment: max(−1, (len − L) / L) below L tokens (L = 400).
#[derive(Debug, Clone)]
pub struct ShortnessPenalty {
    pub target_tokens: usize,
}

impl Default for ShortnessPenalty {
    fn default() -> Self {
        Self { target_tokens: 400 }
    }
}

impl Reward for ShortnessPenalty {
    fn name(&self) -> &str {
        "shortness"
    }

    fn score(&mut self, input: &Prepared) -> f64 {
        let target = self.target_tokens.max(1) as f64;
        if (input.token_count as f64) < target {
            ((input.token_count as f64 - target) / target).max(-1.0)
        } else {
            0.0
        }
    }
}

/// 1 when the output has an answer block under the context's mode (and, strictly parsed, the
/// strict layout), else 0.
#[derive(Debug, Clone, Default)]
pub struct FormatReward;

impl Reward for FormatReward {
    fn name(&self) -> &str {
        "format"
    }

    fn score(&mut self, input: &Prepared) -> f64 {
        if input.parsed.answer.is_some() {
            1.0
        } else {
            0.0
        }
    }
}

/// Per-sample F1 between the true and predicted label sets (1 when both are empty, 0 without
/// an answer).
#[derive(Debug, Clone, Default)]
pub struct F1Reward;

impl Reward for F1Reward {
    fn name(&self) -> &str {
        "f1"
    }

    fn score(&mut self, input: &Prepared) -> f64 {
        if input.parsed.answer.is_none() {
            return 0.0;
        }
        let correct = input.correct() as f64;
        let denominator = (input.truth.len() + input.extracted.labels.len()) as f64;
        if denominator == 0.0 {
            1.0
        } else {
            2.0 * correct / denominator
        }
    }
}

/// One component's scores over a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentScores {
    pub name: String,
    pub weight: f64,
    pub values: Vec<f64>,
    pub mean: f64,
    /// Population standard deviation over the batch.
    pub std: f64,
}

/// Scores of a batch: the weighted totals and every component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRewards {
    pub total: Vec<f64>,
    pub components: Vec<ComponentScores>,
}

/// A weighted sum of reward functions, each under the name it is logged as.
#[derive(Default)]
pub struct RewardSet {
    components: Vec<(String, f64, Box<dyn Reward>)>,
}

impl RewardSet {
    /// Adds a component with its weight, named by [`Reward::name`].
    pub fn with(self, weight: f64, reward: impl Reward + 'static) -> Self {
        let name = reward.name().to_string();
        self.with_boxed(&name, weight, Box::new(reward))
    }

    /// Adds a component under `name` (how a configuration listed it).
    pub fn with_boxed(mut self, name: &str, weight: f64, reward: Box<dyn Reward>) -> Self {
        self.components.push((name.into(), weight, reward));
        self
    }

    /// The components' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.components.iter().map(|(n, _, _)| n.as_str()).collect()
    }

    /// Scores a batch in order (stateful rewards see the completions in that order).
    pub fn score_batch(&mut self, inputs: &[Prepared]) -> BatchRewards {
        let mut total = vec![0.0; inputs.len()];
        let components = self
            .components
            .iter_mut()
            .map(|(name, weight, reward)| {
                let values: Vec<f64> = inputs.iter().map(|i| reward.score(i)).collect();
                for (t, v) in total.iter_mut().zip(&values) {
                    *t += *weight * v;
                }
                let n = values.len().max(1) as f64;
                let mean = values.iter().sum::<f64>() / n;
                let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
                ComponentScores {
                    name: name.clone(),
                    weight: *weight,
                    values,
                    mean,
                    std,
                }
            })
            .collect();
        BatchRewards { total, components }
    }
}
