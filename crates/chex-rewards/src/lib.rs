//! Reward functions for chest X-ray report completions. A completion is parsed once
//! ([`RewardContext::prepare`]: `<think>…</think><solution>…</solution>`, strict or lenient,
//! configurable tags; labels extracted with a synonym table) and then scored by any of:
//! ChexReason's hard reward ([`HardReward`]) and nuanced reward with its mode-collapse guard
//! ([`NuancedReward`]), NV-Reason-CXR's strict Jaccard and shortness penalty, a format reward
//! and a per-sample F1 reward, alone or as a weighted [`RewardSet`].
//!
//! ```
//! use chex_rewards::{F1Reward, HardReward, RewardContext, RewardSet};
//!
//! let context = RewardContext::default();
//! let cardiomegaly = context.vocabulary.lookup("enlarged heart").unwrap();
//! let done = context.prepare("<think>The heart is wide.</think><solution>Cardiomegaly</solution>", 40, &[cardiomegaly]);
//! let mut rewards = RewardSet::default().with(1.0, HardReward::default()).with(0.5, F1Reward);
//! let scores = rewards.score_batch(&[done]);
//! assert_eq!(scores.total, vec![1.5]);
//! ```

pub mod labels;
pub mod parser;
pub mod registry;
pub mod rewards;

pub use labels::{ExtractedLabels, LabelVocabulary, extract_labels, normalise_phrase};
pub use parser::{OutputFormat, ParseMode, ParsedOutput, parse_output};
pub use registry::{RewardFactory, RewardInit, RewardRegistry, UnknownReward, WeightedReward};
pub use rewards::{
    BatchRewards, ComponentScores, F1Reward, FormatReward, HardReward, NuancedConfig,
    NuancedReward, Prepared, Reward, RewardContext, RewardSet, ShortnessPenalty,
    StrictJaccardReward, jaccard,
};
