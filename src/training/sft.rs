//! Supervised fine-tuning on reasoning traces: cross-entropy on the assistant's tokens only,
//! gradient accumulation to an effective batch, AdamW with weight decay, cosine schedule with
//! warm-up, global gradient-norm clipping, validation loss every epoch with early stopping.

use std::path::Path;
use std::time::Instant;

use chex_model::burn::module::Module;
use chex_model::burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams};
use chex_model::burn::tensor::Device;
use chex_model::lora::{LoraConfig, apply_lora};
use chex_model::scoring::{ScoringRow, score_completions};
use chex_model::vlm::ImageInputs;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::checkpoint::{
    TrainingState, clear_stage, load_checkpoint, resume_from, save_checkpoint,
};
use super::log::JsonlLog;
use super::optim::clip_global_norm;
use super::schedule::CosineSchedule;
use super::{Example, Policy, TrainError, step_seed};
use crate::inputs::pixel_batch;
use crate::progress::progress_bar;
use crate::prompts::reference_answer;

/// SFT settings; [`SftConfig::chexreason`] holds the study's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    /// Adapters to train; `None` trains every weight.
    pub lora: Option<LoraConfig>,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
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
}

impl SftConfig {
    /// ChexReason's SFT: LoRA r 16 / α 32 / dropout 0.1, lr 5e-5, cosine with 5% warm-up,
    /// weight decay 0.01, clip 5.0, effective batch 8, up to 6 epochs, patience 2, 10% held out.
    pub fn chexreason() -> Self {
        Self {
            lora: Some(LoraConfig::chexreason()),
            learning_rate: 5e-5,
            weight_decay: 0.01,
            warmup_ratio: 0.05,
            max_grad_norm: 5.0,
            micro_batch: 4,
            effective_batch: 8,
            epochs: 6,
            patience: 2,
            validation_fraction: 0.1,
            freeze_vision: true,
            seed: 0,
            stop_after_epochs: None,
        }
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

struct Batch {
    prompt_ids: Vec<u32>,
    image_block: std::ops::Range<usize>,
    targets: Vec<Vec<u32>>,
}

/// Mean token cross-entropy of the targets, differentiable.
fn batch_loss(
    policy: &Policy,
    examples: &[&Example],
    batch: &Batch,
    device: &Device,
) -> chex_model::burn::tensor::Tensor<1> {
    let images: Vec<_> = examples.iter().map(|e| e.image.as_ref()).collect();
    let pixels = pixel_batch(&images, device);
    let features = policy
        .model
        .encode_images(pixels)
        .expect("pixel batch matches the vision config");
    let rows: Vec<ScoringRow> = batch
        .targets
        .iter()
        .map(|t| ScoringRow {
            prompt: &batch.prompt_ids,
            image_block: Some(&batch.image_block),
            completion: t,
        })
        .collect();
    let image_of_row: Vec<usize> = (0..rows.len()).collect();
    let scores = score_completions(
        &policy.model,
        &rows,
        Some(ImageInputs {
            features: &features,
            image_of_row: &image_of_row,
        }),
        1.0,
        device,
    );
    let tokens = scores.mask.clone().sum();
    scores.logprobs.sum().neg() / tokens
}

/// Train with SFT. Each example's target is its teacher trace when it has one, else a trace
/// written from its labels in the policy's prompt style. Writes `sft_log.jsonl` and
/// checkpoints under `out`; resumes from the latest checkpoint there when `resume`.
pub fn train_sft(
    mut policy: Policy,
    examples: &[Example],
    config: &SftConfig,
    out: &Path,
    resume: bool,
    device: &Device,
) -> Result<SftOutcome, TrainError> {
    if config.micro_batch == 0 || !config.effective_batch.is_multiple_of(config.micro_batch) {
        return Err(TrainError::Config(format!(
            "effective_batch {} must be a multiple of micro_batch {}",
            config.effective_batch, config.micro_batch
        )));
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
        .collect::<Result<_, _>>()?;

    let ad = device.clone().autodiff();
    let mut model = policy.model.clone().to_device(&ad).train();
    if config.freeze_vision {
        model.model.vision_tower = model.model.vision_tower.freeze();
    }
    if let Some(lora) = &config.lora {
        model = apply_lora(model, lora, config.seed, &ad);
    }
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init();
    let accumulation = config.effective_batch / config.micro_batch;
    let steps_per_epoch = training.len().div_ceil(config.effective_batch);
    let schedule = CosineSchedule::with_warmup_ratio(
        config.learning_rate,
        config.warmup_ratio,
        steps_per_epoch * config.epochs,
    );
    let checkpoints = out.join("checkpoints");
    let mut state = TrainingState::start("sft", config.seed);
    let last = checkpoints.join("sft-last");
    if resume
        && let Some((m, o, s)) = resume_from(
            &last,
            model.clone(),
            optimizer.clone(),
            config.freeze_vision,
        )?
    {
        model = m;
        optimizer = o;
        state = s;
    }
    if state.step == 0 {
        clear_stage(&checkpoints, "sft")?;
    }
    let mut log = JsonlLog::at_step(&out.join("sft_log.jsonl"), state.step)?;
    let batch_of = |idx: &[usize]| Batch {
        prompt_ids: policy.prompt.ids.clone(),
        image_block: policy.prompt.image_block.clone().unwrap_or(0..0),
        targets: idx.iter().map(|&i| targets[i].clone()).collect(),
    };
    let mut validation_losses = Vec::new();
    let bar = progress_bar(steps_per_epoch * config.epochs, "SFT");
    bar.set_position(state.step as u64);
    while state.epoch < config.epochs {
        let epoch = state.epoch;
        let mut epoch_order = training.to_vec();
        epoch_order.shuffle(&mut ChaCha8Rng::seed_from_u64(step_seed(
            config.seed,
            epoch as u64,
            1,
        )));
        let mut epoch_loss = (0.0, 0usize);
        for step_examples in epoch_order.chunks(config.effective_batch) {
            let started = Instant::now();
            ad.seed(step_seed(config.seed, state.step as u64, 2));
            let mut accumulator = GradientsAccumulator::new();
            let mut loss_sum = 0.0;
            let mut finite = true;
            for micro in step_examples.chunks(config.micro_batch) {
                policy.model = model.clone();
                let refs: Vec<&Example> = micro.iter().map(|&i| &examples[i]).collect();
                let loss = batch_loss(&policy, &refs, &batch_of(micro), &ad) / accumulation as f64;
                let value = loss.clone().into_scalar::<f32>() as f64;
                finite &= value.is_finite();
                loss_sum += value;
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                accumulator.accumulate(&model, grads);
            }
            let mut grads = accumulator.grads();
            let grad_norm = clip_global_norm(&model, &mut grads, config.max_grad_norm);
            let lr = schedule.at(state.step);
            if finite && grad_norm.is_finite() {
                model = optimizer.step(lr, model, grads);
                epoch_loss = (epoch_loss.0 + loss_sum, epoch_loss.1 + 1);
            } else {
                state.skipped_steps += 1;
            }
            state.step += 1;
            log.write(&json!({
                "step": state.step, "epoch": epoch, "loss": loss_sum, "learning_rate": lr,
                "grad_norm": grad_norm, "step_time": started.elapsed().as_secs_f64(),
                "skipped": !(finite && grad_norm.is_finite()), "skipped_steps": state.skipped_steps,
            }))?;
            bar.set_message(format!("loss {loss_sum:.3}"));
            bar.inc(1);
        }
        // Validation without dropout or gradients.
        policy.model = model.valid();
        let mut total = 0.0;
        let mut batches = 0;
        for chunk in validation.chunks(config.micro_batch) {
            let refs: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
            total +=
                batch_loss(&policy, &refs, &batch_of(chunk), device).into_scalar::<f32>() as f64;
            batches += 1;
        }
        let validation_loss = total / batches.max(1) as f64;
        validation_losses.push(validation_loss);
        state.epoch += 1;
        let improved =
            validation_loss.is_finite() && state.best.is_none_or(|(b, _)| validation_loss < b);
        if improved {
            state.best = Some((validation_loss, state.step));
            state.stale_validations = 0;
        } else {
            state.stale_validations += 1;
        }
        log.write(&json!({
            "epoch": state.epoch, "train_loss": epoch_loss.0 / epoch_loss.1.max(1) as f64,
            "eval_loss": validation_loss, "step": state.step, "best": improved,
        }))?;
        if improved {
            save_checkpoint(
                &checkpoints,
                "sft-best",
                &model,
                &optimizer,
                &state,
                config.lora.as_ref(),
            )?;
        }
        save_checkpoint(
            &checkpoints,
            "sft-last",
            &model,
            &optimizer,
            &state,
            config.lora.as_ref(),
        )?;
        if config.stop_after_epochs == Some(state.epoch) && state.epoch < config.epochs {
            eprintln!(
                "stopping after epoch {} as asked; resume to continue",
                state.epoch
            );
            break;
        }
        if state.stale_validations >= config.patience {
            eprintln!(
                "early stop after epoch {}: validation loss has not improved for {} epochs",
                state.epoch, config.patience
            );
            break;
        }
    }
    bar.finish_and_clear();
    // Without any finite validation loss there is no best checkpoint; the last one stands.
    let best_path = if checkpoints.join("sft-best").join("state.json").exists() {
        checkpoints.join("sft-best")
    } else {
        checkpoints.join("sft-last")
    };
    let fresh_optimizer = AdamWConfig::new().init();
    let (best, _, _) = load_checkpoint(&best_path, model, fresh_optimizer)?;
    policy.model = best.valid();
    Ok(SftOutcome {
        policy,
        validation_losses,
        checkpoint: best_path,
        skipped_steps: state.skipped_steps,
    })
}
