//! Multi-label classification metrics for chest X-ray findings, defined as scikit-learn
//! defines them (and tested against it): per-label precision, recall and F1; macro- and
//! micro-F1 with a configurable `zero_division`; sample Jaccard, exact match, Hamming loss and
//! the rate of unparseable outputs; seeded bootstrap intervals and a paired bootstrap for the
//! difference between two checkpoints; JSON, CSV and Markdown output.
//!
//! ```
//! use chex_metrics::{evaluate, markdown_f1_table, EvalInput, ZeroDivision};
//!
//! let labels = vec!["Edema".to_string(), "Cardiomegaly".to_string()];
//! let truth = vec![vec![true, false], vec![false, true]];
//! let predicted = vec![vec![true, true], vec![false, false]];
//! let input = EvalInput { labels: &labels, truth: &truth, predicted: &predicted, parsed: None };
//! let scores = evaluate(input, ZeroDivision::Zero, None)?;
//! assert_eq!(scores.macro_f1, 0.5);
//! println!("{}", markdown_f1_table(&[("SFT", &scores)])?);
//! # Ok::<(), chex_metrics::MetricsError>(())
//! ```

pub mod bootstrap;
pub mod classification;
pub mod error;
pub mod evaluation;
pub mod report;

pub use bootstrap::{
    BootstrapConfig, Interval, PairedDifference, bootstrap_intervals, paired_bootstrap, percentile,
};
pub use classification::{
    Confusion, LabelScores, ZeroDivision, confusions, exact_match, hamming_loss, sample_jaccard,
};
pub use error::MetricsError;
pub use evaluation::{EvalInput, Evaluation, evaluate};
pub use report::{markdown_f1_table, per_label_csv, summary_csv};
