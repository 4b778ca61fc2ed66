//! A decoder layer's parameters as libtorch handles, shared by the fused decode step and the
//! fused training layers: the handles share storage with the model's parameters (nothing is
//! copied), and each norm's gain `1 + weight` is formed once.

use std::sync::Arc;

use burn::module::{Param, ParamId};
use burn::tensor::kind::Basic;
use burn::tensor::{BackendPrimitive, Tensor};
use burn_tch::{LibTorch, TchTensor};
use tch::{Kind, Tensor as Th};

use crate::config::LayerKind;
use crate::layers::{GemmaRmsNorm, LoraLinear};
use crate::text::{Gemma3DecoderLayer, Gemma3TextModel, TextSpec};

/// The libtorch tensor behind `tensor` (floats, ids or a mask), when it is one outside autodiff.
pub(crate) fn handle<const D: usize, K>(tensor: Tensor<D, K>) -> Option<Th>
where
    K: Basic + BackendPrimitive<LibTorch, Primitive = TchTensor>,
{
    tensor
        .try_into_primitive::<LibTorch>()
        .ok()
        .map(|t| t.tensor)
}

/// A libtorch tensor as a burn tensor (outside autodiff).
pub(crate) fn wrap<const D: usize>(tensor: Th) -> Tensor<D> {
    Tensor::from_primitive::<LibTorch>(TchTensor::new(tensor))
}

/// A parameter's libtorch tensor, taken from under autodiff when the model is there.
fn parameter<const D: usize>(param: &Param<Tensor<D>>) -> Option<Th> {
    let value = param.val();
    handle(if value.is_autodiff() {
        value.inner()
    } else {
        value
    })
}

/// Whether a parameter trains (only possible under autodiff).
fn trains<const D: usize>(param: &Param<Tensor<D>>) -> bool {
    param.val().is_require_grad()
}

/// `t` in f32, without a call when it already is (each call costs host time).
pub(crate) fn widened(t: &Th) -> Th {
    if t.kind() == Kind::Float {
        t.shallow_clone()
    } else {
        t.to_kind(Kind::Float)
    }
}

/// `t` in `kind`, without a call when it already is.
pub(crate) fn narrowed(t: &Th, kind: Kind) -> Th {
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}

/// An RMSNorm's gain `1 + weight` in f32, its width and its epsilon.
pub(crate) struct Norm {
    pub gain: Th,
    pub width: i64,
    pub eps: f64,
}

impl Norm {
    /// Handles on `norm`.
    pub fn new(norm: &GemmaRmsNorm) -> Option<Self> {
        Some(Self {
            gain: widened(&parameter(&norm.weight)?) + 1.0,
            width: norm.weight.dims()[0] as i64,
            eps: norm.eps,
        })
    }

    /// `x / rms(x) * gain` in f32.
    pub fn apply(&self, x: &Th) -> Th {
        widened(x).rms_norm([self.width], Some(&self.gain), self.eps)
    }
}

/// A LoRA adapter: `A` `[d_in, r]` and `B` `[r, d_out]` in f32, with their parameter ids.
pub(crate) struct Adapter {
    pub a: Th,
    pub b: Th,
    /// For a model outside autodiff (inference), formed once: `A` and `B · alpha/r` in the
    /// products' dtype (one product and two casts fewer per projection and step).
    pub inference: Option<(Th, Th)>,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout on the adapter's input in training (0 when the module is not training).
    pub dropout: f64,
    pub a_id: ParamId,
    pub b_id: ParamId,
}

/// A projection's weight `[d_in, d_out]` in the compute dtype, its bias and its adapter.
pub(crate) struct Projection {
    pub weight: Th,
    pub bias: Option<Th>,
    pub adapter: Option<Adapter>,
}

impl Projection {
    fn new(linear: &LoraLinear) -> Option<Self> {
        let weight = parameter(&linear.weight)?;
        let bias = match &linear.bias {
            Some(b) => Some(narrowed(&parameter(b)?, weight.kind())),
            None => None,
        };
        let adapter = match &linear.lora {
            Some(lora) => {
                let (a, b) = (widened(&parameter(&lora.a)?), widened(&parameter(&lora.b)?));
                let compute = weight.kind();
                let inference = (!lora.b.val().is_autodiff())
                    .then(|| (narrowed(&a, compute), narrowed(&(&b * lora.scale), compute)));
                Some(Adapter {
                    a,
                    b,
                    inference,
                    scale: lora.scale,
                    // As burn's `Dropout`: none once the module was frozen out of training.
                    dropout: if lora.dropout.training.is_enabled() {
                        lora.dropout.prob
                    } else {
                        0.0
                    },
                    a_id: lora.a.id,
                    b_id: lora.b.id,
                })
            }
            None => None,
        };
        Some(Self {
            weight,
            bias,
            adapter,
        })
    }

    /// `x W (+ b)` in the weight's dtype, for `x` `[tokens, d_in]` already in it.
    pub fn base(&self, x: &Th) -> Th {
        let y = x.mm(&self.weight);
        match &self.bias {
            Some(bias) => y + bias,
            None => y,
        }
    }
}

/// `base + down · b` as one product (`addmm_`) in `base`'s dtype, for `base` `[tokens, d_out]`,
/// `down` `[tokens, r]` and `b` `[r, d_out]`: the adapter's update is added where its product is
/// accumulated, with one rounding and no pass of its own over the output. `base` is
/// overwritten: an out-of-place `addmm` first copies it into a new output (one more read and
/// write of `[tokens, d_out]` per projection), and nothing else holds it: the caller's product
/// made it, and autograd keeps a product's inputs, not its output. `base` must be that product
/// itself, not a view of it (a reshape): autograd records an in-place write into a view as a
/// copy of the whole base, and its backward pass then zero-fills and copies `[tokens, d_out]`
/// several times (`CopySlices`, `AsStridedBackward0`).
pub(crate) fn add_update(mut base: Th, down: &Th, b: &Th) -> Th {
    debug_assert_eq!(
        base.dim(),
        2,
        "the update is added to a [tokens, d_out] product"
    );
    base.addmm_(down, b)
}

/// `base + input · a · scale · b` (overwriting `base`, see [`add_update`]) for `input`
/// `[tokens, d_in]`, the adapter `a`, `b` (f32) cast to `input`'s dtype for its two products: a
/// LoRA projection's output, as both fused paths compute it.
pub(crate) fn with_update(base: Th, input: &Th, a: &Th, b: &Th, scale: f64) -> Th {
    let kind = input.kind();
    let down = input.mm(&narrowed(a, kind)) * scale;
    add_update(base, &down, &narrowed(b, kind))
}

/// Whether `linear`'s base weight and bias stay fixed (they may still carry a trained adapter).
fn base_frozen(linear: &LoraLinear) -> bool {
    !trains(&linear.weight) && linear.bias.as_ref().is_none_or(|b| !trains(b))
}

/// One decoder layer's parameters.
pub(crate) struct LayerWeights {
    pub input_norm: Norm,
    pub post_attention_norm: Norm,
    pub pre_feedforward_norm: Norm,
    pub post_feedforward_norm: Norm,
    /// Query heads' gain repeated over the heads, then the key heads': `[heads + kv_heads,
    /// head_dim]`, so one product scales both after one shared normalisation.
    pub qk_gain: Th,
    pub qk_eps: f64,
    pub kind: LayerKind,
    pub q: Projection,
    pub k: Projection,
    pub v: Projection,
    pub o: Projection,
    pub gate: Projection,
    pub up: Projection,
    pub down: Projection,
}

impl LayerWeights {
    /// Handles on `layer`'s parameters, or `None` when one is not a libtorch tensor, or when
    /// the layer differs from what these paths compute (the query and key norms with different
    /// epsilons).
    pub fn new(layer: &Gemma3DecoderLayer, kind: LayerKind, spec: &TextSpec) -> Option<Self> {
        let attention = &layer.self_attn;
        let (q_norm, k_norm) = (Norm::new(&attention.q_norm)?, Norm::new(&attention.k_norm)?);
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

    /// Whether only LoRA adapters of `layer` train: its norms and base weights are fixed.
    pub fn only_adapters_train(layer: &Gemma3DecoderLayer) -> bool {
        let attention = &layer.self_attn;
        let norms = [
            &layer.input_layernorm,
            &layer.post_attention_layernorm,
            &layer.pre_feedforward_layernorm,
            &layer.post_feedforward_layernorm,
            &attention.q_norm,
            &attention.k_norm,
        ];
        let linears = [
            &attention.q_proj,
            &attention.k_proj,
            &attention.v_proj,
            &attention.o_proj,
            &layer.mlp.gate_proj,
            &layer.mlp.up_proj,
            &layer.mlp.down_proj,
        ];
        norms.iter().all(|n| !trains(&n.weight)) && linears.iter().all(|l| base_frozen(l))
    }

    /// The seven projections, in the order a layer applies them.
    pub fn projections(&self) -> [&Projection; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }
}

/// A decoder's layers as handles, with what both fused paths derive from them once: the
/// products' dtype and the rotation's sign.
pub(crate) struct DecoderWeights {
    pub layers: Vec<LayerWeights>,
    pub spec: Arc<TextSpec>,
    /// The projections' dtype, which the products run in.
    pub compute: Kind,
    /// `[-1, …, -1, 1, …, 1]` over a head: `roll(x) * (sin * sign)` is `rotate_half(x) * sin`.
    pub rotation_sign: Th,
}

impl DecoderWeights {
    /// Handles on `model`'s layers, or `None` when one of them is not a libtorch tensor (see
    /// [`LayerWeights::new`]).
    pub fn new(model: &Gemma3TextModel) -> Option<Self> {
        let spec = model.spec.clone();
        let layers = model
            .layers
            .iter()
            .zip(&spec.layer_kinds)
            .map(|(layer, kind)| LayerWeights::new(layer, *kind, &spec))
            .collect::<Option<Vec<_>>>()?;
        let first = layers.first()?;
        let compute = first.q.weight.kind();
        let half = (spec.head_dim / 2) as i64;
        let device = first.qk_gain.device();
        let rotation_sign = Th::cat(
            &[
                Th::full([half], -1.0, (Kind::Float, device)),
                Th::ones([half], (Kind::Float, device)),
            ],
            0,
        );
        Some(Self {
            layers,
            spec,
            compute,
            rotation_sign,
        })
    }

    /// `sin * sign` (see [`Self::rotation_sign`]).
    pub fn signed(&self, sin: Th) -> Th {
        sin * &self.rotation_sign
    }

    /// Gemma 3's sandwich norms around a layer's `attention` and `mlp`, each given its normed
    /// input, on the residual stream `x` (f32).
    pub fn residual(
        layer: &LayerWeights,
        x: &Th,
        attention: impl FnOnce(&Th) -> Th,
        mlp: impl FnOnce(&Th) -> Th,
    ) -> Th {
        let x = x + layer
            .post_attention_norm
            .apply(&attention(&layer.input_norm.apply(x)));
        let h = mlp(&layer.pre_feedforward_norm.apply(&x));
        x + layer.post_feedforward_norm.apply(&h)
    }

    /// Queries `[..., heads, d]` and keys `[..., kv_heads, d]`, joined on `head_axis`, each
    /// head normalised by its gain and rotated by `cos` and `signed_sin` in f32, back in the
    /// compute dtype: one `rms_norm`, one `roll` and one `addcmul` for both.
    pub fn rotated_qk(
        &self,
        layer: &LayerWeights,
        q: Th,
        k: Th,
        head_axis: i64,
        cos: &Th,
        signed_sin: &Th,
    ) -> Th {
        let d = self.spec.head_dim as i64;
        let qk = if q.kind() == k.kind() {
            widened(&Th::cat(&[q, k], head_axis))
        } else {
            Th::cat(&[widened(&q), widened(&k)], head_axis)
        };
        let qk = qk.rms_norm([d], None::<&Th>, layer.qk_eps) * &layer.qk_gain;
        let qk = (&qk * cos).addcmul(&qk.roll([d / 2], [head_axis + 1]), signed_sin);
        narrowed(&qk, self.compute)
    }

    /// The GeGLU MLP on `normed`: the activation and the gating product in the products'
    /// dtype, as [`crate::text`]'s MLP (libtorch's bf16 `gelu` computes in f32 and rounds
    /// once), the products by `project` (given a projection, its index among the layer's seven
    /// and its input).
    pub fn mlp(
        &self,
        layer: &LayerWeights,
        normed: &Th,
        project: impl Fn(&Projection, usize, &Th) -> Th,
    ) -> Th {
        let x = narrowed(normed, self.compute);
        let gate = project(&layer.gate, 4, &x).gelu("tanh");
        let up = project(&layer.up, 5, &x);
        widened(&project(&layer.down, 6, &(gate * up)))
    }
}
