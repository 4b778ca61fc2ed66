//! Supervised fine-tuning on reasoning traces: cross-entropy on the completion tokens only,
//! gradient accumulation to an effective batch, AdamW, a learning-rate schedule with warm-up,
//! global gradient-norm clipping, validation loss every epoch with early stopping.

use std::path::Path;
use std::time::Instant;

use chex_model::Gemma3ForConditionalGeneration;
use chex_model::burn::module::Module;
use chex_model::burn::optim::GradientsAccumulator;
use chex_model::burn::tensor::{Device, Tensor};
use chex_model::checkpointing::{ScoreGraph, score_for_training};
use chex_model::lora::LoraConfig;
use chex_model::scoring::ScoringRow;
use chex_model::vlm::ImageInputs;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::optim::{OptimizerConfig, clip_global_norm};
use super::records::{SftEpochRecord, SftLogRecord, SftStepRecord, finite};
use super::schedule::{LrSchedule, ScheduleKind};
use super::stage::{Better, Stage};
use super::{
    Example, Policy, checkpointing_on, device_of, ensure, ensure_learning_rate, step_seed,
    trainable_model, validate_lora,
};
use crate::error::Result;
use crate::inputs::pixel_batch;
use crate::prompts::reference_answer;

/// SFT settings; [`SftConfig::chexreason`] holds the study's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Adapters to train; `None` trains every weight.
    pub lora: Option<LoraConfig>,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// The schedule's shape after warm-up.
    pub lr_scheduler_type: ScheduleKind,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    /// AdamW's settings.
    pub optimizer: OptimizerConfig,
    /// Global gradient-norm limit.
    pub max_grad_norm: f64,
    /// Examples per forward pass.
    pub micro_batch: usize,
    /// Examples per optimizer step (a multiple of `micro_batch`).
    pub effective_batch: usize,
    /// Most epochs.
    pub epochs: usize,
    /// Stop after this many epochs without a lower validation loss.
    pub patience: usize,
    /// Fraction of the examples held out for validation.
    pub validation_fraction: f64,
    /// Keep the vision tower frozen (ChexReason did).
    pub freeze_vision: bool,
    /// Seed of shuffling, dropout and traces.
    pub seed: u64,
    /// End this invocation after this many epochs in total, leaving a resumable checkpoint
    /// (for jobs on preemptible or time-limited machines); the schedule still spans `epochs`.
    #[serde(default)]
    pub stop_after_epochs: Option<usize>,
    /// Keep only each decoder layer's input and rerun the layer in the backward pass
    /// (`chex_model::checkpointing`: same gradients, far less memory, one more forward pass of
    /// the layers). Unset: on for GPUs, off for CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_checkpointing: Option<bool>,
}

impl SftConfig {
    /// ChexReason's SFT: LoRA r 16 / α 32 / dropout 0.1, lr 5e-5, cosine with 5% warm-up,
    /// weight decay 0.01, clip 5.0, effective batch 8, up to 6 epochs, patience 2, 10% held out.
    pub fn chexreason() -> Self {
        Self {
            lora: Some(LoraConfig::chexreason()),
            learning_rate: 5e-5,
            lr_scheduler_type: ScheduleKind::Cosine,
            warmup_ratio: 0.05,
            optimizer: OptimizerConfig::with_weight_decay(0.01),
            max_grad_norm: 5.0,
            micro_batch: 4,
            effective_batch: 8,
            epochs: 6,
            patience: 2,
            validation_fraction: 0.1,
            freeze_vision: true,
            seed: 0,
            stop_after_epochs: None,
            gradient_checkpointing: None,
        }
    }

    /// Refuse values out of range (keys named as in the study configuration, `sft.…`).
    pub fn validate(&self) -> Result<()> {
        ensure_learning_rate(self.learning_rate, "sft.learning_rate")?;
        ensure(
            (0.0..1.0).contains(&self.warmup_ratio),
            "sft.warmup_ratio",
            format!("must lie in [0, 1), got {}", self.warmup_ratio),
        )?;
        self.optimizer.validate("sft.optimizer")?;
        ensure(
            self.max_grad_norm >= 0.0,
            "sft.max_grad_norm",
            format!(
                "must be ≥ 0 (0 turns clipping off), got {}",
                self.max_grad_norm
            ),
        )?;
        ensure(
            self.micro_batch > 0 && self.effective_batch.is_multiple_of(self.micro_batch),
            "sft.effective_batch",
            format!(
                "must be a positive multiple of sft.micro_batch ({}), got {}",
                self.micro_batch, self.effective_batch
            ),
        )?;
        ensure(
            self.effective_batch > 0,
            "sft.effective_batch",
            "must be > 0",
        )?;
        ensure(self.epochs > 0, "sft.epochs", "must be > 0")?;
        ensure(
            self.validation_fraction > 0.0 && self.validation_fraction < 1.0,
            "sft.validation_fraction",
            format!("must lie in (0, 1), got {}", self.validation_fraction),
        )?;
        if let Some(lora) = &self.lora {
            validate_lora(lora, "sft.lora")?;
        }
        Ok(())
    }
}

/// What an SFT run produced.
pub struct SftOutcome {
    /// The policy at its best validation loss.
    pub policy: Policy,
    /// Validation loss per finished epoch.
    pub validation_losses: Vec<f64>,
    /// Where the best checkpoint is.
    pub checkpoint: std::path::PathBuf,
    /// Steps skipped for non-finite values.
    pub skipped_steps: usize,
}

/// Mean cross-entropy of the completion tokens of `rows` (prompts and images are context
/// only), differentiable on an autodiff device: transformers' causal-LM loss with the prompt's
/// labels set to -100, what TRL's SFT trainer computes with `completion_only_loss`. The graph
/// to take its gradients through comes with it, each decoder layer checkpointed when
/// `checkpointing` (see [`chex_model::checkpointing`]).
pub fn completion_loss(
    model: &Gemma3ForConditionalGeneration,
    rows: &[ScoringRow<'_>],
    pixels: Tensor<4>,
    image_of_row: &[usize],
    checkpointing: bool,
    device: &Device,
) -> Result<(Tensor<1>, ScoreGraph)> {
    let features = model.encode_images(pixels)?;
    let (scores, graph) = score_for_training(
        model,
        rows,
        Some(ImageInputs {
            features: &features,
            image_of_row,
        }),
        1.0,
        checkpointing,
        device,
    );
    let tokens = scores.mask.sum();
    Ok((scores.logprobs.sum().neg() / tokens, graph))
}

/// The loss of some examples, each image answered by its target.
fn examples_loss(
    model: &Gemma3ForConditionalGeneration,
    policy: &Policy,
    examples: &[&Example],
    targets: &[&[u32]],
    checkpointing: bool,
    device: &Device,
) -> Result<(Tensor<1>, ScoreGraph)> {
    let images: Vec<_> = examples.iter().map(|e| e.image.as_ref()).collect();
    let block = policy.prompt.image_block.clone();
    let rows: Vec<ScoringRow> = targets
        .iter()
        .map(|t| ScoringRow {
            prompt: &policy.prompt.ids,
            image_block: block.as_ref(),
            completion: t,
        })
        .collect();
    let image_of_row: Vec<usize> = (0..rows.len()).collect();
    completion_loss(
        model,
        &rows,
        pixel_batch(&images, device),
        &image_of_row,
        checkpointing,
        device,
    )
}

/// Train with SFT. Each example's target is its teacher trace when it has one, else a trace
/// written from its labels in the policy's prompt style. Writes `sft_log.jsonl` and
/// checkpoints under `out`; resumes from the latest checkpoint there when `resume`.
pub fn train_sft(
    policy: Policy,
    examples: &[Example],
    config: &SftConfig,
    out: &Path,
    resume: bool,
    device: &Device,
) -> Result<SftOutcome> {
    train_supervised("sft", policy, examples, config, out, resume, device)
}

/// [`train_sft`] as stage `stage` (its log `{stage}_log.jsonl`, checkpoints `{stage}-best`
/// and `{stage}-last`): the study's `pretrain` stage is the same trainer on other data.
pub fn train_supervised(
    stage: &'static str,
    mut policy: Policy,
    examples: &[Example],
    config: &SftConfig,
    out: &Path,
    resume: bool,
    device: &Device,
) -> Result<SftOutcome> {
    config.validate()?;
    if examples.len() < 2 {
        return Err(crate::Error::setting(
            "data.sft_size",
            format!(
                "SFT needs at least two examples, one to train on and one to validate; got {}",
                examples.len()
            ),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rng);
    let held = ((examples.len() as f64 * config.validation_fraction).round() as usize)
        .clamp(1, examples.len().saturating_sub(1).max(1));
    let (validation, training) = order.split_at(held);
    let targets: Vec<Vec<u32>> = examples
        .iter()
        .map(|e| {
            let labels: Vec<&str> = e
                .labels
                .iter()
                .map(|s| s.as_str())
                .filter(|l| *l != "No Finding")
                .collect();
            let answer = e
                .reasoning
                .clone()
                .unwrap_or_else(|| reference_answer(&labels, policy.variant, &mut rng));
            policy.answer_ids(&answer)
        })
        .collect::<Result<_>>()?;

    let dtype = policy.model.dtype();
    let model = trainable_model(
        policy.model.clone(),
        config.freeze_vision,
        config.lora.as_ref(),
        config.seed,
        device,
    );
    let ad = device_of(&model);
    let checkpointing = checkpointing_on(config.gradient_checkpointing, device);
    let accumulation = config.effective_batch / config.micro_batch;
    let steps_per_epoch = training.len().div_ceil(config.effective_batch);
    let schedule = LrSchedule::new(
        config.lr_scheduler_type,
        config.learning_rate,
        config.warmup_ratio,
        steps_per_epoch * config.epochs,
    );
    let opened = Stage::open(
        stage,
        out,
        config.seed,
        steps_per_epoch * config.epochs,
        resume,
        model,
        config.optimizer.init(),
        config.freeze_vision,
        config.lora.clone(),
    )?;
    let (mut stage, mut model, mut optimizer) = (opened.stage, opened.model, opened.optimizer);
    let loss_of = |model: &Gemma3ForConditionalGeneration,
                   idx: &[usize],
                   checkpointing: bool,
                   device: &Device| {
        let refs: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let t: Vec<&[u32]> = idx.iter().map(|&i| targets[i].as_slice()).collect();
        examples_loss(model, &policy, &refs, &t, checkpointing, device)
    };
    let mut validation_losses = Vec::new();
    while stage.state.epoch < config.epochs {
        let epoch = stage.state.epoch;
        let mut epoch_order = training.to_vec();
        epoch_order.shuffle(&mut ChaCha8Rng::seed_from_u64(step_seed(
            config.seed,
            epoch as u64,
            1,
        )));
        let mut epoch_loss = (0.0, 0usize);
        for step_examples in epoch_order.chunks(config.effective_batch) {
            let started = Instant::now();
            ad.seed(step_seed(config.seed, stage.state.step as u64, 2));
            let mut accumulator = GradientsAccumulator::new();
            let mut loss_sum = 0.0;
            let mut finite_loss = true;
            for micro in step_examples.chunks(config.micro_batch) {
                let (loss, graph) = loss_of(&model, micro, checkpointing, &ad)?;
                let loss = loss / accumulation as f64;
                let value = loss.clone().into_scalar::<f32>() as f64;
                finite_loss &= value.is_finite();
                loss_sum += value;
                accumulator.accumulate(&model, graph.gradients(loss, &model));
            }
            let mut grads = accumulator.grads();
            let grad_norm = clip_global_norm(&model, &mut grads, config.max_grad_norm);
            let lr = schedule.at(stage.state.step);
            let applied = finite_loss && grad_norm.is_finite();
            if applied {
                model = optimizer.step(lr, model, grads);
                epoch_loss = (epoch_loss.0 + loss_sum, epoch_loss.1 + 1);
            } else {
                stage.state.skipped_steps += 1;
            }
            stage.state.step += 1;
            stage.log(&SftLogRecord::Step(SftStepRecord {
                step: stage.state.step,
                epoch,
                loss: finite(loss_sum),
                learning_rate: lr,
                grad_norm: finite(grad_norm),
                step_time: started.elapsed().as_secs_f64(),
                skipped: !applied,
                skipped_steps: stage.state.skipped_steps,
            }))?;
            stage.progress(format!("loss {loss_sum:.3}"));
        }
        // Validation without dropout or gradients.
        let inference = model.valid();
        let mut total = 0.0;
        let mut batches = 0;
        for chunk in validation.chunks(config.micro_batch) {
            total += loss_of(&inference, chunk, false, device)?
                .0
                .into_scalar::<f32>() as f64;
            batches += 1;
        }
        let validation_loss = total / batches.max(1) as f64;
        validation_losses.push(validation_loss);
        stage.state.epoch += 1;
        let improved = stage.validated(validation_loss, Better::Lower);
        stage.log(&SftLogRecord::Epoch(SftEpochRecord {
            epoch: stage.state.epoch,
            step: stage.state.step,
            train_loss: finite(epoch_loss.0 / epoch_loss.1.max(1) as f64),
            eval_loss: finite(validation_loss),
            best: improved,
        }))?;
        if improved {
            stage.save_best(&model, &optimizer)?;
        }
        stage.save_last(&model, &optimizer)?;
        if config.stop_after_epochs == Some(stage.state.epoch) && stage.state.epoch < config.epochs
        {
            eprintln!(
                "stopping after epoch {} as asked; resume to continue",
                stage.state.epoch
            );
            break;
        }
        if stage.state.stale_validations >= config.patience {
            eprintln!(
                "early stop after epoch {}: validation loss has not improved for {} epochs",
                stage.state.epoch, config.patience
            );
            break;
        }
    }
    let skipped_steps = stage.state.skipped_steps;
    let (best, checkpoint) = stage.finish(model, dtype)?;
    policy.model = best;
    Ok(SftOutcome {
        policy,
        validation_losses,
        checkpoint,
        skipped_steps,
    })
}
