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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpoLossConfig {
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    /// Weight of the per-token KL to the reference policy; 0 disables it.
    pub beta: f64,
    pub loss_type: LossType,
    pub importance: ImportanceLevel,
    /// Denominator of `dr_grpo`.
    pub max_completion_length: usize,
}

impl Default for GrpoLossConfig {
    fn default() -> Self {
        Self {
            epsilon_low: 0.15,
            epsilon_high: 0.22,
            beta: 0.15,
            loss_type: LossType::DrGrpo,
            importance: ImportanceLevel::Token,
            max_completion_length: 512,
        }
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

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// Computes the GRPO loss as TRL does:
/// `−min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·KL`, masked and normalised per `loss_type`.
pub fn grpo_loss(
    batch: GrpoBatch,
    config: &GrpoLossConfig,
) -> Result<GrpoLossOutput, ObjectiveError> {
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
    let advantages = batch.advantages.unsqueeze_dim::<2>(1).expand([b, t]);
    let unclipped = ratio.clone() * advantages.clone();
    let clipped = ratio
        .clone()
        .clamp(1.0 - config.epsilon_low, 1.0 + config.epsilon_high)
        * advantages.clone();
    let mut per_token = unclipped.min_pair(clipped).neg();

    let active = mask.clone().sum().clamp_min(1.0);
    let masked_mean = |x: Tensor<2>| scalar((x * mask.clone()).sum() / active.clone());
    let kl = if config.beta != 0.0 {
        let reference = batch.ref_logps.ok_or_else(|| {
            ObjectiveError::Config("beta > 0 needs the reference policy's log-probs".into())
        })?;
        check("ref_logps", &reference, dims)?;
        let kl = k3_kl(batch.logps, reference);
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
