//! The rollout phase of a GRPO step: draw prompts from the pool, sample a group of completions
//! for each, decode and parse them, and score them with the rewards. With dynamic sampling,
//! groups whose rewards are all equal (no learning signal) are dropped and more prompts drawn,
//! up to three draws.

use std::path::PathBuf;

use chex_model::burn::tensor::Device;
use chex_model::burn::tensor::TensorData;
use chex_rewards::{ComponentScores, RewardContext, RewardSet};
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use super::GrpoConfig;
use crate::error::Result;
use crate::evaluation::{AnswerSettings, answer_images};
use crate::training::{Example, Policy, step_seed};

/// One completion to learn from: its prompt, the image it answers, its tokens and reward.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Image token positions in the prompt.
    pub image_block: Option<std::ops::Range<usize>>,
    /// Index of its image in [`RolloutBatch::pixels`].
    pub image: usize,
    /// Completion ids (with the stop token when there was one).
    pub completion: Vec<u32>,
    /// Cut at `max_completion_length` rather than ended by a stop token.
    pub truncated: bool,
    /// Total (weighted) reward.
    pub reward: f64,
    /// Decoded text (for the samples log).
    pub text: String,
    /// Where its image came from and its true findings (for the samples log).
    pub source: PathBuf,
    pub truth: Vec<String>,
}

/// A step's rollouts: prompts × G rows, the completions of one prompt adjacent.
#[derive(Debug, Clone)]
pub struct RolloutBatch {
    pub rows: Vec<RolloutRow>,
    /// `[images, 3, side, side]`, one image per prompt group.
    pub pixels: Option<TensorData>,
    /// Completions per prompt.
    pub group_size: usize,
    /// Each reward's scores over the last draw (logged per reward as TRL does).
    pub components: Vec<ComponentScores>,
    /// Fraction of the drawn groups whose rewards were all equal.
    pub frac_reward_zero_std: f64,
}

impl RolloutBatch {
    /// Mean total reward (NaN when dynamic sampling dropped every group).
    pub fn mean_reward(&self) -> f64 {
        let n = self.rows.len();
        if n == 0 {
            return f64::NAN;
        }
        self.rows.iter().map(|r| r.reward).sum::<f64>() / n as f64
    }

    /// Standard deviation (n − 1) of the total reward.
    pub fn reward_std(&self) -> f64 {
        let n = self.rows.len();
        if n < 2 {
            return 0.0;
        }
        let mean = self.mean_reward();
        (self
            .rows
            .iter()
            .map(|r| (r.reward - mean).powi(2))
            .sum::<f64>()
            / (n - 1) as f64)
            .sqrt()
    }

    /// Mean completion length in tokens.
    pub fn mean_length(&self) -> f64 {
        self.rows.iter().map(|r| r.completion.len()).sum::<usize>() as f64
            / self.rows.len().max(1) as f64
    }

    /// Fraction of completions cut at the length limit.
    pub fn clipped_ratio(&self) -> f64 {
        self.rows.iter().filter(|r| r.truncated).count() as f64 / self.rows.len().max(1) as f64
    }
}

/// Draw `prompts_per_step` prompts (seeded by the step), sample `group_size` completions each
/// with `policy`, and reward them.
pub fn rollout(
    policy: &Policy,
    pool: &[Example],
    rewards: &mut RewardSet,
    config: &GrpoConfig,
    step: usize,
    context: &RewardContext,
    device: &Device,
) -> Result<RolloutBatch> {
    let group = config.group_size;
    let mut rng = ChaCha8Rng::seed_from_u64(step_seed(config.seed, step as u64, 3));
    let mut chosen: Vec<&Example> = Vec::new();
    let mut rows = Vec::new();
    let mut components = Vec::new();
    let mut equal_groups = 0usize;
    let mut groups_drawn = 0usize;
    let draws = if config.dynamic_sampling { 3 } else { 1 };
    for draw in 0..draws {
        let need = config.prompts_per_step - chosen.len();
        if need == 0 {
            break;
        }
        let batch: Vec<&Example> = (0..need)
            .map(|_| pool.choose(&mut rng).expect("the pool is not empty"))
            .collect();
        groups_drawn += batch.len();
        let images: Vec<_> = batch.iter().map(|e| e.image.as_ref()).collect();
        let truths: Vec<Vec<usize>> = batch.iter().map(|e| e.truth(&context.vocabulary)).collect();
        let settings = AnswerSettings {
            max_new_tokens: config.max_completion_length,
            batch: batch.len(),
            sampling: config.sampling,
            samples_per_image: group,
            seed: step_seed(config.seed, step as u64, 10 + draw),
        };
        let answers = answer_images(policy, &images, &truths, &settings, context, device)?;
        let prepared: Vec<_> = answers.iter().map(|a| a.prepared.clone()).collect();
        let scored = rewards.score_batch(&prepared);
        components = scored.components;
        for (g, example) in batch.iter().enumerate() {
            let totals = &scored.total[g * group..(g + 1) * group];
            let equal = totals.iter().all(|r| (r - totals[0]).abs() < 1e-12);
            equal_groups += equal as usize;
            if config.dynamic_sampling && equal {
                continue;
            }
            let image = chosen.len();
            chosen.push(example);
            for (answer, reward) in answers[g * group..(g + 1) * group].iter().zip(totals) {
                rows.push(RolloutRow {
                    prompt: policy.prompt.ids.clone(),
                    image_block: policy.prompt.image_block.clone(),
                    image,
                    completion: answer.completion.tokens.clone(),
                    truncated: answer.truncated(),
                    reward: *reward,
                    text: answer.text.clone(),
                    source: example.path.clone(),
                    truth: example.labels.clone(),
                });
            }
        }
    }
    let pixels = (!chosen.is_empty()).then(|| {
        let images: Vec<_> = chosen.iter().map(|e| e.image.as_ref()).collect();
        crate::inputs::pixel_data(&images)
    });
    Ok(RolloutBatch {
        rows,
        pixels,
        group_size: group,
        components,
        frac_reward_zero_std: equal_groups as f64 / groups_drawn.max(1) as f64,
    })
}
