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

use burn::tensor::{Bool, Tensor};
use tch::{Kind, Tensor as Th};

use super::weights::{
    DecoderWeights, LayerWeights, Norm, Projection, bool_handle, handle, narrowed, widened, wrap,
};
use crate::cache::KvCache;
use crate::config::LayerKind;
use crate::text::{Gemma3TextModel, StepInputs};

/// The decoder's weights as libtorch handles sharing storage with the model's parameters, and
/// the gains of its norms, prepared once per generation call.
pub struct FusedDecoder {
    weights: DecoderWeights,
    final_norm: Norm,
}

impl std::fmt::Debug for FusedDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedDecoder")
            .field("layers", &self.weights.layers.len())
            .field("compute", &self.weights.compute)
            .finish()
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
        if model.norm.weight.val().is_autodiff() {
            return None;
        }
        Some(Self {
            weights: DecoderWeights::new(model)?,
            final_norm: Norm::new(&model.norm)?,
        })
    }

    fn kind_inputs(
        &self,
        rope: &(Tensor<4>, Tensor<4>),
        mask: &Tensor<4, Bool>,
        read_from: usize,
    ) -> Option<KindInputs> {
        let rows = rope.0.dims()[0] as i64;
        let d = self.weights.spec.head_dim as i64;
        let cos = handle(rope.0.clone())?.reshape([rows, 1, d]);
        let sin = handle(rope.1.clone())?.reshape([rows, 1, d]);
        Some(KindInputs {
            cos,
            signed_sin: self.weights.signed(sin),
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
        if len != 1 || cache.layers.len() != self.weights.layers.len() {
            return None;
        }
        let global = self.kind_inputs(&step.rope_global, &step.mask_global, 0)?;
        let local = self.kind_inputs(&step.rope_local, &step.mask_local, step.local_read_from)?;
        let mut x = handle(x.clone())?.reshape([rows as i64, hidden as i64]);
        for (layer, layer_cache) in self.weights.layers.iter().zip(&mut cache.layers) {
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
            let slot = step.start as i64;
            x = DecoderWeights::residual(
                layer,
                &x,
                |normed| self.attention(layer, normed, inputs, slot, &keys, &values),
                |normed| self.weights.mlp(layer, normed, |p, _, x| infer(p, x)),
            );
            layer_cache.restore(wrap(keys), wrap(values));
        }
        cache.advance(1);
        let out = self.final_norm.apply(&x);
        Some(wrap(out.reshape([rows as i64, 1, hidden as i64])))
    }

    fn attention(
        &self,
        layer: &LayerWeights,
        normed: &Th,
        inputs: &KindInputs,
        slot: i64,
        keys: &Th,
        values: &Th,
    ) -> Th {
        let weights = &self.weights;
        let spec = &weights.spec;
        let rows = inputs.rows;
        let (heads, kv_heads, d) = (
            spec.heads as i64,
            spec.kv_heads as i64,
            spec.head_dim as i64,
        );
        let x = narrowed(normed, weights.compute);
        let q = infer(&layer.q, &x).reshape([rows, heads, d]);
        let k = infer(&layer.k, &x).reshape([rows, kv_heads, d]);
        let v = narrowed(&infer(&layer.v, &x), weights.compute).reshape([rows, kv_heads, 1, d]);
        let qk = weights.rotated_qk(layer, q, k, 1, &inputs.cos, &inputs.signed_sin);
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
        let probs = narrowed(&scores.softmax(-1, Kind::Float), weights.compute);
        let out = probs.matmul(&values).reshape([rows, heads * d]);
        widened(&infer(&layer.o, &out))
    }
}

/// A projection at inference: `x W (+ b)` in the weight's dtype for `x` `[rows, d_in]` already
/// in it; with an adapter, plus `x A B alpha/r` in f32 (on `x` widened, as
/// [`crate::layers::LoraLinear::forward`] feeds it), and the sum in f32.
fn infer(projection: &Projection, x: &Th) -> Th {
    let base = projection.base(x);
    let Some(adapter) = &projection.adapter else {
        return base;
    };
    let down = widened(x).mm(&adapter.a);
    let up = match &adapter.b_scaled {
        Some(b_scaled) => down.mm(b_scaled),
        None => down.mm(&adapter.b) * adapter.scale,
    };
    widened(&base) + up
}
