//! A decoder layer's parameters as libtorch handles, shared by the fused decode step and the
//! fused training layers: the handles share storage with the model's parameters (nothing is
//! copied), and each norm's gain `1 + weight` is formed once.

use burn::module::{Param, ParamId};
use burn::tensor::{Bool, Tensor};
use burn_tch::{LibTorch, TchTensor};
use tch::{Kind, Tensor as Th};

use crate::config::LayerKind;
use crate::layers::{GemmaRmsNorm, LoraLinear};
use crate::text::{Gemma3DecoderLayer, TextSpec};

/// The libtorch tensor behind `tensor`, when it is one outside autodiff.
pub(crate) fn handle<const D: usize>(tensor: Tensor<D>) -> Option<Th> {
    tensor
        .try_into_primitive::<LibTorch>()
        .ok()
        .map(|t| t.tensor)
}

/// [`handle`] for a mask.
pub(crate) fn bool_handle<const D: usize>(tensor: Tensor<D, Bool>) -> Option<Th> {
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

/// Handles on a norm outside a layer (the decoder's final norm).
pub(crate) fn layer_norm(norm: &GemmaRmsNorm) -> Option<Norm> {
    Norm::new(norm)
}

impl Norm {
    fn new(norm: &GemmaRmsNorm) -> Option<Self> {
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
    /// `B · alpha/r`, for inference (one product fewer per step).
    pub b_scaled: Th,
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
                let b = widened(&parameter(&lora.b)?);
                Some(Adapter {
                    a: widened(&parameter(&lora.a)?),
                    b_scaled: &b * lora.scale,
                    b,
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

    /// `x W (+ b)` in the weight's dtype, for `x` `[..., d_in]` already in it.
    pub fn base(&self, x: &Th) -> Th {
        let y = if x.dim() == 2 {
            x.mm(&self.weight)
        } else {
            x.matmul(&self.weight)
        };
        match &self.bias {
            Some(bias) => y + bias,
            None => y,
        }
    }
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

/// `[-1, …, -1, 1, …, 1]` over a head of `head_dim`: `roll(x) * (sin * sign)` is
/// `rotate_half(x) * sin`.
pub(crate) fn rotation_sign(head_dim: usize, device: tch::Device) -> Th {
    let half = (head_dim / 2) as i64;
    Th::cat(
        &[
            Th::full([half], -1.0, (Kind::Float, device)),
            Th::ones([half], (Kind::Float, device)),
        ],
        0,
    )
}
