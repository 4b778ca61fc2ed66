//! Model configuration: the Hugging Face `config.json` of `Gemma3ForConditionalGeneration`
//! read as it is written, plus the named presets (`tiny`, `small`, `medgemma-4b`).
//!
//! Field names follow the checkpoint's `config.json`, so a MedGemma download deserializes
//! without translation. Both spellings that `transformers` has used over time are accepted
//! (`rope_theta`/`rope_scaling`/`rope_local_base_freq` and 5.x's `rope_parameters`;
//! `sliding_window_pattern` and `layer_types`; `image_token_index` and `image_token_id`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Whether a decoder layer attends globally or within a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Causal attention over every earlier position.
    FullAttention,
    /// Causal attention over the last `sliding_window` positions only.
    SlidingAttention,
}

/// Rotary-embedding parameters of one attention kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    /// `default` or `linear` (position interpolation by `factor`).
    #[serde(default = "default_rope_type", alias = "type")]
    pub rope_type: String,
    /// Base of the inverse frequencies.
    pub rope_theta: f64,
    /// Linear scaling factor (positions are divided by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

fn default_rope_type() -> String {
    "default".into()
}

/// The `rope_scaling` entry of transformers 4.x configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `linear` is what Gemma 3 uses; `default` means none.
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Linear scaling factor.
    #[serde(default)]
    pub factor: Option<f64>,
}

/// The Gemma 3 text decoder's `text_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the GeGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Attention scores are scaled by `query_pre_attn_scalar^-1/2`.
    pub query_pre_attn_scalar: f64,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Window of the sliding-attention layers.
    pub sliding_window: usize,
    /// Longest position the model was trained for.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// MLP activation; only `gelu_pytorch_tanh` (Gemma's) is supported.
    #[serde(default = "default_act", alias = "hidden_act")]
    pub hidden_activation: String,
    /// Whether q/k/v/o projections carry biases (false in Gemma 3).
    #[serde(default)]
    pub attention_bias: bool,
    /// Soft-capping of the final logits, when set.
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    /// Soft-capping of attention scores, when set.
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    /// Whether the output head shares the embedding matrix.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// One entry per layer (transformers ≥ 4.53); derived from the pattern when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<LayerKind>>,
    /// Every `sliding_window_pattern`-th layer is global (older configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// Base of the global layers' rotary frequencies (transformers 4.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Base of the sliding layers' rotary frequencies (transformers 4.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Scaling of the global layers' rotary embedding (transformers 4.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Rotary parameters per layer kind (transformers 5.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<BTreeMap<String, RopeParameters>>,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Everything else in the file, kept so a saved config round-trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    131_072
}
fn default_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_true() -> bool {
    true
}
fn default_ln_eps() -> f64 {
    1e-6
}
fn default_channels() -> usize {
    3
}

/// The SigLIP vision tower's `vision_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Width of the encoder.
    pub hidden_size: usize,
    /// Width of the encoder MLP.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input channels (3: the X-ray's grey level is repeated).
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Side of one square patch in pixels.
    pub patch_size: usize,
    /// Epsilon of the LayerNorms.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// MLP activation; only `gelu_pytorch_tanh` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Everything else in the file.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The whole `Gemma3ForConditionalGeneration` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Config {
    /// The decoder.
    pub text_config: TextConfig,
    /// The vision tower.
    pub vision_config: VisionConfig,
    /// Image tokens per image after pooling (a square number).
    pub mm_tokens_per_image: usize,
    /// Id of the placeholder that image features replace.
    #[serde(alias = "image_token_id")]
    pub image_token_index: u32,
    /// Id of `<start_of_image>`.
    #[serde(alias = "boi_token_id")]
    pub boi_token_index: u32,
    /// Id of `<end_of_image>`.
    #[serde(alias = "eoi_token_id")]
    pub eoi_token_index: u32,
    /// Everything else in the file.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The presets `chex` knows by name.
pub const PRESETS: [&str; 3] = ["tiny", "small", "medgemma-4b"];

impl Gemma3Config {
    /// Read and validate a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|e| match e {
            ModelError::Config { message, .. } => ModelError::Config {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Write as `config.json` (the Hugging Face layout).
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.entry("model_type")
                .or_insert_with(|| serde_json::Value::String("gemma3".into()));
            map.entry("architectures")
                .or_insert_with(|| serde_json::json!(["Gemma3ForConditionalGeneration"]));
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }

    /// A named preset: `tiny` (CPU default), `small`, or `medgemma-4b` (the real shapes).
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        let config = match name {
            // Same shapes as the peer's tiny Gemma 3 VLM, so speed figures compare like for like.
            "tiny" => Self::build(
                VisionShape {
                    hidden: 128,
                    inter: 512,
                    layers: 4,
                    heads: 4,
                    image: 64,
                    patch: 8,
                },
                TextShape {
                    vocab: 2048,
                    hidden: 192,
                    inter: 768,
                    layers: 4,
                    heads: 4,
                    kv_heads: 1,
                    head_dim: 48,
                    sliding_window: 128,
                },
                16,
                SpecialIds::small_vocab(),
            ),
            "small" => Self::build(
                VisionShape {
                    hidden: 384,
                    inter: 1536,
                    layers: 6,
                    heads: 6,
                    image: 128,
                    patch: 16,
                },
                TextShape {
                    vocab: 8192,
                    hidden: 512,
                    inter: 2048,
                    layers: 8,
                    heads: 8,
                    kv_heads: 2,
                    head_dim: 64,
                    sliding_window: 512,
                },
                16,
                SpecialIds::small_vocab(),
            ),
            "medgemma-4b" => {
                let mut c = Self::build(
                    VisionShape {
                        hidden: 1152,
                        inter: 4304,
                        layers: 27,
                        heads: 16,
                        image: 896,
                        patch: 14,
                    },
                    TextShape {
                        vocab: 262_208,
                        hidden: 2560,
                        inter: 10_240,
                        layers: 34,
                        heads: 8,
                        kv_heads: 4,
                        head_dim: 256,
                        sliding_window: 1024,
                    },
                    256,
                    SpecialIds {
                        boi: 255_999,
                        eoi: 256_000,
                        image: 262_144,
                    },
                );
                c.text_config.query_pre_attn_scalar = 256.0;
                c.text_config.rope_scaling = Some(RopeScaling {
                    rope_type: "linear".into(),
                    factor: Some(8.0),
                });
                c
            }
            other => {
                return Err(ModelError::UnknownPreset {
                    name: other.into(),
                    known: PRESETS.join(", "),
                });
            }
        };
        config.validate()?;
        Ok(config)
    }

    fn build(v: VisionShape, t: TextShape, mm_tokens: usize, ids: SpecialIds) -> Self {
        Self {
            text_config: TextConfig {
                vocab_size: t.vocab,
                hidden_size: t.hidden,
                intermediate_size: t.inter,
                num_hidden_layers: t.layers,
                num_attention_heads: t.heads,
                num_key_value_heads: t.kv_heads,
                head_dim: t.head_dim,
                query_pre_attn_scalar: t.head_dim as f64,
                rms_norm_eps: 1e-6,
                sliding_window: t.sliding_window,
                max_position_embeddings: 8192,
                hidden_activation: default_act(),
                attention_bias: false,
                final_logit_softcapping: None,
                attn_logit_softcapping: None,
                tie_word_embeddings: true,
                layer_types: None,
                sliding_window_pattern: Some(6),
                rope_theta: Some(1_000_000.0),
                rope_local_base_freq: Some(10_000.0),
                rope_scaling: None,
                rope_parameters: None,
                pad_token_id: Some(0),
                extra: BTreeMap::new(),
            },
            vision_config: VisionConfig {
                hidden_size: v.hidden,
                intermediate_size: v.inter,
                num_hidden_layers: v.layers,
                num_attention_heads: v.heads,
                num_channels: 3,
                image_size: v.image,
                patch_size: v.patch,
                layer_norm_eps: 1e-6,
                hidden_act: default_act(),
                extra: BTreeMap::new(),
            },
            mm_tokens_per_image: mm_tokens,
            image_token_index: ids.image,
            boi_token_index: ids.boi,
            eoi_token_index: ids.eoi,
            extra: BTreeMap::new(),
        }
    }

    /// Check the values this implementation relies on; the error names the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field: &str, message: String| {
            Err(ModelError::Config {
                path: String::new(),
                message: format!("{field}: {message}"),
            })
        };
        let t = &self.text_config;
        let v = &self.vision_config;
        // Checked first, in floating point, so that no later product of dimensions overflows
        // and no allocation is attempted for a model no machine holds.
        let parameters = crate::memory::parameters(self);
        if parameters > MAX_PARAMETERS {
            return bad(
                "config",
                format!(
                    "the dimensions describe {parameters:.2e} parameters ({:.0} GiB in f32); \
                     more than {MAX_PARAMETERS:.0e} is refused",
                    parameters * 4.0 / (1u64 << 30) as f64
                ),
            );
        }
        if t.hidden_activation != "gelu_pytorch_tanh" {
            return bad(
                "text_config.hidden_activation",
                format!(
                    "`{}` is not supported (expected gelu_pytorch_tanh)",
                    t.hidden_activation
                ),
            );
        }
        if v.hidden_act != "gelu_pytorch_tanh" {
            return bad(
                "vision_config.hidden_act",
                format!(
                    "`{}` is not supported (expected gelu_pytorch_tanh)",
                    v.hidden_act
                ),
            );
        }
        if t.num_key_value_heads == 0
            || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads)
        {
            return bad(
                "text_config.num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads = {}",
                    t.num_key_value_heads, t.num_attention_heads
                ),
            );
        }
        if !t.head_dim.is_multiple_of(2) {
            return bad(
                "text_config.head_dim",
                format!(
                    "{} is odd; rotary embeddings need an even width",
                    t.head_dim
                ),
            );
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad(
                "vision_config.num_attention_heads",
                format!(
                    "{} does not divide hidden_size = {}",
                    v.num_attention_heads, v.hidden_size
                ),
            );
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return bad(
                "vision_config.patch_size",
                format!(
                    "{} does not divide image_size = {}",
                    v.patch_size, v.image_size
                ),
            );
        }
        let side = (self.mm_tokens_per_image as f64).sqrt().round() as usize;
        let patches = v.image_size / v.patch_size;
        if side * side != self.mm_tokens_per_image || side == 0 || !patches.is_multiple_of(side) {
            return bad(
                "mm_tokens_per_image",
                format!(
                    "{} must be a square whose side divides the {patches}×{patches} patch grid",
                    self.mm_tokens_per_image
                ),
            );
        }
        if let Some(types) = &t.layer_types
            && types.len() != t.num_hidden_layers
        {
            return bad(
                "text_config.layer_types",
                format!("{} entries for {} layers", types.len(), t.num_hidden_layers),
            );
        }
        for (name, id) in [
            ("image_token_index", self.image_token_index),
            ("boi_token_index", self.boi_token_index),
            ("eoi_token_index", self.eoi_token_index),
        ] {
            if id as usize >= t.vocab_size {
                return bad(
                    name,
                    format!("{id} is outside the vocabulary of {}", t.vocab_size),
                );
            }
        }
        for kind in [LayerKind::FullAttention, LayerKind::SlidingAttention] {
            let rope = self.rope_for(kind);
            if rope.rope_type != "default" && rope.rope_type != "linear" {
                return bad(
                    "text_config.rope_parameters",
                    format!(
                        "rope_type `{}` is not supported (default or linear)",
                        rope.rope_type
                    ),
                );
            }
        }
        Ok(())
    }

    /// The attention kind of every decoder layer.
    pub fn layer_kinds(&self) -> Vec<LayerKind> {
        let t = &self.text_config;
        if let Some(types) = &t.layer_types {
            return types.clone();
        }
        let pattern = t.sliding_window_pattern.unwrap_or(6).max(1);
        (0..t.num_hidden_layers)
            .map(|i| {
                if (i + 1) % pattern == 0 {
                    LayerKind::FullAttention
                } else {
                    LayerKind::SlidingAttention
                }
            })
            .collect()
    }

    /// Rotary parameters for one layer kind, from whichever spelling the config used.
    pub fn rope_for(&self, kind: LayerKind) -> RopeParameters {
        let t = &self.text_config;
        let key = match kind {
            LayerKind::FullAttention => "full_attention",
            LayerKind::SlidingAttention => "sliding_attention",
        };
        if let Some(params) = t.rope_parameters.as_ref().and_then(|p| p.get(key)) {
            return params.clone();
        }
        match kind {
            LayerKind::FullAttention => {
                let scaling = t.rope_scaling.as_ref().filter(|s| s.rope_type != "default");
                RopeParameters {
                    rope_type: scaling
                        .map(|s| s.rope_type.clone())
                        .unwrap_or_else(default_rope_type),
                    rope_theta: t.rope_theta.unwrap_or(1_000_000.0),
                    factor: scaling.and_then(|s| s.factor),
                }
            }
            LayerKind::SlidingAttention => RopeParameters {
                rope_type: default_rope_type(),
                rope_theta: t.rope_local_base_freq.unwrap_or(10_000.0),
                factor: None,
            },
        }
    }

    /// Patches per side of the vision grid.
    pub fn patches_per_side(&self) -> usize {
        self.vision_config.image_size / self.vision_config.patch_size
    }
}

struct VisionShape {
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    image: usize,
    patch: usize,
}

struct TextShape {
    vocab: usize,
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    sliding_window: usize,
}

struct SpecialIds {
    boi: u32,
    eoi: u32,
    image: u32,
}

/// The largest model a configuration may describe (MedGemma-4B has 4.3e9 parameters).
pub const MAX_PARAMETERS: f64 = 1e12;

impl SpecialIds {
    /// The ids our trained tokenizers give the image tokens (see `tokenizer::SPECIAL_TOKENS`).
    fn small_vocab() -> Self {
        Self {
            boi: 6,
            eoi: 7,
            image: 8,
        }
    }
}

/// Parameter counts of each part of the model, as `chex model info` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParameterCounts {
    /// SigLIP encoder.
    pub vision: usize,
    /// Multimodal projector.
    pub projector: usize,
    /// Token embedding (shared with the output head when tied).
    pub embedding: usize,
    /// Decoder layers and final norm.
    pub decoder: usize,
    /// Untied output head (0 when tied).
    pub lm_head: usize,
}

impl ParameterCounts {
    /// Sum of all parts.
    pub fn total(&self) -> usize {
        self.vision + self.projector + self.embedding + self.decoder + self.lm_head
    }
}

impl Gemma3Config {
    /// Parameter counts computed from the shapes, without building the model.
    pub fn parameter_counts(&self) -> ParameterCounts {
        let v = &self.vision_config;
        let t = &self.text_config;
        let patches = self.patches_per_side() * self.patches_per_side();
        let vd = v.hidden_size;
        let vision_layer =
            4 * (vd * vd + vd) + 2 * (vd * v.intermediate_size) + v.intermediate_size + vd + 4 * vd;
        let vision = v.num_channels * v.patch_size * v.patch_size * vd
            + vd
            + patches * vd
            + v.num_hidden_layers * vision_layer
            + 2 * vd;
        let projector = vd * t.hidden_size + vd;
        let d = t.hidden_size;
        let q = t.num_attention_heads * t.head_dim;
        let kv = t.num_key_value_heads * t.head_dim;
        let bias = if t.attention_bias { q + 2 * kv + d } else { 0 };
        let attention = d * q + 2 * d * kv + q * d + 2 * t.head_dim + bias;
        let mlp = 3 * d * t.intermediate_size;
        let decoder = t.num_hidden_layers * (attention + mlp + 4 * d) + d;
        ParameterCounts {
            vision,
            projector,
            embedding: t.vocab_size * d,
            decoder,
            lm_head: if t.tie_word_embeddings {
                0
            } else {
                t.vocab_size * d
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_medgemma_has_four_billion_parameters() {
        for name in PRESETS {
            Gemma3Config::preset(name).unwrap();
        }
        let counts = Gemma3Config::preset("medgemma-4b")
            .unwrap()
            .parameter_counts();
        // Hugging Face reports 4,300,079,472 parameters for google/medgemma-4b-it.
        assert_eq!(counts.total(), 4_300_079_472, "{counts:?}");
        let tiny = Gemma3Config::preset("tiny")
            .unwrap()
            .parameter_counts()
            .total();
        assert!((1_000_000..10_000_000).contains(&tiny), "{tiny}");
    }

    #[test]
    fn pattern_puts_every_sixth_layer_global() {
        let c = Gemma3Config::preset("medgemma-4b").unwrap();
        let kinds = c.layer_kinds();
        assert_eq!(kinds[5], LayerKind::FullAttention);
        assert_eq!(kinds[4], LayerKind::SlidingAttention);
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == LayerKind::FullAttention)
                .count(),
            5
        );
        let global = c.rope_for(LayerKind::FullAttention);
        assert_eq!(
            (global.rope_type.as_str(), global.factor),
            ("linear", Some(8.0))
        );
    }

    #[test]
    fn unsupported_values_name_the_field() {
        let mut c = Gemma3Config::preset("tiny").unwrap();
        c.text_config.hidden_activation = "relu".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("text_config.hidden_activation") && err.contains("relu"),
            "{err}"
        );
        let mut c = Gemma3Config::preset("tiny").unwrap();
        c.mm_tokens_per_image = 15;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("mm_tokens_per_image")
        );
    }

    #[test]
    fn round_trips_through_json() {
        let c = Gemma3Config::preset("small").unwrap();
        let back: Gemma3Config = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(back.text_config, c.text_config);
        assert_eq!(back.mm_tokens_per_image, 16);
    }
}
