//! The update phase of a GRPO step, as TRL's `GRPOTrainer` computes it: group advantages from
//! the rewards; the reference policy's log-probs (only when β > 0); the rollout policy's
//! log-probs (only when μ > 1 — at μ = 1 they are the current policy's, detached, so the
//! importance ratio is exactly 1); then μ optimizer updates, each scoring the completions with
//! the current policy, taking TRL's loss, clipping the global gradient norm and stepping AdamW.

use std::borrow::Cow;

use chex_model::Gemma3ForConditionalGeneration;
use chex_model::burn::module::Module;
use chex_model::burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use chex_model::burn::tensor::{Device, Tensor, TensorData};
use chex_model::checkpointing::{ScoreGraph, score_for_training};
use chex_model::lora::for_each_linear;
use chex_model::scoring::{ScoringRow, TokenScores};
use chex_model::vlm::ImageInputs;
use chex_objective::{
    AdvantageScaling, GrpoBatch, GrpoLossConfig, GrpoLossOutput, group_advantages, grpo_loss,
};

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
    /// Rows per forward and backward pass (0: the whole batch at once). An update accumulates
    /// the gradients of every micro-batch before its optimizer step, as TRL does with
    /// `gradient_accumulation_steps`: the `grpo`, `bnpo` and `dr_grpo` losses of each
    /// micro-batch are divided by their number, `dapo`'s by the whole batch's token count.
    pub micro_batch: usize,
    /// Checkpoint each decoder layer in the scoring pass (`None`: on for GPUs; see
    /// [`crate::training::checkpointing_on`]).
    pub gradient_checkpointing: Option<bool>,
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

/// The rows `range` of `batch` as a batch of their own, with only the images they read.
fn sub_batch(batch: &RolloutBatch, range: std::ops::Range<usize>) -> RolloutBatch {
    let mut rows = batch.rows[range].to_vec();
    let mut images: Vec<usize> = rows.iter().map(|r| r.image).collect();
    images.sort_unstable();
    images.dedup();
    for row in &mut rows {
        row.image = images.binary_search(&row.image).unwrap_or(0);
    }
    let pixels = batch.pixels.as_ref().map(|data| {
        let shape: Vec<usize> = data.shape().to_vec();
        let per_image: usize = shape[1..].iter().product();
        let values: Vec<f32> = data
            .clone()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        let mut kept = Vec::with_capacity(images.len() * per_image);
        for &i in &images {
            kept.extend_from_slice(&values[i * per_image..(i + 1) * per_image]);
        }
        let mut dims = shape.to_vec();
        dims[0] = images.len();
        TensorData::new(kept, dims)
    });
    RolloutBatch {
        rows,
        pixels,
        group_size: batch.group_size,
        components: Vec::new(),
        frac_reward_zero_std: batch.frac_reward_zero_std,
    }
}

/// The batch cut into micro-batches of `size` rows; the batch itself, uncopied, when `size` is
/// 0 or covers it all.
pub fn micro_batches(batch: &RolloutBatch, size: usize) -> Vec<Cow<'_, RolloutBatch>> {
    let rows = batch.rows.len();
    if size == 0 || size >= rows {
        return vec![Cow::Borrowed(batch)];
    }
    (0..rows)
        .step_by(size)
        .map(|start| Cow::Owned(sub_batch(batch, start..(start + size).min(rows))))
        .collect()
}

/// The mean of the values present (`None` when there are none).
pub fn mean_of(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let (sum, count) = values
        .into_iter()
        .flatten()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (count > 0).then(|| sum / count as f64)
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

/// Score every row with `model` on `device`, with the graph to take gradients through (each
/// decoder layer checkpointed when `checkpointing`).
fn score(
    model: &Gemma3ForConditionalGeneration,
    batch: &RolloutBatch,
    temperature: f32,
    checkpointing: bool,
    device: &Device,
) -> Result<(TokenScores, ScoreGraph)> {
    let (rows, image_of_row) = scoring_rows(batch);
    let features = match &batch.pixels {
        Some(pixels) => Some(model.encode_images(Tensor::<4>::from_data(pixels.clone(), device))?),
        None => None,
    };
    Ok(score_for_training(
        model,
        &rows,
        features.as_ref().map(|features| ImageInputs {
            features,
            image_of_row: &image_of_row,
        }),
        temperature.max(1e-6),
        checkpointing,
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
    let (scores, _) = score(model, batch, temperature, false, device)?;
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
    // The model's own device: the autodiff twin it was put on.
    let ad = crate::training::device_of(&model);
    let checkpointing = crate::training::checkpointing_on(settings.gradient_checkpointing, device);
    let rewards: Vec<f32> = batch.rows.iter().map(|r| r.reward as f32).collect();
    let advantages = group_advantages(
        Tensor::<1>::from_data(TensorData::new(rewards, [rows]), &ad),
        batch.group_size,
        settings.scale_rewards,
    )?;
    let chunks = micro_batches(batch, settings.micro_batch);
    let accumulation = chunks.len();
    // TRL computes no reference at β = 0.
    let ref_logps = if settings.loss.beta != 0.0 {
        let reference = match reference {
            Reference::WithoutAdapters => without_adapters(&model),
            Reference::Frozen(frozen) => frozen.clone(),
        };
        chunks
            .iter()
            .map(|c| frozen_logps(&reference, c, settings.temperature, device, &ad).map(Some))
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![None; accumulation]
    };
    let updates = settings.learning_rates.len();
    let old_logps = if updates > 1 {
        let rollout_policy = model.valid();
        chunks
            .iter()
            .map(|c| frozen_logps(&rollout_policy, c, settings.temperature, device, &ad).map(Some))
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![None; accumulation]
    };
    let kept = |row: &super::rollout::RolloutRow| -> f32 {
        f32::from(!(settings.mask_truncated_completions && row.truncated))
    };
    // TRL's `num_items_in_batch`: the loss-bearing tokens of the whole batch (`dapo`).
    let num_items: f64 = batch
        .rows
        .iter()
        .map(|r| r.completion.len() as f64 * kept(r) as f64)
        .sum();
    let mut stats = Vec::with_capacity(updates);
    for (index, &learning_rate) in settings.learning_rates.iter().enumerate() {
        let mut accumulator = GradientsAccumulator::new();
        let mut parts = Vec::with_capacity(accumulation);
        let mut start = 0;
        for (c, chunk) in chunks.iter().enumerate() {
            let n = chunk.rows.len();
            let longest = chunk
                .rows
                .iter()
                .map(|r| r.completion.len())
                .max()
                .unwrap_or(0)
                .max(1);
            let row_mask = Tensor::<2>::from_data(
                TensorData::new(chunk.rows.iter().map(kept).collect::<Vec<_>>(), [n, 1]),
                &ad,
            )
            .expand([n, longest]);
            let (scores, graph) = score(&model, chunk, settings.temperature, checkpointing, &ad)?;
            let output = grpo_loss(
                GrpoBatch {
                    logps: scores.logprobs,
                    old_logps: old_logps[c].clone(),
                    ref_logps: ref_logps[c].clone(),
                    advantages: advantages.clone().narrow(0, start, n),
                    mask: scores.mask * row_mask,
                    entropies: Some(scores.entropies),
                    num_items_in_batch: Some(num_items),
                    accumulation_steps: accumulation,
                },
                settings.loss,
            )?;
            start += n;
            let loss = output.loss.clone();
            let value = loss.clone().into_scalar::<f32>() as f64;
            accumulator.accumulate(&model, graph.gradients(loss, &model));
            parts.push((value, output));
        }
        let mut grads = accumulator.grads();
        observe(index, &model, &grads);
        let grad_norm = clip_global_norm(&model, &mut grads, settings.max_grad_norm);
        let loss: f64 = parts.iter().map(|(v, _)| v).sum();
        let applied = loss.is_finite() && grad_norm.is_finite();
        if applied {
            model = optimizer.step(learning_rate, model, grads);
        }
        // Diagnostics as TRL logs them over an accumulation window: the mean of each
        // micro-batch's value.
        let mean = |f: fn(&GrpoLossOutput) -> Option<f64>| mean_of(parts.iter().map(|(_, o)| f(o)));
        stats.push(UpdateStats {
            loss,
            grad_norm,
            kl: mean(|o| o.kl),
            entropy: mean(|o| o.entropy),
            clip_low: mean(|o| Some(o.clip_low)).unwrap_or(0.0),
            clip_high: mean(|o| Some(o.clip_high)).unwrap_or(0.0),
            clip_region: mean(|o| Some(o.clip_region)).unwrap_or(0.0),
            learning_rate,
            applied,
        });
    }
    Ok((model, stats))
}
