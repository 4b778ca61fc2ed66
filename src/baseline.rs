//! Reference baselines that need no neural network: chance at the training prevalence, and a
//! per-label logistic regression on coarse pixels. They anchor the report's tables — a VLM
//! that cannot beat pixel regression in distribution has learned little.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Predicts each label positive at random with its training prevalence (seeded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrevalenceBaseline {
    pub prevalence: Vec<f64>,
    pub seed: u64,
}

impl PrevalenceBaseline {
    /// Prevalence of each label in `truth`.
    pub fn fit(truth: &[Vec<bool>], seed: u64) -> Self {
        let labels = truth.first().map_or(0, Vec::len);
        let prevalence = (0..labels)
            .map(|l| truth.iter().filter(|t| t[l]).count() as f64 / truth.len().max(1) as f64)
            .collect();
        Self { prevalence, seed }
    }

    /// One random prediction per sample.
    pub fn predict(&self, samples: usize) -> Vec<Vec<bool>> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        (0..samples)
            .map(|_| {
                self.prevalence
                    .iter()
                    .map(|&p| rng.random_bool(p.clamp(0.0, 1.0)))
                    .collect()
            })
            .collect()
    }
}

/// Settings of the pixel logistic regression.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PixelLogisticConfig {
    pub epochs: usize,
    pub learning_rate: f64,
    pub l2: f64,
}

impl Default for PixelLogisticConfig {
    fn default() -> Self {
        Self {
            epochs: 300,
            learning_rate: 0.5,
            l2: 1e-3,
        }
    }
}

/// One logistic regression per label on standardised pixels, trained by full-batch gradient
/// descent with positives re-weighted to balance each label, and a per-label threshold chosen
/// to maximise F1 on a validation set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PixelLogistic {
    mean: Vec<f64>,
    std: Vec<f64>,
    /// `weights[label]` holds the bias last.
    weights: Vec<Vec<f64>>,
    thresholds: Vec<f64>,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl PixelLogistic {
    /// Fits on `(features, truth)` and tunes thresholds on `(val_features, val_truth)`.
    pub fn fit(
        features: &[Vec<f32>],
        truth: &[Vec<bool>],
        val_features: &[Vec<f32>],
        val_truth: &[Vec<bool>],
        config: &PixelLogisticConfig,
    ) -> Self {
        let dims = features.first().map_or(0, Vec::len);
        let n = features.len().max(1) as f64;
        let mean: Vec<f64> = (0..dims)
            .map(|d| features.iter().map(|f| f[d] as f64).sum::<f64>() / n)
            .collect();
        let std: Vec<f64> = (0..dims)
            .map(|d| {
                let var = features
                    .iter()
                    .map(|f| (f[d] as f64 - mean[d]).powi(2))
                    .sum::<f64>()
                    / n;
                var.sqrt().max(1e-6)
            })
            .collect();
        let standardise = |rows: &[Vec<f32>]| -> Vec<Vec<f64>> {
            rows.iter()
                .map(|f| {
                    f.iter()
                        .enumerate()
                        .map(|(d, &v)| (v as f64 - mean[d]) / std[d])
                        .collect()
                })
                .collect()
        };
        let x = standardise(features);
        let labels = truth.first().map_or(0, Vec::len);
        let weights: Vec<Vec<f64>> = (0..labels)
            .map(|l| {
                let positives = truth.iter().filter(|t| t[l]).count() as f64;
                let pos_weight = if positives > 0.0 {
                    (n - positives) / positives
                } else {
                    1.0
                };
                let mut w = vec![0.0; dims + 1];
                for _ in 0..config.epochs {
                    let mut grad = vec![0.0; dims + 1];
                    for (row, t) in x.iter().zip(truth) {
                        let z = row.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + w[dims];
                        let y = if t[l] { 1.0 } else { 0.0 };
                        let weight = if t[l] { pos_weight } else { 1.0 };
                        let err = weight * (sigmoid(z) - y);
                        for (g, a) in grad.iter_mut().zip(row) {
                            *g += err * a;
                        }
                        grad[dims] += err;
                    }
                    for (d, wd) in w.iter_mut().enumerate() {
                        let reg = if d < dims { config.l2 * *wd } else { 0.0 };
                        *wd -= config.learning_rate * (grad[d] / n + reg);
                    }
                }
                w
            })
            .collect();
        let mut model = Self {
            mean,
            std,
            weights,
            thresholds: vec![0.5; labels],
        };
        let val_scores = model.scores(val_features);
        model.thresholds = (0..labels)
            .map(|l| {
                best_threshold(
                    val_scores.iter().map(|s| s[l]),
                    val_truth.iter().map(|t| t[l]),
                )
            })
            .collect();
        model
    }

    /// Probability per label.
    pub fn scores(&self, features: &[Vec<f32>]) -> Vec<Vec<f64>> {
        let dims = self.mean.len();
        features
            .iter()
            .map(|f| {
                let row: Vec<f64> = f
                    .iter()
                    .enumerate()
                    .map(|(d, &v)| (v as f64 - self.mean[d]) / self.std[d])
                    .collect();
                self.weights
                    .iter()
                    .map(|w| sigmoid(row.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + w[dims]))
                    .collect()
            })
            .collect()
    }

    /// Thresholded predictions.
    pub fn predict(&self, features: &[Vec<f32>]) -> Vec<Vec<bool>> {
        self.scores(features)
            .into_iter()
            .map(|s| {
                s.iter()
                    .zip(&self.thresholds)
                    .map(|(p, t)| p >= t)
                    .collect()
            })
            .collect()
    }
}

/// The threshold among the observed scores that maximises F1 (0.5 when there are no positives).
fn best_threshold(scores: impl Iterator<Item = f64>, truth: impl Iterator<Item = bool>) -> f64 {
    let mut pairs: Vec<(f64, bool)> = scores.zip(truth).collect();
    let positives = pairs.iter().filter(|p| p.1).count();
    if positives == 0 {
        return 0.5;
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut best_f1, mut best) = (-1.0, 0.5);
    for (score, is_positive) in pairs {
        if is_positive {
            tp += 1
        } else {
            fp += 1
        }
        let f1 = 2.0 * tp as f64 / (2 * tp + fp + (positives - tp)) as f64;
        if f1 > best_f1 {
            best_f1 = f1;
            best = score;
        }
    }
    best
}

/// Average-pools a prepared `size × size` image to `grid × grid` features.
pub fn pooled_features(pixels: &[f32], size: usize, grid: usize) -> Vec<f32> {
    let cell = size / grid;
    (0..grid * grid)
        .map(|k| {
            let (gy, gx) = (k / grid, k % grid);
            let mut sum = 0.0;
            for y in gy * cell..(gy + 1) * cell {
                for x in gx * cell..(gx + 1) * cell {
                    sum += pixels[y * size + x];
                }
            }
            sum / (cell * cell) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_learns_a_separable_label_and_prevalence_matches_rate() {
        // Label 0 is on when feature 0 is bright; label 1 is noise.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let rows: Vec<(Vec<f32>, Vec<bool>)> = (0..300)
            .map(|_| {
                let on = rng.random_bool(0.3);
                let f = vec![
                    if on { 1.0 } else { 0.0 } + rng.random_range(-0.3..0.3),
                    rng.random_range(0.0..1.0),
                ];
                (f, vec![on, rng.random_bool(0.5)])
            })
            .collect();
        let (x, y): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
        let model = PixelLogistic::fit(
            &x[..200],
            &y[..200],
            &x[200..],
            &y[200..],
            &PixelLogisticConfig::default(),
        );
        let predicted = model.predict(&x[200..]);
        let correct = predicted
            .iter()
            .zip(&y[200..])
            .filter(|(p, t)| p[0] == t[0])
            .count();
        assert!(correct >= 95, "{correct}/100");
        let prevalence = PrevalenceBaseline::fit(&y, 3);
        let draws = prevalence.predict(20_000);
        let rate = draws.iter().filter(|d| d[0]).count() as f64 / 20_000.0;
        assert!((rate - prevalence.prevalence[0]).abs() < 0.02);
        assert_eq!(pooled_features(&[1.0, 2.0, 3.0, 4.0], 2, 1), vec![2.5]);
    }
}
