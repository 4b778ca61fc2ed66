//! Per-label confusion counts and the scores built on them, with scikit-learn's definitions.

use serde::{Deserialize, Serialize};

use crate::error::MetricsError;

/// What a score whose denominator is zero counts as, like scikit-learn's `zero_division`.
///
/// For F1 that happens when a label has no positives and no predictions (then
/// `2·tp + fp + fn = 0`); the default, [`ZeroDivision::Zero`], matches scikit-learn's default.
/// With [`ZeroDivision::Nan`] such labels are left out of macro averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZeroDivision {
    #[default]
    Zero,
    One,
    Nan,
}

impl ZeroDivision {
    fn value(self) -> f64 {
        match self {
            Self::Zero => 0.0,
            Self::One => 1.0,
            Self::Nan => f64::NAN,
        }
    }

    /// `num / den`, or the zero-division value when `den == 0`.
    pub fn divide(self, num: f64, den: f64) -> f64 {
        if den == 0.0 { self.value() } else { num / den }
    }
}

impl std::str::FromStr for ZeroDivision {
    type Err = MetricsError;
    fn from_str(s: &str) -> Result<Self, MetricsError> {
        match s.to_ascii_lowercase().as_str() {
            "0" | "zero" => Ok(Self::Zero),
            "1" | "one" => Ok(Self::One),
            "nan" => Ok(Self::Nan),
            other => Err(MetricsError::Config(format!(
                "unknown zero_division `{other}` (use 0, 1 or nan)"
            ))),
        }
    }
}

/// True/false positive/negative counts for one label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub tn: u64,
}

impl Confusion {
    /// Adds one (truth, prediction) pair.
    pub fn add(&mut self, truth: bool, predicted: bool) {
        match (truth, predicted) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (true, false) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }

    /// Element-wise sum.
    pub fn merge(&mut self, other: &Confusion) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.fn_ += other.fn_;
        self.tn += other.tn;
    }

    /// tp / (tp + fp).
    pub fn precision(&self, zd: ZeroDivision) -> f64 {
        zd.divide(self.tp as f64, (self.tp + self.fp) as f64)
    }

    /// tp / (tp + fn).
    pub fn recall(&self, zd: ZeroDivision) -> f64 {
        zd.divide(self.tp as f64, (self.tp + self.fn_) as f64)
    }

    /// 2·tp / (2·tp + fp + fn), scikit-learn's form (≥ 1.3).
    pub fn f1(&self, zd: ZeroDivision) -> f64 {
        zd.divide(
            2.0 * self.tp as f64,
            (2 * self.tp + self.fp + self.fn_) as f64,
        )
    }
}

/// Scores of one label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelScores {
    pub label: String,
    /// Number of positive samples.
    pub support: u64,
    pub confusion: Confusion,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Mean over the finite values (NaN entries are left out, as scikit-learn does with
/// `zero_division=np.nan`); NaN when none is finite.
pub(crate) fn nan_mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, count) = values
        .into_iter()
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

/// Checks that truth and predictions are rectangular with matching shapes.
pub(crate) fn check_shapes(
    labels: usize,
    truth: &[Vec<bool>],
    predicted: &[Vec<bool>],
) -> Result<(), MetricsError> {
    if truth.is_empty() {
        return Err(MetricsError::Empty);
    }
    if truth.len() != predicted.len() {
        return Err(MetricsError::Shape {
            what: "number of prediction rows".into(),
            expected: truth.len(),
            found: predicted.len(),
        });
    }
    for (row, (t, p)) in truth.iter().zip(predicted).enumerate() {
        for (what, v) in [("truth", t), ("prediction", p)] {
            if v.len() != labels {
                return Err(MetricsError::Shape {
                    what: format!("labels in {what} row {row}"),
                    expected: labels,
                    found: v.len(),
                });
            }
        }
    }
    Ok(())
}

/// Per-label confusion counts.
pub fn confusions(truth: &[Vec<bool>], predicted: &[Vec<bool>]) -> Vec<Confusion> {
    let labels = truth.first().map_or(0, Vec::len);
    let mut counts = vec![Confusion::default(); labels];
    for (t, p) in truth.iter().zip(predicted) {
        for (c, (&ti, &pi)) in counts.iter_mut().zip(t.iter().zip(p)) {
            c.add(ti, pi);
        }
    }
    counts
}

/// Sample-averaged Jaccard index |T ∩ P| / |T ∪ P|; a sample with both sets empty scores the
/// zero-division value (scikit-learn's `jaccard_score(average="samples")`).
pub fn sample_jaccard(truth: &[Vec<bool>], predicted: &[Vec<bool>], zd: ZeroDivision) -> f64 {
    nan_mean(truth.iter().zip(predicted).map(|(t, p)| {
        let inter = t.iter().zip(p).filter(|(a, b)| **a && **b).count();
        let union = t.iter().zip(p).filter(|(a, b)| **a || **b).count();
        zd.divide(inter as f64, union as f64)
    }))
}

/// Fraction of samples whose whole label set is right (subset accuracy).
pub fn exact_match(truth: &[Vec<bool>], predicted: &[Vec<bool>]) -> f64 {
    let hits = truth.iter().zip(predicted).filter(|(t, p)| t == p).count();
    hits as f64 / truth.len().max(1) as f64
}

/// Fraction of (sample, label) cells that are wrong.
pub fn hamming_loss(truth: &[Vec<bool>], predicted: &[Vec<bool>]) -> f64 {
    let cells: usize = truth.iter().map(Vec::len).sum();
    let wrong: usize = truth
        .iter()
        .zip(predicted)
        .map(|(t, p)| t.iter().zip(p).filter(|(a, b)| a != b).count())
        .sum();
    wrong as f64 / cells.max(1) as f64
}
