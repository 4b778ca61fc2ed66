//! Seeded bootstrap confidence intervals, and the paired bootstrap for the difference between
//! two checkpoints scored on the same images.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::classification::{Confusion, ZeroDivision, check_shapes, nan_mean};
use crate::error::MetricsError;

/// Bootstrap settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootstrapConfig {
    pub resamples: usize,
    /// Two-sided coverage, e.g. 0.95.
    pub confidence: f64,
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            resamples: 1000,
            confidence: 0.95,
            seed: 0,
        }
    }
}

/// A percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// The paired difference `b − a` of a score, with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedDifference {
    /// Difference on the full test set.
    pub delta: f64,
    pub interval: Interval,
    /// Two-sided bootstrap p-value for "no difference": twice the smaller tail mass at zero.
    pub p_value: f64,
}

/// Per-sample confusion contributions, so each resample only sums rows.
struct Contributions {
    labels: usize,
    rows: Vec<Vec<Confusion>>,
}

impl Contributions {
    fn new(truth: &[Vec<bool>], predicted: &[Vec<bool>]) -> Self {
        let rows = truth
            .iter()
            .zip(predicted)
            .map(|(t, p)| {
                t.iter()
                    .zip(p)
                    .map(|(&ti, &pi)| {
                        let mut c = Confusion::default();
                        c.add(ti, pi);
                        c
                    })
                    .collect()
            })
            .collect();
        Self {
            labels: truth.first().map_or(0, Vec::len),
            rows,
        }
    }

    /// (macro-F1, micro-F1) over the resampled rows.
    fn scores(&self, indices: &[usize], zd: ZeroDivision) -> (f64, f64) {
        let mut counts = vec![Confusion::default(); self.labels];
        for &i in indices {
            for (c, r) in counts.iter_mut().zip(&self.rows[i]) {
                c.merge(r);
            }
        }
        let mut pooled = Confusion::default();
        counts.iter().for_each(|c| pooled.merge(c));
        (nan_mean(counts.iter().map(|c| c.f1(zd))), pooled.f1(zd))
    }
}

fn resample(rng: &mut ChaCha8Rng, n: usize, out: &mut Vec<usize>) {
    out.clear();
    out.extend((0..n).map(|_| rng.random_range(0..n)));
}

/// Linear-interpolation percentile (numpy's default), over finite values.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn interval(values: &[f64], confidence: f64) -> Interval {
    let tail = (1.0 - confidence) / 2.0;
    Interval {
        low: percentile(values, tail),
        high: percentile(values, 1.0 - tail),
    }
}

fn check_config(config: &BootstrapConfig) -> Result<(), MetricsError> {
    if config.resamples == 0 || !(0.0 < config.confidence && config.confidence < 1.0) {
        return Err(MetricsError::Config(format!(
            "bootstrap needs resamples > 0 and 0 < confidence < 1, got {config:?}"
        )));
    }
    Ok(())
}

/// Percentile intervals of (macro-F1, micro-F1) over resampled test sets.
pub fn bootstrap_intervals(
    truth: &[Vec<bool>],
    predicted: &[Vec<bool>],
    zd: ZeroDivision,
    config: &BootstrapConfig,
) -> Result<(Interval, Interval), MetricsError> {
    check_config(config)?;
    check_shapes(truth.first().map_or(0, Vec::len), truth, predicted)?;
    let contributions = Contributions::new(truth, predicted);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut indices = Vec::with_capacity(truth.len());
    let (mut macros, mut micros) = (Vec::new(), Vec::new());
    for _ in 0..config.resamples {
        resample(&mut rng, truth.len(), &mut indices);
        let (m, u) = contributions.scores(&indices, zd);
        macros.push(m);
        micros.push(u);
    }
    Ok((
        interval(&macros, config.confidence),
        interval(&micros, config.confidence),
    ))
}

/// Paired bootstrap of `b − a` for (macro-F1, micro-F1): both checkpoints are scored on the
/// same resampled images each round, so image difficulty cancels out.
pub fn paired_bootstrap(
    truth: &[Vec<bool>],
    predicted_a: &[Vec<bool>],
    predicted_b: &[Vec<bool>],
    zd: ZeroDivision,
    config: &BootstrapConfig,
) -> Result<(PairedDifference, PairedDifference), MetricsError> {
    check_config(config)?;
    let labels = truth.first().map_or(0, Vec::len);
    check_shapes(labels, truth, predicted_a)?;
    check_shapes(labels, truth, predicted_b)?;
    let (a, b) = (
        Contributions::new(truth, predicted_a),
        Contributions::new(truth, predicted_b),
    );
    let all: Vec<usize> = (0..truth.len()).collect();
    let (full_a, full_b) = (a.scores(&all, zd), b.scores(&all, zd));
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut indices = Vec::with_capacity(truth.len());
    let (mut macro_deltas, mut micro_deltas) = (Vec::new(), Vec::new());
    for _ in 0..config.resamples {
        resample(&mut rng, truth.len(), &mut indices);
        let (sa, sb) = (a.scores(&indices, zd), b.scores(&indices, zd));
        macro_deltas.push(sb.0 - sa.0);
        micro_deltas.push(sb.1 - sa.1);
    }
    let summarise = |delta: f64, deltas: &[f64]| {
        let finite: Vec<f64> = deltas.iter().copied().filter(|d| d.is_finite()).collect();
        let n = finite.len().max(1) as f64;
        let below = finite.iter().filter(|d| **d <= 0.0).count() as f64 / n;
        let above = finite.iter().filter(|d| **d >= 0.0).count() as f64 / n;
        PairedDifference {
            delta,
            interval: interval(deltas, config.confidence),
            p_value: (2.0 * below.min(above)).min(1.0),
        }
    };
    Ok((
        summarise(full_b.0 - full_a.0, &macro_deltas),
        summarise(full_b.1 - full_a.1, &micro_deltas),
    ))
}
