//! The SFT and GRPO trainers and what they share: training examples, the learning-rate
//! schedule, global gradient-norm clipping, JSONL logs and atomic, resumable checkpoints.

pub mod checkpoint;
pub mod examples;
pub mod grpo;
pub mod log;
pub mod optim;
pub mod schedule;
pub mod sft;

pub use examples::{Example, Policy};
pub use grpo::{GrpoConfig, GrpoOutcome, train_grpo};
pub use sft::{SftConfig, SftOutcome, train_sft};

/// Errors from training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] chex_model::ModelError),
    #[error(transparent)]
    Data(#[from] chex_data::DataError),
    #[error(transparent)]
    Metrics(#[from] chex_metrics::MetricsError),
    #[error(transparent)]
    Objective(#[from] chex_objective::ObjectiveError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("training: {0}")]
    Config(String),
}

impl TrainError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A seed for one purpose at one step, so that a resumed run draws what the uninterrupted run
/// drew.
pub fn step_seed(seed: u64, step: u64, purpose: u64) -> u64 {
    let mut x = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ purpose.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}
