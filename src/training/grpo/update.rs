//! The update phase of a GRPO step, as TRL's `GRPOTrainer` computes it: group advantages from
//! the rewards; the reference policy's log-probs (only when β > 0); the rollout policy's
//! log-probs (only when μ > 1 — at μ = 1 they are the current policy's, detached, so the
//! importance ratio is exactly 1); then μ optimizer updates, each scoring the completions with
//! the current policy, taking TRL's loss, clipping the global gradient norm and stepping AdamW.

use chex_model::Gemma3ForConditionalGeneration;
use chex_model::burn::module::Module;
use chex_model::burn::optim::{GradientsParams, ModuleOptimizer};
use chex_model::burn::tensor::{Device, Tensor, TensorData};
use chex_model::lora::for_each_linear;
use chex_model::scoring::{ScoringRow, TokenScores, score_completions};
use chex_model::vlm::ImageInputs;
use chex_objective::{AdvantageScaling, GrpoBatch, GrpoLossConfig, group_advantages, grpo_loss};

use super::rollout::RolloutBatch;
use crate::error::Result;
use crate::training::optim::clip_global_norm;

/// The frozen policy the KL term measures against.
#[derive(Clone, Copy)]
pub enum Reference<'a> {
    /// The policy with every adapter removed: with LoRA the base weights are the reference,
    /// and since parameters share storage there is no second copy of them.
    WithoutAdapters,
    /// A separate frozen model on the base device (full fine-tuning).
    Frozen(&'a Gemma3ForConditionalGeneration),
}

/// How one batch of rollouts is learned from.
#[derive(Debug, Clone, Copy)]
pub struct UpdateSettings<'a> {
    /// The loss, with `dr_grpo`'s denominator set ([`super::GrpoConfig::loss_config`]).
    pub loss: &'a GrpoLossConfig,
    /// The sampling temperature: logits are divided by it before scoring, as TRL does.
    pub temperature: f32,
    pub scale_rewards: AdvantageScaling,
    /// Leave truncated completions out of the loss.
    pub mask_truncated_completions: bool,
    /// Global gradient-norm limit (0 turns clipping off).
    pub max_grad_norm: f64,
    /// The learning rate of each update; there are as many updates as rates (μ).
    pub learning_rates: &'a [f64],
}

/// One policy update's figures, with TRL's meanings.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStats {
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Mean per-token k3 KL to the reference (`None` at β = 0, where none is computed).
    pub kl: Option<f64>,
    /// Mean per-token entropy of the policy.
    pub entropy: Option<f64>,
    pub clip_low: f64,
    pub clip_high: f64,
    pub clip_region: f64,
    pub learning_rate: f64,
    /// False when the loss or a gradient was not finite and the step was skipped.
    pub applied: bool,
}

/// The reference policy: the same weights with every adapter removed.
fn without_adapters(model: &Gemma3ForConditionalGeneration) -> Gemma3ForConditionalGeneration {
    let mut reference = model.valid();
    let _ = for_each_linear(&mut reference, &mut |_, linear| {
        linear.lora = None;
        Ok(())
    });
    reference
}

/// The batch's rows as the scorer takes them, and which image each row reads.
fn scoring_rows(batch: &RolloutBatch) -> (Vec<ScoringRow<'_>>, Vec<usize>) {
    let rows = batch
        .rows
        .iter()
        .map(|r| ScoringRow {
            prompt: &r.prompt,
            image_block: r.image_block.as_ref(),
            completion: &r.completion,
        })
        .collect();
    (rows, batch.rows.iter().map(|r| r.image).collect())
}

/// Score every row with `model` on `device`.
fn score(
    model: &Gemma3ForConditionalGeneration,
    batch: &RolloutBatch,
    temperature: f32,
    device: &Device,
) -> Result<TokenScores> {
    let (rows, image_of_row) = scoring_rows(batch);
    let features = match &batch.pixels {
        Some(pixels) => Some(model.encode_images(Tensor::<4>::from_data(pixels.clone(), device))?),
        None => None,
    };
    Ok(score_completions(
        model,
        &rows,
        features.as_ref().map(|features| ImageInputs {
            features,
            image_of_row: &image_of_row,
        }),
        temperature.max(1e-6),
        device,
    ))
}

/// Log-probs under a model without gradients, moved onto the training device as constants.
fn frozen_logps(
    model: &Gemma3ForConditionalGeneration,
    batch: &RolloutBatch,
    temperature: f32,
    device: &Device,
    training: &Device,
) -> Result<Tensor<2>> {
    let scores = score(model, batch, temperature, device)?;
    Ok(Tensor::from_data(scores.logprobs.into_data(), training))
}

/// Learn from `batch`: `settings.learning_rates.len()` updates of `model` (on the autodiff
/// twin of `device`). `observe` sees each update's index, the model and its gradients before
/// clipping (the parity test reads them; the trainer passes a no-op).
pub fn update(
    mut model: Gemma3ForConditionalGeneration,
    optimizer: &mut ModuleOptimizer,
    batch: &RolloutBatch,
    settings: &UpdateSettings<'_>,
    reference: Reference<'_>,
    device: &Device,
    observe: &mut dyn FnMut(usize, &Gemma3ForConditionalGeneration, &GradientsParams),
) -> Result<(Gemma3ForConditionalGeneration, Vec<UpdateStats>)> {
    let rows = batch.rows.len();
    if rows == 0 {
        return Ok((model, Vec::new()));
    }
    let ad = device.clone().autodiff();
    let rewards: Vec<f32> = batch.rows.iter().map(|r| r.reward as f32).collect();
    let advantages = group_advantages(
        Tensor::<1>::from_data(TensorData::new(rewards, [rows]), &ad),
        batch.group_size,
        settings.scale_rewards,
    )?;
    // TRL computes no reference at β = 0.
    let ref_logps = if settings.loss.beta != 0.0 {
        let reference = match reference {
            Reference::WithoutAdapters => without_adapters(&model),
            Reference::Frozen(frozen) => frozen.clone(),
        };
        Some(frozen_logps(
            &reference,
            batch,
            settings.temperature,
            device,
            &ad,
        )?)
    } else {
        None
    };
    let updates = settings.learning_rates.len();
    let old_logps = if updates > 1 {
        Some(frozen_logps(
            &model.valid(),
            batch,
            settings.temperature,
            device,
            &ad,
        )?)
    } else {
        None
    };
    let longest = batch
        .rows
        .iter()
        .map(|r| r.completion.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let kept: Vec<f32> = batch
        .rows
        .iter()
        .map(|r| f32::from(!(settings.mask_truncated_completions && r.truncated)))
        .collect();
    // TRL's `num_items_in_batch`: the loss-bearing tokens of the whole batch (`dapo`).
    let num_items: f64 = batch
        .rows
        .iter()
        .zip(&kept)
        .map(|(r, k)| r.completion.len() as f64 * *k as f64)
        .sum();
    let row_mask =
        Tensor::<2>::from_data(TensorData::new(kept, [rows, 1]), &ad).expand([rows, longest]);
    let mut stats = Vec::with_capacity(updates);
    for (index, &learning_rate) in settings.learning_rates.iter().enumerate() {
        let scores = score(&model, batch, settings.temperature, &ad)?;
        let output = grpo_loss(
            GrpoBatch {
                logps: scores.logprobs,
                old_logps: old_logps.clone(),
                ref_logps: ref_logps.clone(),
                advantages: advantages.clone(),
                mask: scores.mask * row_mask.clone(),
                entropies: Some(scores.entropies),
                num_items_in_batch: Some(num_items),
            },
            settings.loss,
        )?;
        let loss = output.loss.clone().into_scalar::<f32>() as f64;
        let mut grads = GradientsParams::from_grads(output.loss.backward(), &model);
        observe(index, &model, &grads);
        let grad_norm = clip_global_norm(&model, &mut grads, settings.max_grad_norm);
        let applied = loss.is_finite() && grad_norm.is_finite();
        if applied {
            model = optimizer.step(learning_rate, model, grads);
        }
        stats.push(UpdateStats {
            loss,
            grad_norm,
            kl: output.kl,
            entropy: output.entropy,
            clip_low: output.clip_low,
            clip_high: output.clip_high,
            clip_region: output.clip_region,
            learning_rate,
            applied,
        });
    }
    Ok((model, stats))
}
