//! GRPO as TRL's `GRPOTrainer` runs it. Each step is three phases:
//! - [`rollout`](rollout::rollout): draw prompts, sample G completions each, decode, parse and
//!   reward them (with optional dynamic sampling) into a [`RolloutBatch`];
//! - [`update`](update::update): μ policy updates on that batch — TRL's clipped objective
//!   against the rollout policy, KL to a frozen reference (with LoRA: the same weights with the
//!   adapters removed, no second copy), one of TRL's loss normalisations — returning
//!   [`UpdateStats`];
//! - logging and periodic validation through the [`Stage`], which keeps the best checkpoint.

pub mod rollout;
pub mod update;

use std::path::Path;
use std::time::Instant;

use chex_data::labels::CHEXPERT_LABELS;
use chex_model::Gemma3ForConditionalGeneration;
use chex_model::burn::module::Module;
use chex_model::burn::tensor::Device;
use chex_model::lora::{LoraConfig, set_lora_dropout};
use chex_model::sampling::SamplingConfig;
use chex_objective::{AdvantageScaling, GrpoLossConfig};
use chex_rewards::{RewardContext, RewardInit, RewardRegistry, WeightedReward};
use serde::{Deserialize, Serialize};

pub use rollout::{RolloutBatch, RolloutRow};
pub use update::{Reference, UpdateSettings, UpdateStats};

use super::optim::OptimizerConfig;
use super::records::{GrpoSampleRecord, GrpoStepRecord, finite};
use super::schedule::{LrSchedule, ScheduleKind};
use super::stage::{Better, Stage};
use super::{
    Example, Policy, device_of, ensure, ensure_learning_rate, step_seed, trainable_model,
    validate_lora,
};
use crate::error::{Error, Result};
use crate::evaluation::{AnswerSettings, answer_images, chexpert_scores};

/// GRPO settings, named as TRL's `GRPOConfig` where it has the setting;
/// [`GrpoConfig::chexreason`] holds the study's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoConfig {
    /// Adapters to train (added on top of the SFT weights); `None` trains every weight.
    pub lora: Option<LoraConfig>,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// The schedule's shape after warm-up; it spans `steps × mu` optimizer updates.
    pub lr_scheduler_type: ScheduleKind,
    /// Fraction of the updates spent warming up.
    pub warmup_ratio: f64,
    /// AdamW's settings.
    pub optimizer: OptimizerConfig,
    /// Rollout steps (each followed by `mu` optimizer updates).
    pub steps: usize,
    /// Prompts per step.
    pub prompts_per_step: usize,
    /// Completions per prompt (`num_generations`).
    pub group_size: usize,
    /// Rollout sampling.
    pub sampling: SamplingConfig,
    /// Longest completion: bounds generation, and is `dr_grpo`'s denominator.
    pub max_completion_length: usize,
    /// Policy updates per batch of rollouts (`num_iterations`).
    pub mu: usize,
    /// Rows per forward and backward pass; each update accumulates the gradients of all the
    /// step's micro-batches (TRL's `per_device_train_batch_size` with
    /// `gradient_accumulation_steps`). 0 scores the whole step's rollouts at once.
    #[serde(default)]
    pub micro_batch: usize,
    /// Clipping, KL weight, normalisation, entropy masking.
    pub loss: GrpoLossConfig,
    /// Advantage scaling.
    pub scale_rewards: AdvantageScaling,
    /// Drop groups whose rewards are all equal and draw more prompts (up to 3 draws).
    pub dynamic_sampling: bool,
    /// Leave completions cut at `max_completion_length` out of the loss.
    #[serde(default)]
    pub mask_truncated_completions: bool,
    /// Switch the adapters' dropout off, so the policy scores its own rollouts exactly as it
    /// sampled them (TRL's `disable_dropout`; on here by default, off in TRL).
    #[serde(default = "yes")]
    pub disable_dropout: bool,
    /// Global gradient-norm limit (0 turns clipping off).
    pub max_grad_norm: f64,
    /// Validate (macro-F1) every this many steps; 0 never.
    pub eval_every: usize,
    /// Also save the resumable checkpoint every this many steps, so a kill loses at most that
    /// many (TRL's `save_steps`); 0 saves only with validation and at the end.
    #[serde(default)]
    pub save_every: usize,
    /// Images per generation batch when validating.
    #[serde(default = "default_eval_batch")]
    pub eval_batch: usize,
    /// Log a sample of completions every this many steps; 0 never.
    pub sample_every: usize,
    /// Seed of prompt draws, sampling and adapters.
    pub seed: u64,
    /// The rewards maximised and their weights (`reward_funcs` / `reward_weights`).
    pub rewards: Vec<WeightedReward>,
    /// End this invocation after this many steps in total, leaving a resumable checkpoint (for
    /// preemptible or time-limited machines); the schedule still spans `steps`.
    #[serde(default)]
    pub stop_after_steps: Option<usize>,
    /// Keep only each decoder layer's input and rerun the layer in the backward pass
    /// (`chex_model::checkpointing`: same gradients, far less memory, one more forward pass of
    /// the layers). Unset: on for GPUs, off for CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_checkpointing: Option<bool>,
}

fn yes() -> bool {
    true
}

fn default_eval_batch() -> usize {
    16
}

impl GrpoConfig {
    /// ChexReason's GRPO: G 4, temperature 0.8, top-p 0.95, β 0.15, dr_grpo, clip [0.15, 0.22],
    /// the hard reward; optimizer and schedule as TRL's defaults (AdamW, linear decay).
    pub fn chexreason() -> Self {
        Self {
            lora: Some(LoraConfig::chexreason()),
            learning_rate: 1e-5,
            lr_scheduler_type: ScheduleKind::Linear,
            warmup_ratio: 0.0,
            optimizer: OptimizerConfig::default(),
            steps: 250,
            prompts_per_step: 4,
            group_size: 4,
            sampling: SamplingConfig::chexreason(),
            max_completion_length: 512,
            mu: 1,
            micro_batch: 0,
            loss: GrpoLossConfig::default(),
            scale_rewards: AdvantageScaling::Group,
            dynamic_sampling: false,
            mask_truncated_completions: false,
            disable_dropout: true,
            max_grad_norm: 1.0,
            eval_every: 50,
            save_every: 0,
            eval_batch: default_eval_batch(),
            sample_every: 25,
            seed: 0,
            rewards: vec![WeightedReward::new("hard", 1.0)],
            stop_after_steps: None,
            gradient_checkpointing: None,
        }
    }

    /// How a step's rollouts are learned from, with `loss` ([`Self::loss_config`]) and the
    /// learning rate of each of the μ updates.
    pub fn update_settings<'a>(
        &self,
        loss: &'a GrpoLossConfig,
        learning_rates: &'a [f64],
    ) -> UpdateSettings<'a> {
        UpdateSettings {
            loss,
            temperature: self.sampling.temperature,
            scale_rewards: self.scale_rewards,
            mask_truncated_completions: self.mask_truncated_completions,
            max_grad_norm: self.max_grad_norm,
            learning_rates,
            micro_batch: self.micro_batch,
            gradient_checkpointing: self.gradient_checkpointing,
        }
    }

    /// The loss settings with `dr_grpo`'s denominator taken from `max_completion_length`.
    pub fn loss_config(&self) -> GrpoLossConfig {
        GrpoLossConfig {
            max_completion_length: self.max_completion_length,
            ..self.loss.clone()
        }
    }

    /// Refuse values out of range and rewards `registry` does not know (keys named as in the
    /// study configuration, `grpo.…`).
    pub fn validate(&self, registry: &RewardRegistry) -> Result<()> {
        ensure_learning_rate(self.learning_rate, "grpo.learning_rate")?;
        ensure(
            (0.0..1.0).contains(&self.warmup_ratio),
            "grpo.warmup_ratio",
            format!("must lie in [0, 1), got {}", self.warmup_ratio),
        )?;
        self.optimizer.validate("grpo.optimizer")?;
        ensure(self.steps > 0, "grpo.steps", "must be > 0")?;
        ensure(
            self.prompts_per_step > 0,
            "grpo.prompts_per_step",
            "must be > 0",
        )?;
        ensure(
            self.group_size >= 2,
            "grpo.group_size",
            format!(
                "must be ≥ 2 (advantages compare completions of one prompt), got {}",
                self.group_size
            ),
        )?;
        ensure(
            self.max_completion_length > 0,
            "grpo.max_completion_length",
            "must be > 0",
        )?;
        ensure(self.mu > 0, "grpo.mu", "must be > 0")?;
        ensure(
            self.sampling.temperature > 0.0 && self.sampling.temperature.is_finite(),
            "grpo.sampling.temperature",
            format!(
                "must be > 0 (GRPO samples its rollouts), got {}",
                self.sampling.temperature
            ),
        )?;
        ensure(
            self.sampling.top_p > 0.0 && self.sampling.top_p <= 1.0,
            "grpo.sampling.top_p",
            format!("must lie in (0, 1], got {}", self.sampling.top_p),
        )?;
        self.loss
            .validate()
            .map_err(|e| Error::setting("grpo.loss", e.to_string()))?;
        ensure(
            self.max_grad_norm >= 0.0,
            "grpo.max_grad_norm",
            format!("must be ≥ 0, got {}", self.max_grad_norm),
        )?;
        ensure(self.eval_batch > 0, "grpo.eval_batch", "must be > 0")?;
        ensure(
            !self.rewards.is_empty(),
            "grpo.rewards",
            "name at least one reward",
        )?;
        for reward in &self.rewards {
            ensure(
                reward.weight.is_finite(),
                "grpo.rewards",
                format!("reward `{}` has weight {}", reward.name, reward.weight),
            )?;
        }
        registry
            .check(&self.rewards)
            .map_err(|e| Error::UnknownReward {
                name: e.name,
                known: e.known,
            })?;
        if let Some(lora) = &self.lora {
            validate_lora(lora, "grpo.lora")?;
        }
        Ok(())
    }

    /// The learning rate of every optimizer update.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule::new(
            self.lr_scheduler_type,
            self.learning_rate,
            self.warmup_ratio,
            self.steps * self.mu,
        )
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

/// Train with GRPO from `policy` (normally the SFT result) with the built-in rewards. Writes
/// `grpo_log.jsonl` with TRL's metric names and checkpoints under `out`; resumes from the
/// latest when `resume`.
pub fn train_grpo(
    policy: Policy,
    pool: &[Example],
    validation: &[Example],
    config: &GrpoConfig,
    out: &Path,
    resume: bool,
    device: &Device,
) -> Result<GrpoOutcome> {
    train_grpo_with(
        policy,
        pool,
        validation,
        config,
        &RewardRegistry::builtin(),
        out,
        resume,
        device,
    )
}

/// [`train_grpo`] with the rewards of `registry` (the built-ins plus a downstream crate's own).
#[allow(clippy::too_many_arguments)]
pub fn train_grpo_with(
    mut policy: Policy,
    pool: &[Example],
    validation: &[Example],
    config: &GrpoConfig,
    registry: &RewardRegistry,
    out: &Path,
    resume: bool,
    device: &Device,
) -> Result<GrpoOutcome> {
    config.validate(registry)?;
    if pool.is_empty() {
        return Err(Error::setting(
            "data.rl_size",
            "GRPO needs a non-empty prompt pool",
        ));
    }
    let context = RewardContext::default();
    let mut rewards = registry
        .build(&config.rewards, &reward_init(pool, &context))
        .map_err(|e| Error::UnknownReward {
            name: e.name,
            known: e.known,
        })?;
    let dtype = policy.model.dtype();
    let start_model = policy.model.valid();
    let model = training_model(policy.model.clone(), config, device);
    let ad = device_of(&model);
    let opened = Stage::open(
        "grpo",
        out,
        config.seed,
        config.steps,
        resume,
        model,
        config.optimizer.init(),
        true,
        config.lora.clone(),
    )?;
    let (mut stage, mut model, mut optimizer) = (opened.stage, opened.model, opened.optimizer);
    let mut samples_log = stage.side_log("grpo_samples.jsonl")?;
    let schedule = config.schedule();
    let loss = config.loss_config();
    let reference = match config.lora {
        Some(_) => Reference::WithoutAdapters,
        None => Reference::Frozen(&start_model),
    };
    let mut mean_rewards = Vec::new();
    while stage.state.step < config.steps {
        let started = Instant::now();
        let step = stage.state.step;
        ad.seed(step_seed(config.seed, step as u64, 2));
        policy.model = model.valid();
        let batch = rollout::rollout(&policy, pool, &mut rewards, config, step, &context, device)?;
        let learning_rates: Vec<f64> = (0..config.mu)
            .map(|i| schedule.at(step * config.mu + i))
            .collect();
        let settings = config.update_settings(&loss, &learning_rates);
        let (updated, updates) = update::update(
            model,
            &mut optimizer,
            &batch,
            &settings,
            reference,
            device,
            &mut |_, _, _| {},
        )?;
        model = updated;
        if !updates.iter().any(|u| u.applied) {
            stage.state.skipped_steps += 1;
        }
        stage.state.step += 1;
        let mut record = step_record(&batch, &updates, &learning_rates, &stage, started);
        if config.sample_every > 0
            && (stage.state.step.is_multiple_of(config.sample_every) || stage.state.step == 1)
        {
            for row in batch.rows.iter().take(config.group_size) {
                samples_log.write(&GrpoSampleRecord {
                    step: stage.state.step,
                    image: row.source.clone(),
                    truth: row.truth.clone(),
                    completion: row.text.clone(),
                    tokens: row.completion.len(),
                    reward: row.reward,
                })?;
            }
        }
        let validate = config.eval_every > 0
            && (stage.state.step.is_multiple_of(config.eval_every)
                || stage.state.step == config.steps);
        if validate && !validation.is_empty() {
            policy.model = model.valid();
            let images: Vec<_> = validation.iter().map(|e| e.image.as_ref()).collect();
            let truths: Vec<Vec<usize>> = validation
                .iter()
                .map(|e| e.truth(&context.vocabulary))
                .collect();
            let settings = AnswerSettings::greedy(config.max_completion_length, config.eval_batch);
            let answers = answer_images(&policy, &images, &truths, &settings, &context, device)?;
            let f1 = chexpert_scores(&answers)?.macro_f1;
            record.eval_macro_f1 = finite(f1);
            if stage.validated(f1, Better::Higher) {
                stage.save_best(&model, &optimizer)?;
            }
        }
        let stopping = config.stop_after_steps == Some(stage.state.step);
        let periodic = config.save_every > 0 && stage.state.step.is_multiple_of(config.save_every);
        if validate || periodic || stopping || stage.state.step == config.steps {
            stage.save_last(&model, &optimizer)?;
        }
        stage.progress(format!("reward {:.3}", batch.mean_reward()));
        mean_rewards.push(batch.mean_reward());
        stage.log(&record)?;
        if stopping && stage.state.step < config.steps {
            eprintln!(
                "stopping after step {} as asked; resume to continue",
                stage.state.step
            );
            break;
        }
    }
    let skipped_steps = stage.state.skipped_steps;
    let (best, _) = stage.finish(model, dtype)?;
    policy.model = best;
    Ok(GrpoOutcome {
        policy,
        rewards: mean_rewards,
        skipped_steps,
    })
}

/// The model GRPO trains, made from `model`: on the autodiff twin of `device`, in training
/// mode, vision tower frozen, fresh adapters attached when `config.lora` asks for them, and every
/// adapter's dropout switched off when `config.disable_dropout` (also adapters `model` already
/// carries).
pub fn training_model(
    model: Gemma3ForConditionalGeneration,
    config: &GrpoConfig,
    device: &Device,
) -> Gemma3ForConditionalGeneration {
    let model = trainable_model(model, true, config.lora.as_ref(), config.seed, device);
    if config.disable_dropout {
        set_lora_dropout(model, 0.0)
    } else {
        model
    }
}

/// What the rewards may know about the pool: each label's prevalence (the nuanced reward
/// weighs false positives by it).
fn reward_init(pool: &[Example], context: &RewardContext) -> RewardInit {
    let mut frequencies = vec![0.0; CHEXPERT_LABELS.len()];
    for example in pool {
        for i in example.truth(&context.vocabulary) {
            frequencies[i] += 1.0 / pool.len() as f64;
        }
    }
    RewardInit {
        label_frequencies: frequencies,
        labels: CHEXPERT_LABELS.len(),
    }
}

/// The step's log record: rollout statistics, the updates' means, per-reward statistics.
fn step_record(
    batch: &RolloutBatch,
    updates: &[UpdateStats],
    learning_rates: &[f64],
    stage: &Stage,
    started: Instant,
) -> GrpoStepRecord {
    let mean = |f: fn(&UpdateStats) -> Option<f64>| update::mean_of(updates.iter().map(f));
    let mut rewards = std::collections::BTreeMap::new();
    for c in &batch.components {
        rewards.insert(format!("rewards/{}/mean", c.name), finite(c.mean));
        rewards.insert(format!("rewards/{}/std", c.name), finite(c.std));
    }
    GrpoStepRecord {
        step: stage.state.step,
        reward: finite(batch.mean_reward()),
        reward_std: finite(batch.reward_std()),
        frac_reward_zero_std: batch.frac_reward_zero_std,
        completions_mean_length: batch.mean_length(),
        completions_clipped_ratio: batch.clipped_ratio(),
        learning_rate: learning_rates.first().copied().unwrap_or(0.0),
        loss: mean(|u| finite(u.loss)),
        grad_norm: mean(|u| finite(u.grad_norm)),
        kl: mean(|u| u.kl),
        entropy: mean(|u| u.entropy),
        clip_ratio_low_mean: mean(|u| Some(u.clip_low)),
        clip_ratio_high_mean: mean(|u| Some(u.clip_high)),
        clip_ratio_region_mean: mean(|u| Some(u.clip_region)),
        eval_macro_f1: None,
        skipped_steps: stage.state.skipped_steps,
        step_time: started.elapsed().as_secs_f64(),
        rewards,
    }
}
