//! The clipped GRPO / GSPO policy loss with the k3 KL penalty and TRL's four normalisations.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::ObjectiveError;

/// How the summed per-token loss is normalised; names and formulas as in TRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over sequences of each sequence's token mean.
    Grpo,
    /// Sum over active tokens / number of active tokens in the batch.
    Bnpo,
    /// Sum / (batch size × max completion length): no length bias. ChexReason's choice.
    #[default]
    DrGrpo,
    /// Sum / active tokens in the whole accumulated batch (`num_items_in_batch`).
    Dapo,
}

/// Whether the importance ratio is per token (GRPO) or one per sequence (GSPO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceLevel {
    #[default]
    Token,
    /// exp of the masked mean log-ratio of the sequence (GSPO).
    Sequence,
}

/// Settings of the loss; the defaults are ChexReason's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoLossConfig {
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    /// Weight of the per-token KL to the reference policy; 0 disables it.
    pub beta: f64,
    pub loss_type: LossType,
    pub importance: ImportanceLevel,
    /// Train only on the completion tokens whose entropy is in this top fraction of the batch
    /// (TRL's `top_entropy_quantile`, after "Beyond the 80/20 rule"); 1 keeps every token.
    #[serde(default = "every_token")]
    pub top_entropy_quantile: f64,
    /// Multiply the per-token KL by the (differentiable) importance ratio, which makes its
    /// gradient the unbiased reverse-KL gradient (DeepSeek-V3.2; TRL's `use_bias_correction_kl`,
    /// on by default there). This changes the gradient even at μ = 1, where the ratio's value
    /// is exactly 1.
    #[serde(default = "bias_corrected")]
    pub use_bias_correction_kl: bool,
    /// Denominator of `dr_grpo`. Not part of the loss's own settings: a trainer sets it from the
    /// one completion-length limit that also bounds generation.
    #[serde(skip)]
    pub max_completion_length: usize,
}

fn every_token() -> f64 {
    1.0
}

fn bias_corrected() -> bool {
    true
}

impl Default for GrpoLossConfig {
    fn default() -> Self {
        Self {
            epsilon_low: 0.15,
            epsilon_high: 0.22,
            beta: 0.15,
            loss_type: LossType::DrGrpo,
            importance: ImportanceLevel::Token,
            top_entropy_quantile: 1.0,
            use_bias_correction_kl: true,
            max_completion_length: 512,
        }
    }
}

impl GrpoLossConfig {
    /// Check every value's range; `key` prefixes the messages (e.g. `grpo.loss`).
    pub fn validate(&self) -> Result<(), ObjectiveError> {
        let bad = |m: String| Err(ObjectiveError::Config(m));
        if !(self.epsilon_low >= 0.0 && self.epsilon_low < 1.0) {
            return bad(format!(
                "epsilon_low must lie in [0, 1), got {}",
                self.epsilon_low
            ));
        }
        if !(self.epsilon_high >= 0.0 && self.epsilon_high.is_finite()) {
            return bad(format!(
                "epsilon_high must be ≥ 0, got {}",
                self.epsilon_high
            ));
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return bad(format!("beta must be ≥ 0, got {}", self.beta));
        }
        if !(self.top_entropy_quantile > 0.0 && self.top_entropy_quantile <= 1.0) {
            return bad(format!(
                "top_entropy_quantile must lie in (0, 1], got {}",
                self.top_entropy_quantile
            ));
        }
        Ok(())
    }
}

/// One batch of scored completions, `[B, T]` with right padding masked out.
#[derive(Debug, Clone)]
pub struct GrpoBatch {
    /// Per-token log-probabilities under the policy being trained (differentiable).
    pub logps: Tensor<2>,
    /// Log-probabilities under the policy that sampled the completions; `None` when this is
    /// the first update on the rollouts (μ = 1), where they equal `logps` detached.
    pub old_logps: Option<Tensor<2>>,
    /// Log-probabilities under the frozen reference policy; required when `beta > 0`.
    pub ref_logps: Option<Tensor<2>>,
    /// One advantage per completion, `[B]`.
    pub advantages: Tensor<1>,
    /// 1 for completion tokens, 0 for padding.
    pub mask: Tensor<2>,
    /// Per-token entropies, for the `entropy` diagnostic.
    pub entropies: Option<Tensor<2>>,
    /// `dapo`'s denominator: active tokens across every micro-batch of the optimiser step.
    pub num_items_in_batch: Option<f64>,
    /// Micro-batches whose gradients add up to one optimizer step (1 without accumulation).
    /// As TRL scales an accumulation window, the `grpo`, `bnpo` and `dr_grpo` losses are
    /// divided by it; `dapo`'s `num_items_in_batch` already spans the window.
    pub accumulation_steps: usize,
}

/// The loss and TRL's diagnostics (`kl`, `entropy`, `clip_ratio/*`), the latter as numbers.
#[derive(Debug, Clone)]
pub struct GrpoLossOutput {
    /// Scalar loss, shape `[1]`, differentiable.
    pub loss: Tensor<1>,
    pub kl: Option<f64>,
    pub entropy: Option<f64>,
    pub clip_low: f64,
    pub clip_high: f64,
    pub clip_region: f64,
}

fn check(what: &'static str, t: &Tensor<2>, dims: [usize; 2]) -> Result<(), ObjectiveError> {
    if t.dims() != dims {
        return Err(ObjectiveError::Shape {
            what,
            expected: dims.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// The per-token k3 estimator of KL(π‖π_ref): `exp(ref − logp) − (ref − logp) − 1` (≥ 0).
pub fn k3_kl(logps: Tensor<2>, ref_logps: Tensor<2>) -> Tensor<2> {
    let delta = ref_logps - logps;
    delta.clone().exp() - delta - 1.0
}

/// 1 where a completion token's entropy is at least the batch's `1 − top` quantile (linear
/// interpolation between order statistics, as `torch.quantile`), 0 elsewhere and on padding:
/// TRL's `get_high_entropy_mask`.
pub fn high_entropy_mask(entropies: Tensor<2>, mask: Tensor<2>, top: f64) -> Tensor<2> {
    let dims = entropies.dims();
    let device = entropies.device();
    let values: Vec<f32> = entropies
        .detach()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("entropies are floats");
    let active: Vec<f32> = mask
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("the mask is floats");
    let mut kept: Vec<f32> = values
        .iter()
        .zip(&active)
        .filter(|(_, m)| **m > 0.0)
        .map(|(v, _)| *v)
        .collect();
    let selected: Vec<f32> = if kept.is_empty() {
        vec![0.0; values.len()]
    } else {
        kept.sort_by(f32::total_cmp);
        let position = (1.0 - top) * (kept.len() - 1) as f64;
        let low = position.floor() as usize;
        let high = position.ceil() as usize;
        let fraction = (position - low as f64) as f32;
        let threshold = kept[low] + (kept[high] - kept[low]) * fraction;
        values
            .iter()
            .zip(&active)
            .map(|(v, m)| f32::from(*m > 0.0 && v * m >= threshold))
            .collect()
    };
    Tensor::from_data(burn::tensor::TensorData::new(selected, dims), &device)
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// Computes the GRPO loss as TRL does:
/// `−min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·KL`, masked and normalised per `loss_type`.
pub fn grpo_loss(
    batch: GrpoBatch,
    config: &GrpoLossConfig,
) -> Result<GrpoLossOutput, ObjectiveError> {
    config.validate()?;
    let dims = batch.logps.dims();
    let [b, t] = dims;
    check("mask", &batch.mask, dims)?;
    if batch.advantages.dims() != [b] {
        return Err(ObjectiveError::Shape {
            what: "advantages",
            expected: vec![b],
            found: batch.advantages.dims().to_vec(),
        });
    }
    let mask = batch.mask;
    let old = match batch.old_logps {
        Some(old) => {
            check("old_logps", &old, dims)?;
            old
        }
        None => batch.logps.clone().detach(),
    };
    let log_ratio = batch.logps.clone() - old;
    let log_weights = match config.importance {
        ImportanceLevel::Token => log_ratio,
        ImportanceLevel::Sequence => {
            let lengths = mask.clone().sum_dim(1).clamp_min(1.0);
            ((log_ratio * mask.clone()).sum_dim(1) / lengths).expand([b, t])
        }
    };
    let ratio = log_weights.exp();
    let kl_weight = config.use_bias_correction_kl.then(|| ratio.clone());
    let advantages = batch.advantages.unsqueeze_dim::<2>(1).expand([b, t]);
    let unclipped = ratio.clone() * advantages.clone();
    let clipped = ratio
        .clone()
        .clamp(1.0 - config.epsilon_low, 1.0 + config.epsilon_high)
        * advantages.clone();
    let mut per_token = unclipped.min_pair(clipped).neg();
    if config.top_entropy_quantile < 1.0 {
        let entropies = batch.entropies.clone().ok_or_else(|| {
            ObjectiveError::Config("top_entropy_quantile < 1 needs the per-token entropies".into())
        })?;
        check("entropies", &entropies, dims)?;
        per_token =
            per_token * high_entropy_mask(entropies, mask.clone(), config.top_entropy_quantile);
    }

    let active = mask.clone().sum().clamp_min(1.0);
    let masked_mean = |x: Tensor<2>| scalar((x * mask.clone()).sum() / active.clone());
    let kl = if config.beta != 0.0 {
        let reference = batch.ref_logps.ok_or_else(|| {
            ObjectiveError::Config("beta > 0 needs the reference policy's log-probs".into())
        })?;
        check("ref_logps", &reference, dims)?;
        let mut kl = k3_kl(batch.logps, reference);
        if let Some(ratio) = kl_weight {
            kl = kl * ratio;
        }
        per_token = per_token + kl.clone() * config.beta;
        Some(masked_mean(kl.detach()))
    } else {
        None
    };

    let summed = (per_token.clone() * mask.clone()).sum();
    let loss = match config.loss_type {
        LossType::Grpo => {
            ((per_token * mask.clone()).sum_dim(1) / mask.clone().sum_dim(1).clamp_min(1.0)).mean()
        }
        LossType::Bnpo => summed / active.clone(),
        LossType::DrGrpo => {
            if config.max_completion_length == 0 {
                return Err(ObjectiveError::Config(
                    "dr_grpo needs max_completion_length > 0".into(),
                ));
            }
            summed / (b * config.max_completion_length) as f64
        }
        LossType::Dapo => {
            let items = batch
                .num_items_in_batch
                .ok_or_else(|| ObjectiveError::Config("dapo needs num_items_in_batch".into()))?;
            summed / items.max(1.0)
        }
    };
    let loss = match config.loss_type {
        LossType::Dapo => loss,
        _ => loss / batch.accumulation_steps.max(1) as f64,
    };

    let ratio = ratio.detach();
    let low = ratio
        .clone()
        .lower_elem(1.0 - config.epsilon_low)
        .bool_and(advantages.clone().lower_elem(0.0));
    let high = ratio
        .greater_elem(1.0 + config.epsilon_high)
        .bool_and(advantages.greater_elem(0.0));
    let region = low.clone().bool_or(high.clone());
    let entropy = batch.entropies.map(|e| masked_mean(e.detach()));
    Ok(GrpoLossOutput {
        loss,
        kl,
        entropy,
        clip_low: masked_mean(low.float()),
        clip_high: masked_mean(high.float()),
        clip_region: masked_mean(region.float()),
    })
}
