//! The GRPO objective as pure burn tensor functions, following TRL's `GRPOTrainer`: group
//! advantages ([`group_advantages`]), per-token or per-sequence (GSPO) importance ratios with
//! asymmetric clipping, the k3 KL estimator ([`k3_kl`]) weighted by β, the loss normalisations
//! `grpo`, `bnpo`, `dr_grpo` and `dapo`, and the clip-fraction / KL / entropy diagnostics.
//!
//! ```
//! use burn::tensor::Tensor;
//! use chex_objective::{group_advantages, grpo_loss, AdvantageScaling, GrpoBatch, GrpoLossConfig};
//!
//! let device = burn::tensor::Device::flex();
//! let rewards = Tensor::<1>::from_floats([1.0, 0.0, 0.5, 0.5], &device);
//! let advantages = group_advantages(rewards, 2, AdvantageScaling::Group)?;
//! let logps = Tensor::<2>::from_floats([[-1.0, -2.0], [-0.5, -0.1], [-0.3, -0.3], [-1.0, -1.0]], &device);
//! let batch = GrpoBatch {
//!     ref_logps: Some(logps.clone()),
//!     logps,
//!     old_logps: None,
//!     advantages,
//!     mask: Tensor::ones([4, 2], &device),
//!     entropies: None,
//!     num_items_in_batch: None,
//!     accumulation_steps: 1,
//! };
//! let out = grpo_loss(batch, &GrpoLossConfig { max_completion_length: 2, ..Default::default() })?;
//! assert_eq!(out.kl, Some(0.0));
//! # Ok::<(), chex_objective::ObjectiveError>(())
//! ```

pub mod advantages;
pub mod error;
pub mod loss;

pub use advantages::{ADVANTAGE_EPS, AdvantageScaling, group_advantages};
pub use error::ObjectiveError;
pub use loss::{
    GrpoBatch, GrpoLossConfig, GrpoLossOutput, ImportanceLevel, LossType, grpo_loss,
    high_entropy_mask, k3_kl,
};
