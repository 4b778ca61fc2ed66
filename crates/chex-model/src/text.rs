//! The Gemma 3 text decoder: scaled token embeddings, grouped-query attention with q/k norms and
//! two rotary bases, sliding-window and global layers, GeGLU MLPs with Gemma's four norms per
//! layer. Field names mirror the checkpoint keys under `model.language_model.`.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, FloatDType, Int, Tensor};

use crate::cache::KvCache;
use crate::config::{Gemma3Config, LayerKind};
use crate::layers::{GemmaRmsNorm, LoraLinear, gelu_tanh};
use crate::mask::BatchLayout;
use crate::rope::{RotaryTable, apply_rotary};

/// Shapes and tables the decoder needs at run time but never trains.
#[derive(Debug, Clone)]
pub struct TextSpec {
    /// Attention kind per layer.
    pub layer_kinds: Vec<LayerKind>,
    /// Rotary table of the global layers.
    pub rope_global: RotaryTable,
    /// Rotary table of the sliding layers.
    pub rope_local: RotaryTable,
    /// Sliding window width.
    pub sliding_window: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// `query_pre_attn_scalar^-1/2`.
    pub attention_scale: f64,
    /// Attention soft-capping, when set.
    pub attn_softcap: Option<f64>,
    /// `sqrt(hidden_size)`, the embedding multiplier.
    pub embed_scale: f64,
}

impl TextSpec {
    /// Derive from a validated config; rotary tables cover `max_positions`.
    pub fn new(config: &Gemma3Config, max_positions: usize) -> Self {
        let t = &config.text_config;
        Self {
            layer_kinds: config.layer_kinds(),
            rope_global: RotaryTable::new(
                &config.rope_for(LayerKind::FullAttention),
                t.head_dim,
                max_positions,
            ),
            rope_local: RotaryTable::new(
                &config.rope_for(LayerKind::SlidingAttention),
                t.head_dim,
                max_positions,
            ),
            sliding_window: t.sliding_window,
            heads: t.num_attention_heads,
            kv_heads: t.num_key_value_heads,
            head_dim: t.head_dim,
            attention_scale: t.query_pre_attn_scalar.powf(-0.5),
            attn_softcap: t.attn_logit_softcapping,
            embed_scale: (t.hidden_size as f64).sqrt(),
        }
    }
}

/// `language_model`: embeddings, decoder layers, final norm.
#[derive(Module, Debug)]
pub struct Gemma3TextModel {
    /// Token embedding `[vocab, hidden]`, multiplied by `sqrt(hidden)` on lookup.
    pub embed_tokens: Embedding,
    /// Decoder layers.
    pub layers: Vec<Gemma3DecoderLayer>,
    /// Final RMSNorm.
    pub norm: GemmaRmsNorm,
    /// Run-time shapes and rotary tables.
    #[module(skip)]
    pub spec: Arc<TextSpec>,
}

/// One decoder layer with Gemma 3's sandwich norms.
#[derive(Module, Debug)]
pub struct Gemma3DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: GemmaRmsNorm,
    /// Self-attention.
    pub self_attn: Gemma3Attention,
    /// Norm on the attention output.
    pub post_attention_layernorm: GemmaRmsNorm,
    /// Norm before the MLP.
    pub pre_feedforward_layernorm: GemmaRmsNorm,
    /// GeGLU MLP.
    pub mlp: Gemma3Mlp,
    /// Norm on the MLP output.
    pub post_feedforward_layernorm: GemmaRmsNorm,
}

/// Grouped-query attention with RMS-normalised queries and keys.
#[derive(Module, Debug)]
pub struct Gemma3Attention {
    /// Query projection.
    pub q_proj: LoraLinear,
    /// Key projection.
    pub k_proj: LoraLinear,
    /// Value projection.
    pub v_proj: LoraLinear,
    /// Output projection.
    pub o_proj: LoraLinear,
    /// Norm over each query head.
    pub q_norm: GemmaRmsNorm,
    /// Norm over each key head.
    pub k_norm: GemmaRmsNorm,
}

/// `down(gelu_tanh(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Gemma3Mlp {
    /// Gate projection.
    pub gate_proj: LoraLinear,
    /// Up projection.
    pub up_proj: LoraLinear,
    /// Down projection.
    pub down_proj: LoraLinear,
}

/// Everything one forward call shares across layers: rotary angles and the two masks.
pub struct StepInputs {
    pub(crate) rope_global: (Tensor<4>, Tensor<4>),
    pub(crate) rope_local: (Tensor<4>, Tensor<4>),
    pub(crate) mask_global: Tensor<4, Bool>,
    pub(crate) mask_local: Tensor<4, Bool>,
    /// First slot of this call's tokens.
    pub(crate) start: usize,
    /// First cached slot the sliding layers read.
    pub(crate) local_read_from: usize,
    /// Last slot (exclusive) the layers read from the cache: this call's end, or the cache's
    /// whole capacity when it decodes in static shapes ([`KeyReads::WholeCache`]).
    pub(crate) read_to: usize,
    /// Whether keys are read from every slot of the cache (static shapes); the fused libtorch
    /// step then takes its static-shape path.
    #[cfg_attr(not(feature = "tch"), allow(dead_code))]
    pub(crate) whole_cache: bool,
}

/// Which keys a forward call's queries read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyReads {
    /// No cache: this call's own tokens.
    Own,
    /// A cache holding slots `0..start+len`: the filled slots.
    Cached,
    /// Every slot of a cache of this capacity, the unfilled ones masked: the static shapes a
    /// CUDA graph replays ([`KvCache::set_static_decode`]).
    WholeCache(usize),
}

const INIT_STD: f64 = 0.02;

impl Gemma3TextModel {
    /// A randomly initialised decoder.
    pub fn new(config: &Gemma3Config, max_positions: usize, device: &Device) -> Self {
        let t = &config.text_config;
        let d = t.hidden_size;
        let q = t.num_attention_heads * t.head_dim;
        let kv = t.num_key_value_heads * t.head_dim;
        let eps = t.rms_norm_eps;
        let norm = |w| GemmaRmsNorm::new(w, eps, device);
        let linear = |i, o, bias| LoraLinear::new(i, o, bias, INIT_STD, device);
        let layers = (0..t.num_hidden_layers)
            .map(|_| Gemma3DecoderLayer {
                input_layernorm: norm(d),
                self_attn: Gemma3Attention {
                    q_proj: linear(d, q, t.attention_bias),
                    k_proj: linear(d, kv, t.attention_bias),
                    v_proj: linear(d, kv, t.attention_bias),
                    o_proj: linear(q, d, t.attention_bias),
                    q_norm: norm(t.head_dim),
                    k_norm: norm(t.head_dim),
                },
                post_attention_layernorm: norm(d),
                pre_feedforward_layernorm: norm(d),
                mlp: Gemma3Mlp {
                    gate_proj: linear(d, t.intermediate_size, false),
                    up_proj: linear(d, t.intermediate_size, false),
                    down_proj: linear(t.intermediate_size, d, false),
                },
                post_feedforward_layernorm: norm(d),
            })
            .collect();
        Self {
            embed_tokens: EmbeddingConfig::new(t.vocab_size, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: INIT_STD,
                })
                .init(device),
            layers,
            norm: norm(d),
            spec: Arc::new(TextSpec::new(config, max_positions)),
        }
    }

    /// Scaled embeddings of `tokens` `[batch, len]`, in f32 whatever the table's dtype. With a
    /// bf16 table the scale is rounded to bf16 first, as Gemma's own code and transformers do
    /// (`sqrt(2560)` becomes 50.5, not 50.596).
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let looked_up = self.embed_tokens.forward(tokens);
        let scale = match looked_up.dtype() {
            DType::BF16 => half::bf16::from_f64(self.spec.embed_scale).to_f64(),
            _ => self.spec.embed_scale,
        };
        looked_up.cast(FloatDType::F32) * scale
    }

    /// Rotary angles and masks for slots `start..start+len` of `layout`, for queries reading
    /// `reads`.
    pub fn step_inputs(
        &self,
        layout: &BatchLayout,
        start: usize,
        len: usize,
        reads: KeyReads,
        device: &Device,
    ) -> StepInputs {
        let spec = &self.spec;
        let batch = layout.rows.len();
        let positions = layout.positions(start, len);
        let end = start + len;
        let (key_start, key_end) = match reads {
            KeyReads::Own => (start, end),
            KeyReads::Cached => (0, end),
            KeyReads::WholeCache(capacity) => (0, capacity),
        };
        // One new token needs only the last `window` keys; a longer chunk reads everything and
        // lets the mask cut the window, since its first query reaches further back. Static
        // shapes read every slot and let the mask cut it too.
        let local_read_from = if reads == KeyReads::Cached && len == 1 {
            end.saturating_sub(spec.sliding_window)
        } else {
            key_start
        };
        let group = |mask: Tensor<4, Bool>| {
            expand_for_groups(mask, spec.heads / spec.kv_heads, spec.kv_heads)
        };
        StepInputs {
            rope_global: spec.rope_global.lookup(&positions, batch, len, device),
            rope_local: spec.rope_local.lookup(&positions, batch, len, device),
            mask_global: group(layout.mask(start..end, key_start..key_end, None, device)),
            mask_local: group(layout.mask(
                start..end,
                local_read_from..key_end,
                Some(spec.sliding_window),
                device,
            )),
            start,
            local_read_from: local_read_from - key_start,
            read_to: key_end,
            whole_cache: matches!(reads, KeyReads::WholeCache(_)),
        }
    }

    /// Decoder layer `index` alone on `[batch, len, hidden]`, uncached (what per-layer
    /// gradient checkpointing runs and reruns; see [`crate::checkpointing`]).
    pub fn forward_layer(&self, index: usize, x: Tensor<3>, step: &StepInputs) -> Tensor<3> {
        self.layers[index].forward(x, self.spec.layer_kinds[index], step, &self.spec, None)
    }

    /// [`Self::forward_layer`] on a copy of the layer whose parameters are not tracked, so that
    /// with an untracked input nothing is recorded for a backward pass (a detached output alone
    /// would not free what autodiff recorded); LoRA dropout still draws, on an autodiff device.
    pub fn forward_layer_untracked(
        &self,
        index: usize,
        x: Tensor<3>,
        step: &StepInputs,
    ) -> Tensor<3> {
        let layer = self.layers[index].clone().no_grad();
        layer.forward(x, self.spec.layer_kinds[index], step, &self.spec, None)
    }

    /// Run the decoder layers on embeddings `[batch, len, hidden]` and apply the final norm.
    pub fn forward_embeddings(
        &self,
        mut x: Tensor<3>,
        step: &StepInputs,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        #[cfg(feature = "tch")]
        if let Some(cache) = cache.as_deref_mut()
            && let Some(hidden) = self.fused_decode_step(&x, step, cache)
        {
            return hidden;
        }
        for (index, layer) in self.layers.iter().enumerate() {
            let kind = self.spec.layer_kinds[index];
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[index]);
            x = layer.forward(x, kind, step, &self.spec, layer_cache);
        }
        if let Some(cache) = cache {
            cache.advance(x.dims()[1]);
        }
        self.norm.forward(x)
    }
}

#[cfg(feature = "tch")]
impl Gemma3TextModel {
    /// One new token per row through [`crate::fused::decoder`], when the fused path applies
    /// (libtorch weights outside autodiff, a single new position, [`fused_decoding`] on).
    fn fused_decode_step(
        &self,
        x: &Tensor<3>,
        step: &StepInputs,
        cache: &mut KvCache,
    ) -> Option<Tensor<3>> {
        use crate::fused::decoder::FusedDecoder;
        if x.dims()[1] != 1 || !fused_decoding() {
            return None;
        }
        let mut decoder = cache
            .fused
            .get_or_insert_with(|| FusedDecoder::new(self))
            .take()?;
        let hidden = decoder.step(x, step, cache);
        cache.fused = Some(Some(decoder));
        hidden
    }
}

/// Whether generation on libtorch takes the fused decode step: on unless the environment sets
/// `CHEX_FUSED_DECODE=0`, which keeps burn's operations (for benchmarks that compare the two; a
/// test compares them per cache with [`KvCache::set_fused_decoding`]). Always false in a build
/// without libtorch.
pub fn fused_decoding() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(feature = "tch")
        && *ON.get_or_init(|| std::env::var("CHEX_FUSED_DECODE").map_or(true, |v| v != "0"))
}

/// Repeat a `[batch, 1, q, k]` mask for queries folded as `[batch, kv_heads, groups*q, k]`.
fn expand_for_groups(mask: Tensor<4, Bool>, groups: usize, kv_heads: usize) -> Tensor<4, Bool> {
    let [b, _, q, k] = mask.dims();
    let folded = if groups == 1 {
        mask
    } else {
        mask.unsqueeze_dim::<5>(2)
            .expand([b, 1, groups, q, k])
            .reshape([b, 1, groups * q, k])
    };
    folded.expand([b, kv_heads, groups * q, k])
}

impl Gemma3DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        kind: LayerKind,
        step: &StepInputs,
        spec: &TextSpec,
        cache: Option<&mut crate::cache::LayerCache>,
    ) -> Tensor<3> {
        let h = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            kind,
            step,
            spec,
            cache,
        );
        let x = x + self.post_attention_layernorm.forward(h);
        let h = self
            .mlp
            .forward(self.pre_feedforward_layernorm.forward(x.clone()));
        x + self.post_feedforward_layernorm.forward(h)
    }
}

impl Gemma3Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        kind: LayerKind,
        step: &StepInputs,
        spec: &TextSpec,
        cache: Option<&mut crate::cache::LayerCache>,
    ) -> Tensor<3> {
        let [b, len, _] = x.dims();
        let (heads, kv_heads, d) = (spec.heads, spec.kv_heads, spec.head_dim);
        let ((cos, sin), mask) = match kind {
            LayerKind::FullAttention => (&step.rope_global, &step.mask_global),
            LayerKind::SlidingAttention => (&step.rope_local, &step.mask_local),
        };
        // Products of queries, keys and values run in the projections' dtype (bf16 keys also
        // halve the cache); the norms, rotary angles and the softmax stay in f32 (see
        // `decode_attention`). The input is cast once for all three projections, and values and
        // the attention output stay in the compute dtype into their next product: in bf16 that
        // is eight casts per layer where casting around every product took fourteen.
        let compute = self.q_proj.weight.val().dtype();
        let x = x.cast(compute);
        let q = self
            .q_norm
            .forward(self.q_proj.forward(x.clone()).reshape([b, len, heads, d]))
            .swap_dims(1, 2);
        let k = self
            .k_norm
            .forward(
                self.k_proj
                    .forward(x.clone())
                    .reshape([b, len, kv_heads, d]),
            )
            .swap_dims(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .reshape([b, len, kv_heads, d])
            .swap_dims(1, 2);
        let q = apply_rotary(q, cos, sin).cast(compute);
        let k = apply_rotary(k, cos, sin).cast(compute);
        let v = v.cast(compute);
        let (k, v) = match cache {
            Some(cache) => {
                let read_from = match kind {
                    LayerKind::FullAttention => 0,
                    LayerKind::SlidingAttention => step.local_read_from,
                };
                cache.update(k, v, step.start, read_from, step.read_to)
            }
            None => match kind {
                LayerKind::SlidingAttention if step.local_read_from > 0 => {
                    let keys = k.dims()[2];
                    let r = step.local_read_from..keys;
                    (
                        k.slice([0..b, 0..kv_heads, r.clone(), 0..d]),
                        v.slice([0..b, 0..kv_heads, r, 0..d]),
                    )
                }
                _ => (k, v),
            },
        };
        // Grouped-query attention without copying keys: the query heads that share a key head
        // are folded into the query length.
        let groups = heads / kv_heads;
        let q = q.reshape([b, kv_heads, groups * len, d]);
        let options = AttentionModuleOptions {
            scale: Some(spec.attention_scale),
            softcap: spec.attn_softcap,
            is_causal: false,
        };
        let out = if len == 1 {
            decode_attention(q, k, v, mask.clone(), options)
        } else {
            attention(q, k, v, Some(mask.clone()), None, options)
        };
        let out = out
            .reshape([b, heads, len, d])
            .swap_dims(1, 2)
            .reshape([b, len, heads * d]);
        self.o_proj.forward(out).cast(FloatDType::F32)
    }
}

/// Attention for one new token per row, written with matmuls: they read the cache through a
/// strided view, where the fused kernel would first copy every cached key and value. The
/// products run in the inputs' dtype; scaling, soft-cap, mask and softmax in f32, as
/// transformers' eager attention does.
fn decode_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4, Bool>,
    options: AttentionModuleOptions,
) -> Tensor<4> {
    let scale = options.scale.unwrap_or(1.0 / (q.dims()[3] as f64).sqrt());
    let compute = v.dtype();
    let mut scores = q.matmul(k.swap_dims(2, 3)).cast(FloatDType::F32) * scale;
    if let Some(cap) = options.softcap {
        scores = (scores / cap).tanh() * cap;
    }
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    softmax(scores, 3).cast(compute).matmul(v)
}

impl Gemma3Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // As in attention: one cast of the input for both products. The activation and the
        // gating product stay in the products' dtype, as in transformers' bf16 model: the
        // activation is computed in f32 and rounded once (what PyTorch's bf16 `gelu` kernel
        // does), and a product of two bf16 values is rounded once by any backend. Widening the
        // `[rows, len, intermediate]` activations to f32 would double the bytes of the largest
        // tensors a training step keeps and moves.
        let compute = self.gate_proj.weight.val().dtype();
        let x = x.cast(compute);
        let gate = gelu_tanh(self.gate_proj.forward(x.clone()));
        let up = self.up_proj.forward(x);
        self.down_proj.forward(gate * up).cast(FloatDType::F32)
    }
}
