//! Rewards by name: a configuration lists `[[grpo.rewards]] name = "hard", weight = 1.0`, and a
//! [`RewardRegistry`] turns the list into a [`RewardSet`]. The built-in rewards are registered
//! under their names; a downstream crate registers its own [`Reward`] the same way, without
//! touching the trainer.
//!
//! ```
//! use chex_rewards::{Prepared, Reward, RewardInit, RewardRegistry, WeightedReward};
//!
//! struct Brevity;
//! impl Reward for Brevity {
//!     fn name(&self) -> &str { "brevity" }
//!     fn score(&mut self, input: &Prepared) -> f64 { -(input.token_count as f64) / 1000.0 }
//! }
//!
//! let mut registry = RewardRegistry::builtin();
//! registry.register("brevity", |_: &RewardInit| Box::new(Brevity));
//! let specs = [WeightedReward::new("hard", 1.0), WeightedReward::new("brevity", 0.5)];
//! let rewards = registry.build(&specs, &RewardInit::default())?;
//! assert_eq!(rewards.names(), vec!["hard", "brevity"]);
//! # Ok::<(), chex_rewards::UnknownReward>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rewards::{
    F1Reward, FormatReward, HardReward, NuancedConfig, NuancedReward, Reward, RewardSet,
    ShortnessPenalty, StrictJaccardReward,
};

/// One named reward and its weight in the total, as a configuration lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedReward {
    /// A registered name (`hard`, `nuanced`, `strict_jaccard`, `shortness`, `format`, `f1`, or
    /// one a downstream crate registered).
    pub name: String,
    /// Its weight in the total reward (TRL's `reward_weights`).
    #[serde(default = "unit_weight")]
    pub weight: f64,
}

fn unit_weight() -> f64 {
    1.0
}

impl WeightedReward {
    /// `name` with `weight`.
    pub fn new(name: &str, weight: f64) -> Self {
        Self {
            name: name.into(),
            weight,
        }
    }
}

/// What a reward may be built from: facts about the prompt pool of the run.
#[derive(Debug, Clone, Default)]
pub struct RewardInit {
    /// Fraction of the pool's images positive for each label of the vocabulary (the nuanced
    /// reward weighs false positives by it); empty when unknown.
    pub label_frequencies: Vec<f64>,
    /// Size of the label vocabulary.
    pub labels: usize,
}

/// Builds one reward.
pub type RewardFactory = Box<dyn Fn(&RewardInit) -> Box<dyn Reward> + Send + Sync>;

/// A name the registry does not know.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown reward `{name}`; registered: {}", known.join(", "))]
pub struct UnknownReward {
    pub name: String,
    pub known: Vec<String>,
}

/// Reward factories by name.
#[derive(Default)]
pub struct RewardRegistry {
    factories: BTreeMap<String, RewardFactory>,
}

impl RewardRegistry {
    /// The built-in rewards: `hard` (ChexReason's), `nuanced` (ChexReason's, on its own scale
    /// of about −100 to 150, so weight it 0.01 beside the others), `strict_jaccard` and
    /// `shortness` (NV-Reason-CXR's pair), `format` and `f1`.
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        registry
            .register("hard", |_| Box::new(HardReward::default()))
            .register("nuanced", |init| {
                let mut nuanced = NuancedReward::new(NuancedConfig::default(), init.labels.max(1));
                if !init.label_frequencies.is_empty() {
                    nuanced = nuanced.with_label_frequencies(&init.label_frequencies);
                }
                Box::new(nuanced)
            })
            .register("strict_jaccard", |_| Box::new(StrictJaccardReward))
            .register("shortness", |_| Box::new(ShortnessPenalty::default()))
            .register("format", |_| Box::new(FormatReward))
            .register("f1", |_| Box::new(F1Reward));
        registry
    }

    /// Register (or replace) the reward built by `factory` under `name`.
    pub fn register(
        &mut self,
        name: &str,
        factory: impl Fn(&RewardInit) -> Box<dyn Reward> + Send + Sync + 'static,
    ) -> &mut Self {
        self.factories.insert(name.into(), Box::new(factory));
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    /// Refuse a list naming an unregistered reward (before any work starts).
    pub fn check(&self, specs: &[WeightedReward]) -> Result<(), UnknownReward> {
        match specs.iter().find(|s| !self.factories.contains_key(&s.name)) {
            Some(s) => Err(UnknownReward {
                name: s.name.clone(),
                known: self.names(),
            }),
            None => Ok(()),
        }
    }

    /// The weighted set the list names; each component is logged under its configured name.
    pub fn build(
        &self,
        specs: &[WeightedReward],
        init: &RewardInit,
    ) -> Result<RewardSet, UnknownReward> {
        self.check(specs)?;
        Ok(specs.iter().fold(RewardSet::default(), |set, spec| {
            set.with_boxed(&spec.name, spec.weight, (self.factories[&spec.name])(init))
        }))
    }
}
