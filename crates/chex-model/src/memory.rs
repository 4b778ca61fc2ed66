//! A memory estimate made from `config.json` and the sizes a run asks for, before anything is
//! allocated: a configuration with absurd dimensions is refused with the figure, instead of
//! the process dying on a 256 GiB allocation.

use serde::Serialize;

use crate::config::Gemma3Config;
use crate::device::DeviceChoice;
use crate::error::ModelError;
use crate::precision::ModelDtype;

/// Bytes of one f32 value.
const F32: f64 = 4.0;
/// Bytes in a GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// What a run will hold at its largest, in bytes.
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
    /// Weights in `dtype`, plus training state for `trained_parameters`, plus the cache of
    /// `rows` sequences of `tokens` positions each (in `dtype`, the attention's precision).
    /// Parameters trained in full keep f32 masters: with bf16 weights, their two extra bytes
    /// are counted in the training state beside the f32 gradient and AdamW's two moments.
    pub fn new(
        config: &Gemma3Config,
        dtype: ModelDtype,
        trained_parameters: f64,
        rows: usize,
        tokens: usize,
    ) -> Self {
        let t = &config.text_config;
        let per_position =
            2.0 * t.num_hidden_layers as f64 * t.num_key_value_heads as f64 * t.head_dim as f64;
        let width = dtype.bytes();
        Self {
            weights: parameters(config) * width,
            training_state: trained_parameters * (3.0 * F32 + (F32 - width)),
            kv_cache: per_position * rows as f64 * tokens as f64 * width,
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
        let estimate = MemoryEstimate::new(&huge, ModelDtype::F32, 0.0, 1, 1);
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
        MemoryEstimate::new(&small, ModelDtype::F32, 0.0, 8, 512)
            .ensure_fits(DeviceChoice::Cpu, "small")
            .unwrap();
    }

    #[test]
    fn cache_grows_with_rows_and_positions() {
        let c = Gemma3Config::preset("medgemma-4b").unwrap();
        let one = MemoryEstimate::new(&c, ModelDtype::F32, 0.0, 1, 100).kv_cache;
        assert_eq!(
            MemoryEstimate::new(&c, ModelDtype::F32, 0.0, 4, 200).kv_cache,
            8.0 * one
        );
        // 34 layers × 2 × 4 kv heads × 256 × 4 bytes per position.
        assert_eq!(one, 34.0 * 2.0 * 4.0 * 256.0 * 4.0 * 100.0);
    }

    #[test]
    fn bf16_halves_weights_and_cache_and_keeps_f32_masters_for_trained_weights() {
        let c = Gemma3Config::preset("medgemma-4b").unwrap();
        let n = parameters(&c);
        let f32 = MemoryEstimate::new(&c, ModelDtype::F32, n, 4, 100);
        let bf16 = MemoryEstimate::new(&c, ModelDtype::Bf16, n, 4, 100);
        assert_eq!(bf16.weights * 2.0, f32.weights);
        assert_eq!(bf16.kv_cache * 2.0, f32.kv_cache);
        // Weights plus masters come to the f32 weights: bf16 saves nothing on trained ones.
        assert_eq!(
            bf16.weights + bf16.training_state,
            f32.weights + f32.training_state
        );
        // Under LoRA (nothing trained in full) the 4B weights fit a 24 GiB card in bf16.
        let lora = MemoryEstimate::new(&c, ModelDtype::Bf16, 0.0, 16, 512);
        assert!(lora.total() < 10.0 * GIB, "{}", lora.total() / GIB);
    }
}
