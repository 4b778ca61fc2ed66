//! The ChexReason experiment end to end: a TOML configuration, the data (balanced draws from a
//! training site, in-distribution and cross-site test sets), the stages (optionally pretrain on
//! a third site, evaluate the base model, SFT, evaluate, GRPO, evaluate) and the report (per-label F1 tables with bootstrap
//! intervals, paired SFT → GRPO differences, the generalization verdict, PNG figures).

pub mod config;
pub mod cue;
pub mod data;
pub mod evaluate;
pub mod pipeline;
pub mod plots;
pub mod report;

pub use config::{StudyConfig, TestRole, TestSetConfig};
pub use pipeline::{load_policy, run_study};
pub use report::{Report, write_report};
