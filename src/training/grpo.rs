//! GRPO: per step, B prompts × G sampled completions, rewards, group advantages, μ policy
//! updates over the same rollouts against the sampling log-probs, KL to a frozen reference (with
//! LoRA, the same weights with adapters removed, so no second copy), TRL's loss
//! normalisations, optional dynamic sampling, periodic validation keeping the best checkpoint.

use std::path::Path;
use std::time::Instant;

use chex_data::labels::CHEXPERT_LABELS;
use chex_model::Gemma3ForConditionalGeneration;
use chex_model::burn::module::Module;
use chex_model::burn::optim::{AdamWConfig, GradientsParams};
use chex_model::burn::tensor::{Device, Tensor, TensorData};
use chex_model::generation::{GenerationConfig, StopReason, generate};
use chex_model::lora::{LoraConfig, apply_lora, for_each_linear};
use chex_model::sampling::SamplingConfig;
use chex_model::scoring::{ScoringRow, score_completions};
use chex_model::vlm::ImageInputs;
use chex_objective::{AdvantageScaling, GrpoBatch, GrpoLossConfig, group_advantages, grpo_loss};
use chex_rewards::{
    F1Reward, FormatReward, HardReward, NuancedConfig, NuancedReward, RewardContext, RewardSet,
    ShortnessPenalty, StrictJaccardReward,
};
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::checkpoint::{
    TrainingState, clear_stage, load_checkpoint, resume_from, save_checkpoint,
};
use super::examples::{answer, score_answers};
use super::log::JsonlLog;
use super::optim::clip_global_norm;
use super::{Example, Policy, TrainError, step_seed};
use crate::inputs::pixel_batch;
use crate::progress::progress_bar;

/// Which reward GRPO maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardChoice {
    /// ChexReason's hard reward: Jaccard, minus a penalty when valid but short, 0 if invalid.
    Hard,
    /// ChexReason's nuanced reward (exact-match bonus, partial credit, frequency-weighted false
    /// positives, invalid/duplicate penalties, mode-collapse guard), scaled by 1/100.
    Nuanced,
    /// NV-Reason-CXR's pair: Jaccard under the strict format plus the over-short penalty.
    NvReason,
    /// Format reward plus per-sample F1.
    FormatF1,
}

impl RewardChoice {
    /// The weighted reward set this choice stands for.
    pub fn reward_set(&self, label_frequencies: Option<&[f64]>) -> RewardSet {
        match self {
            Self::Hard => RewardSet::default().with(1.0, HardReward::default()),
            Self::Nuanced => {
                let mut nuanced =
                    NuancedReward::new(NuancedConfig::default(), CHEXPERT_LABELS.len());
                if let Some(f) = label_frequencies {
                    nuanced = nuanced.with_label_frequencies(f);
                }
                RewardSet::default().with(0.01, nuanced)
            }
            Self::NvReason => RewardSet::default()
                .with(1.0, StrictJaccardReward)
                .with(1.0, ShortnessPenalty::default()),
            Self::FormatF1 => RewardSet::default()
                .with(0.5, FormatReward)
                .with(1.0, F1Reward),
        }
    }
}

/// GRPO settings; [`GrpoConfig::chexreason`] holds the study's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpoConfig {
    /// Adapters to train (added on top of the SFT weights); `None` trains every weight.
    pub lora: Option<LoraConfig>,
    /// Constant learning rate.
    pub learning_rate: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Prompts per step.
    pub prompts_per_step: usize,
    /// Completions per prompt.
    pub group_size: usize,
    /// Rollout sampling.
    pub sampling: SamplingConfig,
    /// Longest completion.
    pub max_new_tokens: usize,
    /// Policy updates per batch of rollouts.
    pub mu: usize,
    /// Clipping, KL weight and normalisation.
    pub loss: GrpoLossConfig,
    /// Advantage scaling.
    pub scale_rewards: AdvantageScaling,
    /// Drop groups whose rewards are all equal and draw more prompts (up to 3 draws).
    pub dynamic_sampling: bool,
    /// Global gradient-norm limit.
    pub max_grad_norm: f64,
    /// Validate (macro-F1) every this many steps; 0 never.
    pub eval_every: usize,
    /// Log a sample of completions every this many steps; 0 never.
    pub sample_every: usize,
    /// Seed of prompt draws, sampling and dropout.
    pub seed: u64,
    /// The reward maximised.
    pub reward: RewardChoice,
}

impl GrpoConfig {
    /// ChexReason's GRPO: G 4, temperature 0.8, top-p 0.95, β 0.15, dr_grpo, clip [0.15, 0.22].
    pub fn chexreason() -> Self {
        Self {
            lora: Some(LoraConfig::chexreason()),
            learning_rate: 1e-5,
            steps: 250,
            prompts_per_step: 4,
            group_size: 4,
            sampling: SamplingConfig::chexreason(),
            max_new_tokens: 512,
            mu: 1,
            loss: GrpoLossConfig {
                max_completion_length: 512,
                ..GrpoLossConfig::default()
            },
            scale_rewards: AdvantageScaling::Group,
            dynamic_sampling: false,
            max_grad_norm: 1.0,
            eval_every: 50,
            sample_every: 25,
            seed: 0,
            reward: RewardChoice::Hard,
        }
    }
}

/// What a GRPO run produced.
pub struct GrpoOutcome {
    /// The policy at its best validation macro-F1 (the last one without validation).
    pub policy: Policy,
    /// Mean reward per step.
    pub rewards: Vec<f64>,
    /// Steps skipped for non-finite values.
    pub skipped_steps: usize,
}

/// The reference policy: the same weights with every adapter removed (no copy of the weights,
/// since parameters share storage), or the frozen starting model for full fine-tuning.
fn without_adapters(model: &Gemma3ForConditionalGeneration) -> Gemma3ForConditionalGeneration {
    let mut reference = model.valid();
    let _ = for_each_linear(&mut reference, &mut |_, linear| {
        linear.lora = None;
        Ok(())
    });
    reference
}

fn padded(rows: &[Vec<f32>], width: usize, device: &Device) -> Tensor<2> {
    let mut values = Vec::with_capacity(rows.len() * width);
    for row in rows {
        values.extend_from_slice(row);
        values.extend(std::iter::repeat_n(0.0, width - row.len()));
    }
    Tensor::from_data(TensorData::new(values, [rows.len(), width]), device)
}

/// Train with GRPO from `policy` (normally the SFT result). Writes `grpo_log.jsonl` with TRL's
/// metric names and checkpoints under `out`; resumes from the latest when `resume`.
pub fn train_grpo(
    mut policy: Policy,
    pool: &[Example],
    validation: &[Example],
    config: &GrpoConfig,
    out: &Path,
    resume: bool,
    device: &Device,
) -> Result<GrpoOutcome, TrainError> {
    if config.group_size < 2 || pool.is_empty() {
        return Err(TrainError::Config(
            "GRPO needs group_size ≥ 2 and a non-empty prompt pool".into(),
        ));
    }
    let context = RewardContext::default();
    // The nuanced reward weighs false positives by how common each label is in the pool.
    let mut frequencies = vec![0.0; CHEXPERT_LABELS.len()];
    for example in pool {
        for i in example.truth(&context.vocabulary) {
            frequencies[i] += 1.0 / pool.len() as f64;
        }
    }
    let mut rewards_fn = config.reward.reward_set(Some(&frequencies));
    let ad = device.clone().autodiff();
    let start_model = policy.model.valid();
    let mut model = policy.model.clone().to_device(&ad).train();
    model.model.vision_tower = model.model.vision_tower.freeze();
    if let Some(lora) = &config.lora {
        model = apply_lora(model, lora, config.seed, &ad);
    }
    let full_reference = config.lora.is_none().then_some(start_model);
    let mut optimizer = AdamWConfig::new().init();
    let checkpoints = out.join("checkpoints");
    let mut state = TrainingState::start("grpo", config.seed);
    let last = checkpoints.join("grpo-last");
    if resume && let Some((m, o, s)) = resume_from(&last, model.clone(), optimizer.clone(), true)? {
        model = m;
        optimizer = o;
        state = s;
    }
    if state.step == 0 {
        clear_stage(&checkpoints, "grpo")?;
    }
    let mut log = JsonlLog::at_step(&out.join("grpo_log.jsonl"), state.step)?;
    let mut samples_log = JsonlLog::at_step(&out.join("grpo_samples.jsonl"), state.step)?;
    let mut mean_rewards = Vec::new();
    let bar = progress_bar(config.steps, "GRPO");
    bar.set_position(state.step as u64);
    let group = config.group_size;
    while state.step < config.steps {
        let started = Instant::now();
        let step = state.step as u64;
        ad.seed(step_seed(config.seed, step, 2));
        let inference = model.valid();
        policy.model = inference.clone();
        // Rollouts, with dynamic sampling when asked.
        let mut rng = ChaCha8Rng::seed_from_u64(step_seed(config.seed, step, 3));
        let mut chosen: Vec<&Example> = Vec::new();
        let mut completions = Vec::new();
        let mut texts = Vec::new();
        let mut totals = Vec::new();
        let mut component_logs = Vec::new();
        let mut all_equal_groups = 0usize;
        let mut groups_drawn = 0usize;
        for draw in 0..if config.dynamic_sampling { 3 } else { 1 } {
            let need = config.prompts_per_step - chosen.len() / group;
            if need == 0 {
                break;
            }
            let batch: Vec<&Example> = (0..need)
                .map(|_| pool.choose(&mut rng).expect("pool is not empty"))
                .collect();
            groups_drawn += batch.len();
            let images: Vec<_> = batch.iter().map(|e| e.image.as_ref()).collect();
            let generation = GenerationConfig {
                max_new_tokens: config.max_new_tokens,
                samples_per_prompt: group,
                sampling: config.sampling,
                stop_tokens: policy.stop_tokens(),
                seed: step_seed(config.seed, step, 10 + draw),
                use_cache: true,
            };
            let prompts = vec![policy.prompt.clone(); batch.len()];
            let outs = generate(
                &inference,
                &prompts,
                Some(pixel_batch(&images, device)),
                &generation,
                device,
            )?;
            let decoded: Vec<String> = outs
                .iter()
                .map(|c| policy.tokenizer.decode(&c.tokens, true))
                .collect::<Result<_, _>>()?;
            let prepared: Vec<_> = outs
                .iter()
                .zip(&decoded)
                .map(|(c, t)| {
                    context.prepare(
                        t,
                        c.tokens.len(),
                        &batch[c.prompt].truth(&context.vocabulary),
                    )
                })
                .collect();
            let scored = rewards_fn.score_batch(&prepared);
            component_logs = scored.components.clone();
            for (g, prompt) in batch.iter().enumerate() {
                let slice = &scored.total[g * group..(g + 1) * group];
                let equal = slice.iter().all(|r| (r - slice[0]).abs() < 1e-12);
                all_equal_groups += equal as usize;
                if config.dynamic_sampling && equal {
                    continue;
                }
                chosen.extend(std::iter::repeat_n(*prompt, group));
                for i in g * group..(g + 1) * group {
                    completions.push(outs[i].clone());
                    texts.push(decoded[i].clone());
                    totals.push(scored.total[i]);
                }
            }
            if !config.dynamic_sampling {
                break;
            }
        }
        let rows = completions.len();
        let mean_reward = if rows > 0 {
            totals.iter().sum::<f64>() / rows as f64
        } else {
            f64::NAN
        };
        let reward_std = if rows > 1 {
            (totals
                .iter()
                .map(|r| (r - mean_reward).powi(2))
                .sum::<f64>()
                / (rows - 1) as f64)
                .sqrt()
        } else {
            0.0
        };
        let mut record = json!({
            "step": step + 1,
            "reward": mean_reward,
            "reward_std": reward_std,
            "frac_reward_zero_std": all_equal_groups as f64 / groups_drawn.max(1) as f64,
            "completions/mean_length": completions.iter().map(|c| c.tokens.len()).sum::<usize>() as f64 / rows.max(1) as f64,
            "completions/clipped_ratio": completions.iter().filter(|c| c.stop == StopReason::MaxNewTokens).count() as f64 / rows.max(1) as f64,
            "learning_rate": config.learning_rate,
        });
        for c in &component_logs {
            record[format!("rewards/{}/mean", c.name)] = json!(c.mean);
            record[format!("rewards/{}/std", c.name)] = json!(c.std);
        }
        let mut applied = false;
        if rows > 0 {
            let prompt_ids = policy.prompt.ids.clone();
            let block = policy.prompt.image_block.clone();
            let images: Vec<_> = (0..rows / group)
                .map(|g| chosen[g * group].image.as_ref())
                .collect();
            let image_of_row: Vec<usize> = (0..rows).map(|r| r / group).collect();
            let scoring_rows: Vec<ScoringRow> = completions
                .iter()
                .map(|c| ScoringRow {
                    prompt: &prompt_ids,
                    image_block: block.as_ref(),
                    completion: &c.tokens,
                })
                .collect();
            let width = completions
                .iter()
                .map(|c| c.tokens.len())
                .max()
                .unwrap_or(1)
                .max(1);
            let old = padded(
                &completions
                    .iter()
                    .map(|c| c.logprobs.clone())
                    .collect::<Vec<_>>(),
                width,
                &ad,
            );
            let reference = match &full_reference {
                Some(r) => r.clone(),
                None => without_adapters(&model),
            };
            let plain_features = reference.encode_images(pixel_batch(&images, device))?;
            let ref_scores = score_completions(
                &reference,
                &scoring_rows,
                Some(ImageInputs {
                    features: &plain_features,
                    image_of_row: &image_of_row,
                }),
                config.sampling.temperature.max(1e-6),
                device,
            );
            let ref_logps = Tensor::<2>::from_data(ref_scores.logprobs.into_data(), &ad);
            let rewards = Tensor::<1>::from_data(
                TensorData::new(totals.iter().map(|r| *r as f32).collect::<Vec<_>>(), [rows]),
                &ad,
            );
            let advantages = group_advantages(rewards, group, config.scale_rewards)?;
            for _ in 0..config.mu.max(1) {
                let features = model.encode_images(pixel_batch(&images, &ad))?;
                let scores = score_completions(
                    &model,
                    &scoring_rows,
                    Some(ImageInputs {
                        features: &features,
                        image_of_row: &image_of_row,
                    }),
                    config.sampling.temperature.max(1e-6),
                    &ad,
                );
                let output = grpo_loss(
                    GrpoBatch {
                        logps: scores.logprobs,
                        old_logps: Some(old.clone()),
                        ref_logps: (config.loss.beta > 0.0).then(|| ref_logps.clone()),
                        advantages: advantages.clone(),
                        mask: scores.mask,
                        entropies: Some(scores.entropies),
                        num_items_in_batch: None,
                    },
                    &config.loss,
                )?;
                let loss_value = output.loss.clone().into_scalar::<f32>() as f64;
                let mut grads = GradientsParams::from_grads(output.loss.backward(), &model);
                let grad_norm = clip_global_norm(&model, &mut grads, config.max_grad_norm);
                let ok = loss_value.is_finite() && grad_norm.is_finite();
                if ok {
                    model = optimizer.step(config.learning_rate, model, grads);
                    applied = true;
                }
                record["loss"] = json!(loss_value);
                record["grad_norm"] = json!(grad_norm);
                record["kl"] = json!(output.kl);
                record["entropy"] = json!(output.entropy);
                record["clip_ratio/low_mean"] = json!(output.clip_low);
                record["clip_ratio/high_mean"] = json!(output.clip_high);
                record["clip_ratio/region_mean"] = json!(output.clip_region);
            }
        }
        if !applied {
            state.skipped_steps += 1;
        }
        state.step += 1;
        record["skipped_steps"] = json!(state.skipped_steps);
        record["step_time"] = json!(started.elapsed().as_secs_f64());
        if config.sample_every > 0
            && (state.step.is_multiple_of(config.sample_every) || state.step == 1)
        {
            for (c, text) in completions.iter().zip(&texts).take(group) {
                samples_log.write(&json!({"step": state.step, "image": chosen[0].path, "truth": chosen[0].labels, "completion": text, "tokens": c.tokens.len()}))?;
            }
        }
        let validate = config.eval_every > 0
            && (state.step.is_multiple_of(config.eval_every) || state.step == config.steps);
        if validate && !validation.is_empty() {
            policy.model = model.valid();
            let answers = answer(&policy, validation, config.max_new_tokens, 32, device)?;
            let evaluation = score_answers(&answers.texts, validation, &context)?;
            record["eval_macro_f1"] = json!(evaluation.macro_f1);
            if evaluation.macro_f1.is_finite()
                && state.best.is_none_or(|(b, _)| evaluation.macro_f1 > b)
            {
                state.best = Some((evaluation.macro_f1, state.step));
                save_checkpoint(
                    &checkpoints,
                    "grpo-best",
                    &model,
                    &optimizer,
                    &state,
                    config.lora.as_ref(),
                )?;
            }
        }
        if validate || state.step == config.steps {
            save_checkpoint(
                &checkpoints,
                "grpo-last",
                &model,
                &optimizer,
                &state,
                config.lora.as_ref(),
            )?;
        }
        bar.set_message(format!("reward {mean_reward:.3}"));
        bar.inc(1);
        mean_rewards.push(mean_reward);
        log.write(&record)?;
    }
    bar.finish_and_clear();
    let best = checkpoints.join("grpo-best");
    policy.model = if best.join("state.json").exists() {
        load_checkpoint(&best, model, AdamWConfig::new().init())?
            .0
            .valid()
    } else {
        model.valid()
    };
    Ok(GrpoOutcome {
        policy,
        rewards: mean_rewards,
        skipped_steps: state.skipped_steps,
    })
}
