//! Choosing the next token: greedy, or sampling with temperature, top-k and top-p from a
//! seeded generator per row (so results do not depend on thread scheduling).
//!
//! [`sample_rows`] chooses where the logits are: on a GPU only one id and one log-prob per row
//! cross to the host, instead of the whole vocabulary (262,208 floats a row for Gemma 3). Each
//! row's uniform draw comes from its own host generator, so the choice is reproducible and
//! equals [`sample_token`]'s (the reference the device path is tested against) except where a
//! draw falls within float rounding of a boundary between two tokens.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

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
    let uniform = if config.is_greedy() {
        0.0
    } else {
        rng.random::<f64>()
    };
    choose_token(logits, config, uniform)
}

/// [`sample_token`] with the row's uniform draw in `[0, 1)` given (ignored when greedy).
pub fn choose_token(logits: &[f32], config: &SamplingConfig, uniform: f64) -> (u32, f32) {
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
    let mut draw = uniform * total;
    for n in 0..keep {
        draw -= weights[order(n)] as f64;
        if draw <= 0.0 {
            return (order(n) as u32, logprob(order(n)));
        }
    }
    let last = order(keep - 1);
    (last as u32, logprob(last))
}

/// Choose one token per row of `logits` (`[rows, vocab]`) where the logits are, drawing with
/// `uniforms[row]` in `[0, 1)` (ignored when greedy): on a GPU with [`sample_on_device`], so
/// only the choices cross to the host; on a CPU backend, where the logits already are in host
/// memory, with [`choose_token`] over the rows in parallel (sorting packed keys on the host is
/// faster there than the backend's general sort). Returns each row's token and its
/// log-probability under the temperature-scaled distribution.
pub fn sample_rows(
    logits: Tensor<2>,
    config: &SamplingConfig,
    uniforms: &[f64],
) -> Result<Vec<(u32, f32)>, ModelError> {
    if crate::device::is_accelerator(&logits.device()) {
        return sample_on_device(logits, config, uniforms);
    }
    let [rows, vocab] = logits.dims();
    check_uniforms(config, uniforms, rows)?;
    let host: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Generation(format!("{e:?}")))?;
    Ok(host
        .par_chunks(vocab)
        .enumerate()
        .map(|(r, row)| choose_token(row, config, uniforms.get(r).copied().unwrap_or(0.0)))
        .collect())
}

fn check_uniforms(
    config: &SamplingConfig,
    uniforms: &[f64],
    rows: usize,
) -> Result<(), ModelError> {
    if config.is_greedy() || uniforms.len() == rows {
        Ok(())
    } else {
        Err(ModelError::Generation(format!(
            "{} uniform draws for {rows} rows",
            uniforms.len()
        )))
    }
}

/// [`sample_rows`] on the device whatever it is, with the same rule as [`choose_token`]:
/// greedy, or temperature then top-k then top-p (relative to the whole distribution).
pub fn sample_on_device(
    logits: Tensor<2>,
    config: &SamplingConfig,
    uniforms: &[f64],
) -> Result<Vec<(u32, f32)>, ModelError> {
    let [rows, vocab] = logits.dims();
    check_uniforms(config, uniforms, rows)?;
    let device = logits.device();
    let temperature = if config.is_greedy() {
        1.0
    } else {
        config.temperature
    };
    let logp = log_softmax(logits / temperature as f64, 1);
    let tokens: Tensor<2, Int> = if config.is_greedy() {
        logp.clone().argmax(1)
    } else {
        let (sorted, order) = logp.clone().exp().sort_descending_with_indices(1);
        // A token is kept when the mass strictly before it is under top_p (so the kept set is
        // the smallest that reaches top_p), and when it is among the top k.
        let before = sorted.clone().cumsum(1) - sorted.clone();
        let mut keep = before.lower_elem(config.top_p.min(1.0) as f64);
        if config.top_k > 0 && config.top_k < vocab {
            let rank = Tensor::<1, Int>::arange(0..vocab as i64, &device)
                .reshape([1, vocab])
                .expand([rows, vocab]);
            keep = keep.bool_and(rank.lower_elem(config.top_k as i64));
        }
        let kept = sorted.mask_fill(keep.bool_not(), 0.0);
        let cumulative = kept.cumsum(1);
        let total = cumulative.clone().slice([0..rows, vocab - 1..vocab]);
        let uniforms: Vec<f32> = uniforms.iter().map(|&u| u as f32).collect();
        let draw = Tensor::<2>::from_data(TensorData::new(uniforms, [rows, 1]), &device) * total;
        // The chosen rank is the first whose cumulative mass reaches the draw; the cumulative
        // mass is flat after the last kept token, so the count never passes it.
        let rank = cumulative
            .lower(draw.expand([rows, vocab]))
            .int()
            .sum_dim(1);
        order.gather(1, rank)
    };
    let chosen = logp.gather(1, tokens.clone());
    let tokens = tokens
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| ModelError::Generation(format!("{e:?}")))?;
    let logprobs = chosen
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Generation(format!("{e:?}")))?;
    Ok(tokens
        .into_iter()
        .zip(logprobs)
        .map(|(t, lp)| (t as u32, lp))
        .collect())
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

    #[test]
    fn the_device_sampler_chooses_as_the_host_reference_on_every_backend() {
        use crate::device::on_every_test_device;
        let (rows, vocab) = (12, 64);
        let mut source = row_rng(7, 0);
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|_| (source.random::<f32>() - 0.5) * 8.0)
            .collect();
        let configs = [
            SamplingConfig::greedy(),
            SamplingConfig::chexreason(),
            SamplingConfig {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 5,
            },
            SamplingConfig {
                temperature: 1.3,
                top_p: 0.5,
                top_k: 10,
            },
            SamplingConfig {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
            },
        ];
        on_every_test_device(|_, device| {
            for config in &configs {
                let mut host_rngs: Vec<_> = (0..rows).map(|r| row_rng(11, r)).collect();
                let mut device_rngs = host_rngs.clone();
                for _ in 0..25 {
                    let expected: Vec<(u32, f32)> = logits
                        .chunks(vocab)
                        .zip(&mut host_rngs)
                        .map(|(row, rng)| sample_token(row, config, rng))
                        .collect();
                    let uniforms: Vec<f64> = if config.is_greedy() {
                        Vec::new()
                    } else {
                        device_rngs.iter_mut().map(|r| r.random::<f64>()).collect()
                    };
                    let tensor = Tensor::<2>::from_data(
                        TensorData::new(logits.clone(), [rows, vocab]),
                        device,
                    );
                    let found = sample_on_device(tensor.clone(), config, &uniforms).unwrap();
                    // On a CPU backend `sample_rows` is the host reference itself.
                    assert_eq!(sample_rows(tensor, config, &uniforms).unwrap(), expected);
                    for ((t, lp), (et, elp)) in found.iter().zip(&expected) {
                        assert_eq!(t, et, "{config:?}");
                        assert!((lp - elp).abs() < 1e-5, "{config:?}: {lp} vs {elp}");
                    }
                }
            }
        });
    }
}
