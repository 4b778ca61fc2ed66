//! Choosing the next token: greedy, or sampling with temperature, top-k and top-p from a
//! seeded generator per row (so results do not depend on thread scheduling).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Logits are divided by this before softmax; 0 means greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 keeps all).
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
}

impl SamplingConfig {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        }
    }

    /// ChexReason's rollout setting: temperature 0.8, top-p 0.95.
    pub fn chexreason() -> Self {
        Self {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
        }
    }

    /// Whether this picks the arg-max.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// A generator for one row, derived from the run's seed and the row index.
pub fn row_rng(seed: u64, row: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(row as u64);
    rng
}

/// Choose a token from one row of logits. Returns the token and its log-probability under the
/// temperature-scaled distribution before top-k/top-p truncation, which is what the GRPO
/// objective compares new log-probs against (as TRL does).
pub fn sample_token(logits: &[f32], config: &SamplingConfig, rng: &mut ChaCha8Rng) -> (u32, f32) {
    let temperature = if config.is_greedy() {
        1.0
    } else {
        config.temperature
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = logits
        .iter()
        .map(|&l| ((l - max) / temperature).exp())
        .collect();
    let sum: f64 = weights.iter().map(|&w| w as f64).sum();
    let log_norm = sum.ln() as f32;
    let logprob = |i: usize| (logits[i] - max) / temperature - log_norm;
    if config.is_greedy() {
        let best = argmax(logits);
        return (best as u32, logprob(best));
    }
    // Sort by weight, descending, on packed integer keys: positive f32 bits order like the
    // floats, and the index breaks ties toward the lower id.
    let mut keys: Vec<u64> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| ((!w.to_bits() as u64) << 32) | i as u64)
        .collect();
    let limit = if config.top_k > 0 {
        config.top_k.min(keys.len())
    } else {
        keys.len()
    };
    if limit < keys.len() {
        keys.select_nth_unstable(limit - 1);
        keys.truncate(limit);
    }
    keys.sort_unstable();
    let order = |n: usize| (keys[n] & 0xffff_ffff) as usize;
    let mut keep = keys.len();
    if config.top_p < 1.0 {
        let target = config.top_p as f64 * sum;
        let mut cumulative = 0.0;
        for n in 0..keys.len() {
            cumulative += weights[order(n)] as f64;
            if cumulative >= target {
                keep = n + 1;
                break;
            }
        }
    }
    let total: f64 = (0..keep).map(|n| weights[order(n)] as f64).sum();
    let mut draw = rng.random::<f64>() * total;
    for n in 0..keep {
        draw -= weights[order(n)] as f64;
        if draw <= 0.0 {
            return (order(n) as u32, logprob(order(n)));
        }
    }
    let last = order(keep - 1);
    (last as u32, logprob(last))
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_maximum_with_its_log_probability() {
        let mut rng = row_rng(0, 0);
        let (t, lp) = sample_token(&[0.0, 2.0, 1.0], &SamplingConfig::greedy(), &mut rng);
        let expected = 2.0 - (1.0f32 + 2.0f32.exp() + 1.0f32.exp()).ln();
        assert_eq!(t, 1);
        assert!((lp - expected).abs() < 1e-6);
    }

    #[test]
    fn top_p_and_top_k_exclude_the_tail_and_seeds_repeat() {
        let logits = [5.0, 4.0, -10.0, -10.0];
        let config = SamplingConfig {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 0,
        };
        let draw = |seed| {
            let mut rng = row_rng(seed, 3);
            (0..200)
                .map(|_| sample_token(&logits, &config, &mut rng).0)
                .collect::<Vec<_>>()
        };
        let a = draw(1);
        assert!(a.iter().all(|&t| t < 2), "tail tokens are never drawn");
        assert!(a.contains(&1) && a.contains(&0));
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
        let top1 = SamplingConfig { top_k: 1, ..config };
        let mut rng = row_rng(0, 0);
        assert!((0..50).all(|_| sample_token(&logits, &top1, &mut rng).0 == 0));
    }
}
