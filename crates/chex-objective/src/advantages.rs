//! Group-relative advantages: each completion's reward against the other completions of the
//! same prompt.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::ObjectiveError;

/// How centred rewards are scaled, as TRL's `scale_rewards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdvantageScaling {
    /// Divide by the standard deviation within each group (GRPO's original choice).
    #[default]
    Group,
    /// Divide by the standard deviation over the whole batch.
    Batch,
    /// Centre only (Dr. GRPO argues the division biases towards easy and hard prompts).
    None,
}

/// Small constant added to the standard deviation, as TRL does, so groups whose rewards are
/// all equal get zero advantage rather than a division by zero.
pub const ADVANTAGE_EPS: f64 = 1e-4;

/// `rewards` holds `B = prompts × group_size` values, the completions of one prompt adjacent.
/// Returns `(r − mean_group(r)) / (std + 1e-4)` with `std` over the group, over the batch, or
/// no division; standard deviations are unbiased (n − 1), as `torch.std`.
pub fn group_advantages(
    rewards: Tensor<1>,
    group_size: usize,
    scaling: AdvantageScaling,
) -> Result<Tensor<1>, ObjectiveError> {
    let [batch] = rewards.dims();
    if group_size < 2 || batch % group_size != 0 {
        return Err(ObjectiveError::Config(format!(
            "group advantages need a group size ≥ 2 dividing the batch; got {batch} rewards in groups of {group_size}"
        )));
    }
    let groups = rewards.clone().reshape([batch / group_size, group_size]);
    let centred = (groups.clone() - groups.clone().mean_dim(1)).reshape([batch]);
    Ok(match scaling {
        AdvantageScaling::None => centred,
        AdvantageScaling::Group => {
            let std = groups
                .var(1)
                .sqrt()
                .expand([batch / group_size, group_size])
                .reshape([batch]);
            centred / (std + ADVANTAGE_EPS)
        }
        AdvantageScaling::Batch => {
            let std = rewards.var(0).sqrt();
            centred / (std.expand([batch]) + ADVANTAGE_EPS)
        }
    })
}
