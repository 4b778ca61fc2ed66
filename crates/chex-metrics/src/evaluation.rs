//! One checkpoint's predictions on one test set, scored.

use serde::{Deserialize, Serialize};

use crate::bootstrap::{BootstrapConfig, Interval, bootstrap_intervals};
use crate::classification::{
    Confusion, LabelScores, ZeroDivision, check_shapes, confusions, exact_match, hamming_loss,
    nan_mean, sample_jaccard,
};
use crate::error::MetricsError;

/// What to score: truth, predictions, and which outputs could be parsed at all.
#[derive(Debug, Clone, Copy)]
pub struct EvalInput<'a> {
    pub labels: &'a [String],
    /// `truth[sample][label]`.
    pub truth: &'a [Vec<bool>],
    /// `predicted[sample][label]`; an unparseable output should be given as all-false.
    pub predicted: &'a [Vec<bool>],
    /// Per sample, whether the model's output parsed; `None` means all did.
    pub parsed: Option<&'a [bool]>,
}

/// Every score of one evaluation. Macro means are over labels (NaN labels left out under
/// `ZeroDivision::Nan`); micro scores pool the counts of all labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub samples: usize,
    pub zero_division: ZeroDivision,
    pub per_label: Vec<LabelScores>,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub micro_precision: f64,
    pub micro_recall: f64,
    pub micro_f1: f64,
    pub sample_jaccard: f64,
    pub exact_match: f64,
    pub hamming_loss: f64,
    /// Fraction of outputs that could not be parsed (they count as predicting nothing).
    pub unparseable_rate: f64,
    /// 95% bootstrap intervals of macro- and micro-F1, when requested.
    pub macro_f1_ci: Option<Interval>,
    pub micro_f1_ci: Option<Interval>,
}

impl Evaluation {
    /// F1 of a label by name.
    pub fn f1_of(&self, label: &str) -> Option<f64> {
        self.per_label
            .iter()
            .find(|l| l.label == label)
            .map(|l| l.f1)
    }
}

/// Scores predictions; with `bootstrap`, also the 95% intervals of macro- and micro-F1.
pub fn evaluate(
    input: EvalInput<'_>,
    zd: ZeroDivision,
    bootstrap: Option<&BootstrapConfig>,
) -> Result<Evaluation, MetricsError> {
    check_shapes(input.labels.len(), input.truth, input.predicted)?;
    if let Some(parsed) = input.parsed
        && parsed.len() != input.truth.len()
    {
        return Err(MetricsError::Shape {
            what: "parsed flags".into(),
            expected: input.truth.len(),
            found: parsed.len(),
        });
    }
    let counts = confusions(input.truth, input.predicted);
    let per_label: Vec<LabelScores> = input
        .labels
        .iter()
        .zip(&counts)
        .map(|(label, c)| LabelScores {
            label: label.clone(),
            support: c.tp + c.fn_,
            confusion: *c,
            precision: c.precision(zd),
            recall: c.recall(zd),
            f1: c.f1(zd),
        })
        .collect();
    let mut pooled = Confusion::default();
    counts.iter().for_each(|c| pooled.merge(c));
    let (macro_f1_ci, micro_f1_ci) = match bootstrap {
        Some(config) => {
            let (m, u) = bootstrap_intervals(input.truth, input.predicted, zd, config)?;
            (Some(m), Some(u))
        }
        None => (None, None),
    };
    let unparsed = input
        .parsed
        .map_or(0, |p| p.iter().filter(|ok| !**ok).count());
    Ok(Evaluation {
        samples: input.truth.len(),
        zero_division: zd,
        macro_precision: nan_mean(per_label.iter().map(|l| l.precision)),
        macro_recall: nan_mean(per_label.iter().map(|l| l.recall)),
        macro_f1: nan_mean(per_label.iter().map(|l| l.f1)),
        micro_precision: pooled.precision(zd),
        micro_recall: pooled.recall(zd),
        micro_f1: pooled.f1(zd),
        sample_jaccard: sample_jaccard(input.truth, input.predicted, zd),
        exact_match: exact_match(input.truth, input.predicted),
        hamming_loss: hamming_loss(input.truth, input.predicted),
        unparseable_rate: unparsed as f64 / input.truth.len() as f64,
        per_label,
        macro_f1_ci,
        micro_f1_ci,
    })
}
