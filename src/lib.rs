//! chex-grpo: train vision-language models to read chest X-rays with supervised fine-tuning
//! on reasoning traces and GRPO, and measure what that does in and out of distribution.
//!
//! This crate is what downstream code imports. It re-exports the member crates —
//! [`data`] (loaders, label spaces, samplers, the synthetic two-site benchmark),
//! [`metrics`] (scikit-learn-exact multi-label metrics and bootstrap intervals),
//! [`model`] (backends and the vision-language model), [`objective`] (the GRPO loss) and
//! [`rewards`] (reward functions) — and holds what composes them: the [`study`] (one
//! ChexReason run end to end) and the [`sweep`] (studies over a grid of settings × seeds).
//!
//! ```no_run
//! use chex_grpo::data::{LoadOptions, NihToChexpert, UncertaintyPolicy};
//! use chex_grpo::DataSource;
//!
//! let source = DataSource::Nih { root: "../shared/data/nih1000".into() };
//! let nih = source.load(&LoadOptions::default())?;
//! let chexpert_view = nih.nih_to_chexpert(&NihToChexpert::default())?;
//! println!("{:?}", chexpert_view.positive_counts(UncertaintyPolicy::PositiveOnly));
//! let device = chex_grpo::model::select_device("cpu")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use chex_data as data;
pub use chex_metrics as metrics;
pub use chex_model as model;
pub use chex_objective as objective;
pub use chex_rewards as rewards;

pub mod baseline;
pub mod bench;
pub mod corpus;
pub mod error;
pub mod eval;
pub mod evaluation;
pub mod inputs;
pub mod progress;
pub mod prompts;
pub mod source;
pub mod study;
pub mod sweep;
pub mod training;

pub use error::{Error, Result};
pub use source::DataSource;
