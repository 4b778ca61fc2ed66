//! The SigLIP vision tower: patch embedding, learned positions, pre-norm transformer blocks and
//! a final LayerNorm. Field names mirror the keys under `model.vision_tower.` (transformers 5.x;
//! older checkpoints put a `vision_model.` level in between, which import removes).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, FloatDType, Tensor};

use crate::config::VisionConfig;
use crate::layers::{LoraLinear, gelu_tanh};

/// `vision_tower`: embeddings, encoder and final norm.
#[derive(Module, Debug)]
pub struct SiglipVisionModel {
    /// Patches and positions.
    pub embeddings: SiglipEmbeddings,
    /// Transformer blocks.
    pub encoder: SiglipEncoder,
    /// LayerNorm on the output.
    pub post_layernorm: LayerNorm,
}

/// A strided convolution cuts the image into patches; each patch gets a learned position.
#[derive(Module, Debug)]
pub struct SiglipEmbeddings {
    /// `[hidden, channels, patch, patch]`.
    pub patch_embedding: Conv2d,
    /// One row per patch position.
    pub position_embedding: Embedding,
}

/// The stack of encoder blocks.
#[derive(Module, Debug)]
pub struct SiglipEncoder {
    /// Blocks in order.
    pub layers: Vec<SiglipEncoderLayer>,
}

/// One pre-norm block: attention, then MLP, each with a residual.
#[derive(Module, Debug)]
pub struct SiglipEncoderLayer {
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// Multi-head self-attention over all patches.
    pub self_attn: SiglipAttention,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm,
    /// Two-layer MLP.
    pub mlp: SiglipMlp,
}

/// Bidirectional multi-head attention.
#[derive(Module, Debug)]
pub struct SiglipAttention {
    /// Query projection.
    pub q_proj: LoraLinear,
    /// Key projection.
    pub k_proj: LoraLinear,
    /// Value projection.
    pub v_proj: LoraLinear,
    /// Output projection.
    pub out_proj: LoraLinear,
    /// Number of heads.
    pub num_heads: usize,
}

/// `fc2(gelu_tanh(fc1(x)))`.
#[derive(Module, Debug)]
pub struct SiglipMlp {
    /// Up projection.
    pub fc1: LoraLinear,
    /// Down projection.
    pub fc2: LoraLinear,
}

const INIT_STD: f64 = 0.02;

impl SiglipVisionModel {
    /// A randomly initialised tower of the configured shape.
    pub fn new(config: &VisionConfig, device: &Device) -> Self {
        let d = config.hidden_size;
        let patches = (config.image_size / config.patch_size).pow(2);
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let linear = |i, o| LoraLinear::new(i, o, true, INIT_STD, device);
        let layers = (0..config.num_hidden_layers)
            .map(|_| SiglipEncoderLayer {
                layer_norm1: norm(),
                self_attn: SiglipAttention {
                    q_proj: linear(d, d),
                    k_proj: linear(d, d),
                    v_proj: linear(d, d),
                    out_proj: linear(d, d),
                    num_heads: config.num_attention_heads,
                },
                layer_norm2: norm(),
                mlp: SiglipMlp {
                    fc1: linear(d, config.intermediate_size),
                    fc2: linear(config.intermediate_size, d),
                },
            })
            .collect();
        let patch_embedding = Conv2dConfig::new([config.num_channels, d], [config.patch_size; 2])
            .with_stride([config.patch_size; 2])
            .init(device);
        let position_embedding = EmbeddingConfig::new(patches, d)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 1.0 / (d as f64).sqrt(),
            })
            .init(device);
        Self {
            embeddings: SiglipEmbeddings {
                patch_embedding,
                position_embedding,
            },
            encoder: SiglipEncoder { layers },
            post_layernorm: norm(),
        }
    }

    /// `[images, channels, side, side]` → `[images, patches, hidden]`.
    ///
    /// A frozen tower meeting autodiff pixels (a trainer's scoring pass) runs outside autodiff
    /// and hands back an untracked result: it records nothing either way, but under autodiff
    /// burn runs attention as separate operations (there is no fused attention backward), which
    /// at MedGemma-4B's 4,096 patches an image took 0.21 s of a 0.70 s LoRA scoring pass on an
    /// H200, where the backend's own fused attention takes a fraction of that.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        if pixels.is_autodiff() && self.is_frozen() {
            return Tensor::from_inner(self.valid().forward(pixels.inner()));
        }
        let m = self;
        let patches = m.embeddings.patch_embedding.forward(pixels);
        let [n, d, gh, gw] = patches.dims();
        let tokens = patches.reshape([n, d, gh * gw]).swap_dims(1, 2);
        let positions: Tensor<2> = m.embeddings.position_embedding.weight.val();
        let mut x = tokens + positions.unsqueeze::<3>();
        for layer in &m.encoder.layers {
            let h = layer
                .self_attn
                .forward(layer.layer_norm1.forward(x.clone()));
            x = x + h;
            let h = layer.mlp.forward(layer.layer_norm2.forward(x.clone()));
            x = x + h;
        }
        m.post_layernorm.forward(x)
    }
}

impl SiglipVisionModel {
    /// Whether no parameter of the tower trains (frozen with [`Module::freeze`], or outside
    /// autodiff).
    pub fn is_frozen(&self) -> bool {
        !self
            .embeddings
            .patch_embedding
            .weight
            .val()
            .is_require_grad()
            && !self.post_layernorm.gamma.val().is_require_grad()
    }
}

impl SiglipAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let h = self.num_heads;
        let split = |t: Tensor<3>| t.reshape([b, n, h, d / h]).swap_dims(1, 2);
        // The input cast once for the three projections; the attention and its output
        // projection in their dtype, the result back in f32 for the residual stream.
        let compute = self.q_proj.weight.val().dtype();
        let x = x.cast(compute);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([b, n, d]))
            .cast(FloatDType::F32)
    }
}

impl SiglipMlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // In the products' dtype, as transformers' bf16 tower: the `[images, patches, 4304]`
        // activation is the tower's largest tensor.
        let x = x.cast(self.fc1.weight.val().dtype());
        self.fc2
            .forward(gelu_tanh(self.fc1.forward(x)))
            .cast(FloatDType::F32)
    }
}
