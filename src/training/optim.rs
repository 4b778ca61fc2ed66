//! The optimizer's settings (AdamW with Hugging Face's defaults, which TRL and the ChexReason
//! paper inherit) and global gradient-norm clipping (as `torch.nn.utils.clip_grad_norm_`; burn's
//! own clipping is per parameter).

use chex_model::burn::module::{Module, ModuleVisitor, Param};
use chex_model::burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use chex_model::burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::ensure;

/// AdamW with decoupled weight decay, as `torch.optim.AdamW`. The defaults are Hugging Face
/// `TrainingArguments`': weight decay 0, β (0.9, 0.999), ε 1e-8 — not burn's (1e-4, 1e-5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Decoupled weight decay (`adam_weight_decay` / `weight_decay`).
    #[serde(default)]
    pub weight_decay: f64,
    /// `adam_beta1`.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// `adam_beta2`.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// `adam_epsilon`, added to the root of the second moment.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_epsilon() -> f64 {
    1e-8
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            weight_decay: 0.0,
            beta1: default_beta1(),
            beta2: default_beta2(),
            epsilon: default_epsilon(),
        }
    }
}

impl OptimizerConfig {
    /// Hugging Face's defaults with this weight decay.
    pub fn with_weight_decay(weight_decay: f64) -> Self {
        Self {
            weight_decay,
            ..Self::default()
        }
    }

    /// The optimizer.
    pub fn init(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(self.beta1 as f32)
            .with_beta_2(self.beta2 as f32)
            .with_epsilon(self.epsilon as f32)
            .with_weight_decay(self.weight_decay as f32)
            .init()
    }

    /// Check every value's range; `section` is e.g. `grpo.optimizer`.
    pub fn validate(&self, section: &str) -> crate::Result<()> {
        let key = |k: &str| format!("{section}.{k}");
        ensure(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            &key("weight_decay"),
            format!("must be ≥ 0, got {}", self.weight_decay),
        )?;
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            ensure(
                (0.0..1.0).contains(&beta),
                &key(name),
                format!("must lie in [0, 1), got {beta}"),
            )?;
        }
        ensure(
            self.epsilon.is_finite() && self.epsilon > 0.0,
            &key("epsilon"),
            format!("must be > 0, got {}", self.epsilon),
        )
    }
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: f64,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.total += g.square().sum().into_scalar::<f32>() as f64;
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// The global L2 norm of the gradients; when above `max_norm` every gradient is scaled by
/// `max_norm / (norm + 1e-6)`. Returns the norm before clipping (NaN or infinite when a
/// gradient is).
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut norm = SquaredNorm { grads, total: 0.0 };
    model.visit(&mut norm);
    let total = norm.total.sqrt();
    if total.is_finite() && max_norm > 0.0 && total > max_norm {
        let mut scale = Scale {
            grads,
            factor: max_norm / (total + 1e-6),
        };
        model.visit(&mut scale);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_hugging_faces_not_burns() {
        // transformers.TrainingArguments: weight_decay 0.0, adam_beta1 0.9, adam_beta2 0.999,
        // adam_epsilon 1e-8 (burn's AdamWConfig::new() has weight decay 1e-4 and ε 1e-5).
        let hf = OptimizerConfig::default();
        assert_eq!(
            (hf.weight_decay, hf.beta1, hf.beta2, hf.epsilon),
            (0.0, 0.9, 0.999, 1e-8)
        );
        assert_eq!(crate::training::GrpoConfig::chexreason().optimizer, hf);
        let sft = crate::training::SftConfig::chexreason().optimizer;
        assert_eq!((sft.weight_decay, sft.epsilon), (0.01, 1e-8));
        let parsed: OptimizerConfig = toml::from_str("weight_decay = 0.1").unwrap();
        assert_eq!(parsed, OptimizerConfig::with_weight_decay(0.1));
    }
}
