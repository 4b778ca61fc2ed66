//! One decode step of every decoder layer written directly in libtorch calls.
//!
//! At MedGemma-4B a decode step of 32 rows reads 8.6 GB of bf16 weights, under 2 ms on an H100,
//! yet took 66 ms on an H200: the GPU idled while the host issued about 115 libtorch calls per
//! layer through burn, each paying dispatch, shape queries and storage bookkeeping
//! (`docs/performance.md`). This path issues about 40 per layer for the same arithmetic:
//!
//! - the residual stream stays `[rows, hidden]`, so every projection is one `mm`;
//! - each norm's gain `1 + weight` is formed once per generation call, not at every step;
//! - queries and keys are normalised and rotated together (one `rms_norm`, one `roll`, one
//!   `addcmul` for both), with the rotation's sign folded into the sine once per step;
//! - keys and values are written into the cache in place and read back as views.
//!
//! It computes what [`crate::text`]'s layers compute, in the same precisions (products in the
//! weights' dtype; norms, rotary angles, softmax and the adapters in f32); tests hold the two
//! paths to each other on libtorch's CPU backend in f32 and bf16, with and without LoRA. It
//! applies only to one new token per row, on libtorch tensors outside autodiff: training and
//! prefill keep burn's operations.

use std::sync::Arc;

use burn::tensor::{Bool, Tensor};
use burn_tch::{LibTorch, TchTensor};
use tch::{Kind, Tensor as Th};

use crate::cache::KvCache;
use crate::config::LayerKind;
use crate::layers::{GemmaRmsNorm, LoraLinear};
use crate::text::{Gemma3DecoderLayer, Gemma3TextModel, StepInputs, TextSpec};

/// The decoder's weights as libtorch handles sharing storage with the model's parameters, and
/// the gains of its norms, prepared once per generation call.
pub struct FusedDecoder {
    layers: Vec<FusedLayer>,
    final_norm: Norm,
    spec: Arc<TextSpec>,
    compute: Kind,
    /// `[-1, …, -1, 1, …, 1]` over a head: `roll(x) * (sin * sign)` is `rotate_half(x) * sin`.
    rotation_sign: Th,
}

impl std::fmt::Debug for FusedDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedDecoder")
            .field("layers", &self.layers.len())
            .field("compute", &self.compute)
            .finish()
    }
}

/// An RMSNorm's gain `1 + weight` in f32, its width and its epsilon.
struct Norm {
    gain: Th,
    width: i64,
    eps: f64,
}

/// A projection's weight `[d_in, d_out]` in the compute dtype, its bias, and its LoRA adapter as
/// `(A, B · alpha/r)` in f32.
struct Projection {
    weight: Th,
    bias: Option<Th>,
    adapter: Option<(Th, Th)>,
}

struct FusedLayer {
    input_norm: Norm,
    post_attention_norm: Norm,
    pre_feedforward_norm: Norm,
    post_feedforward_norm: Norm,
    /// Query heads' gain repeated over the heads, then the key heads': `[heads + kv_heads,
    /// head_dim]`, so one product scales both after one shared normalisation.
    qk_gain: Th,
    qk_eps: f64,
    kind: LayerKind,
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
    gate: Projection,
    up: Projection,
    down: Projection,
}

/// The libtorch tensor behind `tensor`, when it is one outside autodiff.
fn handle<const D: usize>(tensor: Tensor<D>) -> Option<Th> {
    tensor
        .try_into_primitive::<LibTorch>()
        .ok()
        .map(|t| t.tensor)
}

/// [`handle`] for a mask.
fn bool_handle<const D: usize>(tensor: Tensor<D, Bool>) -> Option<Th> {
    tensor
        .try_into_primitive::<LibTorch>()
        .ok()
        .map(|t| t.tensor)
}

fn wrap<const D: usize>(tensor: Th) -> Tensor<D> {
    Tensor::from_primitive::<LibTorch>(TchTensor::new(tensor))
}

fn widened(t: &Th) -> Th {
    if t.kind() == Kind::Float {
        t.shallow_clone()
    } else {
        t.to_kind(Kind::Float)
    }
}

fn narrowed(t: &Th, kind: Kind) -> Th {
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}

impl Norm {
    fn new(norm: &GemmaRmsNorm) -> Option<Self> {
        Some(Self {
            gain: widened(&handle(norm.weight.val())?) + 1.0,
            width: norm.weight.dims()[0] as i64,
            eps: norm.eps,
        })
    }

    fn apply(&self, x: &Th) -> Th {
        widened(x).rms_norm([self.width], Some(&self.gain), self.eps)
    }
}

impl Projection {
    fn new(linear: &LoraLinear) -> Option<Self> {
        let weight = handle(linear.weight.val())?;
        let bias = match &linear.bias {
            Some(b) => Some(narrowed(&handle(b.val())?, weight.kind())),
            None => None,
        };
        let adapter = match &linear.lora {
            Some(lora) => Some((
                widened(&handle(lora.a.val())?),
                widened(&handle(lora.b.val())?) * lora.scale,
            )),
            None => None,
        };
        Some(Self {
            weight,
            bias,
            adapter,
        })
    }

    /// `x W (+ b)` in the weight's dtype for `x` `[rows, d_in]` already in it; with an adapter,
    /// plus `x A B alpha/r` in f32 (on `x` widened, as [`LoraLinear::forward`] feeds it), and
    /// the sum in f32.
    fn apply(&self, x: &Th) -> Th {
        let base = x.mm(&self.weight);
        let base = match &self.bias {
            Some(bias) => base + bias,
            None => base,
        };
        match &self.adapter {
            None => base,
            Some((a, b)) => widened(&base) + widened(x).mm(a).mm(b),
        }
    }
}

impl FusedLayer {
    fn new(layer: &Gemma3DecoderLayer, kind: LayerKind, spec: &TextSpec) -> Option<Self> {
        let attention = &layer.self_attn;
        let (q_norm, k_norm) = (Norm::new(&attention.q_norm)?, Norm::new(&attention.k_norm)?);
        // One normalisation serves both only with one epsilon; Gemma's config has one.
        if q_norm.eps != k_norm.eps {
            return None;
        }
        let repeat = |gain: &Th, heads: usize| gain.unsqueeze(0).repeat([heads as i64, 1]);
        let qk_gain = Th::cat(
            &[
                repeat(&q_norm.gain, spec.heads),
                repeat(&k_norm.gain, spec.kv_heads),
            ],
            0,
        );
        Some(Self {
            input_norm: Norm::new(&layer.input_layernorm)?,
            post_attention_norm: Norm::new(&layer.post_attention_layernorm)?,
            pre_feedforward_norm: Norm::new(&layer.pre_feedforward_layernorm)?,
            post_feedforward_norm: Norm::new(&layer.post_feedforward_layernorm)?,
            qk_gain,
            qk_eps: q_norm.eps,
            kind,
            q: Projection::new(&attention.q_proj)?,
            k: Projection::new(&attention.k_proj)?,
            v: Projection::new(&attention.v_proj)?,
            o: Projection::new(&attention.o_proj)?,
            gate: Projection::new(&layer.mlp.gate_proj)?,
            up: Projection::new(&layer.mlp.up_proj)?,
            down: Projection::new(&layer.mlp.down_proj)?,
        })
    }
}

/// Rotary angles and mask of one attention kind for this step, as libtorch handles.
struct KindInputs {
    /// `[rows, 1, head_dim]`.
    cos: Th,
    /// `sin * sign`, `[rows, 1, head_dim]`.
    signed_sin: Th,
    /// `[rows, kv_heads, groups, keys]`, true where a key is hidden.
    mask: Th,
    /// First cached slot this kind reads.
    read_from: i64,
    /// Rows in the batch.
    rows: i64,
}

impl FusedDecoder {
    /// Handles on `model`'s weights, or `None` when any of them is not a libtorch tensor outside
    /// autodiff (or the model is one this path does not cover).
    pub fn new(model: &Gemma3TextModel) -> Option<Self> {
        let spec = model.spec.clone();
        let layers = model
            .layers
            .iter()
            .zip(&spec.layer_kinds)
            .map(|(layer, kind)| FusedLayer::new(layer, *kind, &spec))
            .collect::<Option<Vec<_>>>()?;
        let compute = layers.first()?.q.weight.kind();
        let half = (spec.head_dim / 2) as i64;
        let device = layers[0].qk_gain.device();
        let rotation_sign = Th::cat(
            &[
                Th::full([half], -1.0, (Kind::Float, device)),
                Th::ones([half], (Kind::Float, device)),
            ],
            0,
        );
        Some(Self {
            final_norm: Norm::new(&model.norm)?,
            layers,
            spec,
            compute,
            rotation_sign,
        })
    }

    fn kind_inputs(
        &self,
        rope: &(Tensor<4>, Tensor<4>),
        mask: &Tensor<4, Bool>,
        read_from: usize,
    ) -> Option<KindInputs> {
        let rows = rope.0.dims()[0] as i64;
        let d = self.spec.head_dim as i64;
        let cos = handle(rope.0.clone())?.reshape([rows, 1, d]);
        let sin = handle(rope.1.clone())?.reshape([rows, 1, d]);
        Some(KindInputs {
            cos,
            signed_sin: sin * &self.rotation_sign,
            mask: bool_handle(mask.clone())?,
            read_from: read_from as i64,
            rows,
        })
    }

    /// Run every layer and the final norm on one new token per row, `x` `[rows, 1, hidden]` in
    /// f32, writing keys and values into `cache` at `step`'s slot. `None` when `x`, the step's
    /// tables or the cache are not libtorch tensors outside autodiff (the first two are checked
    /// before anything is written; a cache found wrong part-way keeps the slots written so far,
    /// which burn's path, run instead, writes again).
    pub fn step(&self, x: &Tensor<3>, step: &StepInputs, cache: &mut KvCache) -> Option<Tensor<3>> {
        let [rows, len, hidden] = x.dims();
        if len != 1 || cache.layers.len() != self.layers.len() {
            return None;
        }
        let global = self.kind_inputs(&step.rope_global, &step.mask_global, 0)?;
        let local = self.kind_inputs(&step.rope_local, &step.mask_local, step.local_read_from)?;
        let mut x = handle(x.clone())?.reshape([rows as i64, hidden as i64]);
        for (layer, layer_cache) in self.layers.iter().zip(&mut cache.layers) {
            let inputs = match layer.kind {
                LayerKind::FullAttention => &global,
                LayerKind::SlidingAttention => &local,
            };
            let (keys, values) = layer_cache.take();
            let (Some(keys), Some(values)) = (handle(keys.clone()), handle(values.clone())) else {
                // Layers already run wrote this slot; burn's path, which then runs, rewrites it.
                layer_cache.restore(keys, values);
                return None;
            };
            x = self.layer(layer, x, inputs, step.start as i64, &keys, &values);
            layer_cache.restore(wrap(keys), wrap(values));
        }
        cache.advance(1);
        let out = self.final_norm.apply(&x);
        Some(wrap(out.reshape([rows as i64, 1, hidden as i64])))
    }

    fn layer(
        &self,
        layer: &FusedLayer,
        x: Th,
        inputs: &KindInputs,
        slot: i64,
        keys: &Th,
        values: &Th,
    ) -> Th {
        let h = self.attention(
            layer,
            &layer.input_norm.apply(&x),
            inputs,
            slot,
            keys,
            values,
        );
        let x = x + layer.post_attention_norm.apply(&h);
        let h = self.mlp(layer, &layer.pre_feedforward_norm.apply(&x));
        x + layer.post_feedforward_norm.apply(&h)
    }

    fn attention(
        &self,
        layer: &FusedLayer,
        normed: &Th,
        inputs: &KindInputs,
        slot: i64,
        keys: &Th,
        values: &Th,
    ) -> Th {
        let spec = &self.spec;
        let rows = inputs.rows;
        let (heads, kv_heads, d) = (
            spec.heads as i64,
            spec.kv_heads as i64,
            spec.head_dim as i64,
        );
        let x = narrowed(normed, self.compute);
        let q = layer.q.apply(&x).reshape([rows, heads, d]);
        let k = layer.k.apply(&x).reshape([rows, kv_heads, d]);
        let v = narrowed(&layer.v.apply(&x), self.compute).reshape([rows, kv_heads, 1, d]);
        let qk = if q.kind() == k.kind() {
            widened(&Th::cat(&[q, k], 1))
        } else {
            Th::cat(&[widened(&q), widened(&k)], 1)
        };
        let qk = qk.rms_norm([d], None::<&Th>, layer.qk_eps) * &layer.qk_gain;
        let qk = (&qk * &inputs.cos).addcmul(&qk.roll([d / 2], [2]), &inputs.signed_sin);
        let qk = narrowed(&qk, self.compute);
        let q = qk
            .narrow(1, 0, heads)
            .reshape([rows, kv_heads, heads / kv_heads, d]);
        let k = qk.narrow(1, heads, kv_heads).unsqueeze(2);
        let mut key_slot = keys.narrow(2, slot, 1);
        key_slot.copy_(&k);
        let mut value_slot = values.narrow(2, slot, 1);
        value_slot.copy_(&v);
        let end = slot + 1;
        let keys = keys.narrow(2, inputs.read_from, end - inputs.read_from);
        let values = values.narrow(2, inputs.read_from, end - inputs.read_from);
        let mut scores = widened(&q.matmul(&keys.transpose(2, 3)));
        let _ = scores.g_mul_scalar_(spec.attention_scale);
        if let Some(cap) = spec.attn_softcap {
            let _ = scores.g_div_scalar_(cap);
            let _ = scores.tanh_();
            let _ = scores.g_mul_scalar_(cap);
        }
        let _ = scores.masked_fill_(&inputs.mask, f64::NEG_INFINITY);
        let probs = narrowed(&scores.softmax(-1, Kind::Float), self.compute);
        let out = probs.matmul(&values).reshape([rows, heads * d]);
        widened(&layer.o.apply(&out))
    }

    fn mlp(&self, layer: &FusedLayer, normed: &Th) -> Th {
        let x = narrowed(normed, self.compute);
        let gate = widened(&layer.gate.apply(&x)).gelu("tanh");
        let up = widened(&layer.up.apply(&x));
        widened(&layer.down.apply(&narrowed(&(gate * up), self.compute)))
    }
}
