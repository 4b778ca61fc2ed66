//! ChexReason's greedy balanced sampler: draw N samples so that every label is positive in at
//! least a minimum fraction (5%) of them, and make SFT / RL / validation draws disjoint.

use std::collections::HashSet;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, UncertaintyPolicy};
use crate::error::{DataError, Result};

/// Settings of the balanced sampler.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BalancedSamplerConfig {
    /// Each label must be positive in at least this fraction of a draw (ChexReason: 0.05).
    pub min_label_fraction: f64,
    pub policy: UncertaintyPolicy,
    pub seed: u64,
    /// When true, a patient drawn once is excluded from later draws, so SFT, RL and
    /// validation never share a patient.
    pub patient_disjoint: bool,
}

impl Default for BalancedSamplerConfig {
    fn default() -> Self {
        Self {
            min_label_fraction: 0.05,
            policy: UncertaintyPolicy::PositiveOnly,
            seed: 0,
            patient_disjoint: true,
        }
    }
}

/// One draw: the chosen sample indices and the labels that could not reach their quota.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Draw {
    pub indices: Vec<usize>,
    /// Positive count per label in the draw.
    pub label_counts: Vec<usize>,
    /// `(label, wanted, got)` for every label short of its quota because the pool ran out.
    pub shortfalls: Vec<(String, usize, usize)>,
}

/// Draws disjoint sets of the given sizes, in order (e.g. `[2000, 1000, 200]` for SFT, RL and
/// validation). Each draw first fills the rarest labels up to their quota, then fills the rest
/// uniformly at random. Errors when the pool holds fewer samples than asked for.
pub fn balanced_draws(
    dataset: &Dataset,
    pool: &[usize],
    sizes: &[usize],
    config: &BalancedSamplerConfig,
) -> Result<Vec<Draw>> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let positives: Vec<Vec<usize>> = dataset
        .samples
        .iter()
        .map(|s| s.positive_indices(config.policy))
        .collect();
    let mut available: Vec<usize> = pool.to_vec();
    let mut draws = Vec::with_capacity(sizes.len());
    for (k, &n) in sizes.iter().enumerate() {
        if n > available.len() {
            return Err(DataError::Config(format!(
                "draw {k} asks for {n} samples but only {} remain in the pool",
                available.len()
            )));
        }
        available.shuffle(&mut rng);
        let draw = greedy_balanced(dataset, &positives, &available, n, config);
        let chosen: HashSet<usize> = draw.indices.iter().copied().collect();
        let used_patients: HashSet<&str> = if config.patient_disjoint {
            draw.indices
                .iter()
                .map(|&i| dataset.samples[i].patient_id.as_str())
                .collect()
        } else {
            HashSet::new()
        };
        available.retain(|i| {
            !chosen.contains(i) && !used_patients.contains(dataset.samples[*i].patient_id.as_str())
        });
        available.sort_unstable();
        draws.push(draw);
    }
    Ok(draws)
}

fn greedy_balanced(
    dataset: &Dataset,
    positives: &[Vec<usize>],
    shuffled: &[usize],
    n: usize,
    config: &BalancedSamplerConfig,
) -> Draw {
    let labels = dataset.label_space.len();
    let quota = (config.min_label_fraction * n as f64).ceil() as usize;
    let mut counts = vec![0usize; labels];
    let mut taken = vec![false; shuffled.len()];
    let mut indices = Vec::with_capacity(n);

    let mut supply = vec![0usize; labels];
    for &i in shuffled {
        for &l in &positives[i] {
            supply[l] += 1;
        }
    }
    let mut order: Vec<usize> = (0..labels).filter(|&l| dataset.annotated[l]).collect();
    order.sort_by_key(|&l| (supply[l], l));

    for &label in &order {
        for (slot, &i) in shuffled.iter().enumerate() {
            if indices.len() == n || counts[label] >= quota {
                break;
            }
            if !taken[slot] && positives[i].contains(&label) {
                taken[slot] = true;
                indices.push(i);
                for &l in &positives[i] {
                    counts[l] += 1;
                }
            }
        }
    }
    for (slot, &i) in shuffled.iter().enumerate() {
        if indices.len() == n {
            break;
        }
        if !taken[slot] {
            taken[slot] = true;
            indices.push(i);
            for &l in &positives[i] {
                counts[l] += 1;
            }
        }
    }
    let shortfalls = order
        .iter()
        .filter(|&&l| counts[l] < quota)
        .map(|&l| (dataset.label_space.labels()[l].clone(), quota, counts[l]))
        .collect();
    indices.sort_unstable();
    Draw {
        indices,
        label_counts: counts,
        shortfalls,
    }
}
