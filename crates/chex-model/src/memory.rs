//! A memory estimate made from `config.json` and the sizes a run asks for, before anything is
//! allocated: a configuration with absurd dimensions is refused with the figure, instead of
//! the process dying on a 256 GiB allocation.

use serde::Serialize;

use crate::config::Gemma3Config;
use crate::device::DeviceChoice;
use crate::error::ModelError;

/// Bytes of one f32 value.
const F32: f64 = 4.0;
/// Bytes in a GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// What a run will hold at its largest, in bytes (f32 throughout).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemoryEstimate {
    /// The weights.
    pub weights: f64,
    /// Gradients and AdamW's two moments of the trained parameters.
    pub training_state: f64,
    /// The key/value cache of the largest generation batch.
    pub kv_cache: f64,
}

impl MemoryEstimate {
    /// Weights, plus training state for `trained_parameters`, plus the cache of `rows`
    /// sequences of `tokens` positions each.
    pub fn new(config: &Gemma3Config, trained_parameters: f64, rows: usize, tokens: usize) -> Self {
        let t = &config.text_config;
        let per_position =
            2.0 * t.num_hidden_layers as f64 * t.num_key_value_heads as f64 * t.head_dim as f64;
        Self {
            weights: parameters(config) * F32,
            training_state: 3.0 * trained_parameters * F32,
            kv_cache: per_position * rows as f64 * tokens as f64 * F32,
        }
    }

    /// The sum, in bytes.
    pub fn total(&self) -> f64 {
        self.weights + self.training_state + self.kv_cache
    }

    /// Refuses, with the figures, when the estimate exceeds what `device` offers. Only host
    /// memory is known here; a GPU's own memory is left to the backend.
    pub fn ensure_fits(&self, device: DeviceChoice, what: &str) -> Result<(), ModelError> {
        let available = match device {
            DeviceChoice::Cpu | DeviceChoice::NdArray | DeviceChoice::TchCpu => host_memory(),
            DeviceChoice::TchCuda(_) | DeviceChoice::Cuda(_) => None,
        };
        match available {
            Some(bytes) if self.total() > bytes => Err(ModelError::TooLarge {
                what: what.to_string(),
                needed_gib: self.total() / GIB,
                weights_gib: self.weights / GIB,
                training_gib: self.training_state / GIB,
                cache_gib: self.kv_cache / GIB,
                available_gib: bytes / GIB,
            }),
            _ => Ok(()),
        }
    }
}

/// The parameter count in floating point, which cannot overflow however large the
/// dimensions are (unlike [`Gemma3Config::parameter_counts`], which assumes a sane config).
pub fn parameters(config: &Gemma3Config) -> f64 {
    let v = &config.vision_config;
    let t = &config.text_config;
    let f = |x: usize| x as f64;
    let patches = f(v.image_size / v.patch_size.max(1)).powi(2);
    let vd = f(v.hidden_size);
    let vision = f(v.num_channels) * f(v.patch_size).powi(2) * vd
        + patches * vd
        + f(v.num_hidden_layers) * (4.0 * vd * vd + 2.0 * vd * f(v.intermediate_size));
    let d = f(t.hidden_size);
    let q = f(t.num_attention_heads) * f(t.head_dim);
    let kv = f(t.num_key_value_heads) * f(t.head_dim);
    let layer = 2.0 * d * q + 2.0 * d * kv + 3.0 * d * f(t.intermediate_size);
    let heads = if t.tie_word_embeddings { 1.0 } else { 2.0 };
    vision + vd * d + f(t.num_hidden_layers) * layer + heads * f(t.vocab_size) * d
}

/// Physical memory of this machine (Linux `/proc/meminfo`), or `None` where unknown.
pub fn host_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_count_matches_the_exact_count_and_huge_configs_are_refused() {
        let medgemma = Gemma3Config::preset("medgemma-4b").unwrap();
        let exact = medgemma.parameter_counts().total() as f64;
        // Biases and norms are left out of the float count: well under 0.1%.
        assert!((parameters(&medgemma) - exact).abs() / exact < 1e-3);

        let mut huge = medgemma.clone();
        huge.text_config.hidden_size = 1 << 20;
        huge.text_config.intermediate_size = 1 << 22;
        let estimate = MemoryEstimate::new(&huge, 0.0, 1, 1);
        assert!(estimate.weights > 1e15);
        if host_memory().is_some() {
            let err = estimate
                .ensure_fits(DeviceChoice::Cpu, "config.json")
                .unwrap_err();
            assert!(err.to_string().contains("config.json"), "{err}");
            assert!(err.to_string().contains("GiB"), "{err}");
        }
        // The small preset's weights fit any machine that builds this project.
        let small = Gemma3Config::preset("small").unwrap();
        MemoryEstimate::new(&small, 0.0, 8, 512)
            .ensure_fits(DeviceChoice::Cpu, "small")
            .unwrap();
    }

    #[test]
    fn cache_grows_with_rows_and_positions() {
        let c = Gemma3Config::preset("medgemma-4b").unwrap();
        let one = MemoryEstimate::new(&c, 0.0, 1, 100).kv_cache;
        assert_eq!(MemoryEstimate::new(&c, 0.0, 4, 200).kv_cache, 8.0 * one);
        // 34 layers × 2 × 4 kv heads × 256 × 4 bytes per position.
        assert_eq!(one, 34.0 * 2.0 * 4.0 * 256.0 * 4.0 * 100.0);
    }
}
