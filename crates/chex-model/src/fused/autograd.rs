//! Decoder layers for LoRA training on libtorch, through libtorch's own autograd.
//!
//! Gradient checkpointing runs each decoder layer twice: once without a graph, keeping only its
//! input, and again in the backward pass for its vector-Jacobian product ([`AutogradLayers::forward`],
//! [`AutogradLayers::vjp`]); without checkpointing the layers run once with libtorch's graph
//! kept and one vector-Jacobian product goes through the whole stack ([`TrackedStack`]). Under burn's autodiff
//! a layer's rerun and backward issue several hundred libtorch calls from Rust, each with burn's
//! bookkeeping around it, and on a GPU that host time, not arithmetic, bounds a MedGemma-4B
//! scoring pass (`docs/performance.md`). Here both runs are direct libtorch calls, and the
//! backward is libtorch's autograd engine, which walks the graph in C++ with its fused backward
//! kernels (`rms_norm`, `gelu`, scaled-dot-product attention).
//!
//! It applies when only LoRA adapters train (the base weights and norms are frozen, as in
//! ChexReason's runs), on the libtorch backend. The arithmetic and precisions are those of
//! [`crate::text`]'s layers, and LoRA dropout draws its masks exactly as burn's `Dropout` does
//! on libtorch (one `bernoulli_` over the adapter input's elements in their order, projection
//! by projection), so the gradients equal burn's path's, dropout included; tests hold them to it.

use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use tch::{Kind, Tensor as Th};

use super::weights::{
    Adapter, DecoderWeights, LayerWeights, Projection, handle, narrowed, widened, with_update, wrap,
};
use crate::config::LayerKind;
use crate::text::{Gemma3TextModel, StepInputs};

/// Handles on a model's decoder layers for LoRA training.
pub struct AutogradLayers {
    weights: DecoderWeights,
}

/// A pass's rotary angles and masks, as libtorch handles.
pub struct PassInputs {
    global: KindInputs,
    local: KindInputs,
}

struct KindInputs {
    /// `[rows, len, 1, head_dim]`.
    cos: Th,
    /// `sin * sign`, `[rows, len, 1, head_dim]`.
    signed_sin: Th,
    /// `[rows, kv_heads, groups * len, keys]`, true where a key is hidden.
    hidden: Th,
    /// The same, true where a key is seen (what scaled-dot-product attention takes).
    seen: Th,
}

/// The adapters' tensors one run of a layer uses: the parameters themselves, or leaves that
/// collect their gradients.
struct AdapterTensors {
    a: Th,
    b: Th,
}

impl AutogradLayers {
    /// Handles on `model`'s layers, when it is on libtorch under autodiff and only LoRA
    /// adapters train (`None` otherwise: burn's operations then run the layers).
    pub fn new(model: &Gemma3TextModel) -> Option<Self> {
        if !model.norm.weight.val().is_autodiff()
            || !model.layers.iter().all(LayerWeights::only_adapters_train)
        {
            return None;
        }
        Some(Self {
            weights: DecoderWeights::new(model)?,
        })
    }

    /// The rotary angles and masks of a pass, or `None` when they are not libtorch tensors.
    /// Sliding layers read every key here (the pass has no cache), so both kinds' masks cover
    /// the whole row.
    pub fn inputs(&self, step: &StepInputs) -> Option<PassInputs> {
        if step.local_read_from != 0 {
            return None;
        }
        let kind = |rope: &(Tensor<4>, Tensor<4>), mask: &Tensor<4, burn::tensor::Bool>| {
            let [rows, _, len, d] = rope.0.dims();
            let shape = [rows as i64, len as i64, 1, d as i64];
            let float = |t: &Tensor<4>| handle(t.clone().inner());
            let hidden = handle(mask.clone().inner())?;
            Some(KindInputs {
                cos: float(&rope.0)?.reshape(shape),
                signed_sin: self.weights.signed(float(&rope.1)?.reshape(shape)),
                seen: hidden.logical_not(),
                hidden,
            })
        };
        Some(PassInputs {
            global: kind(&step.rope_global, &step.mask_global)?,
            local: kind(&step.rope_local, &step.mask_local)?,
        })
    }

    /// Layer `index` on `x` `[rows, len, hidden]` (under autodiff, untracked), recording
    /// nothing for a backward pass.
    pub fn forward(&self, index: usize, x: &Tensor<3>, inputs: &PassInputs) -> Option<Tensor<3>> {
        let x = handle(x.clone().inner())?;
        let layer = &self.weights.layers[index];
        let out = tch::no_grad(|| self.layer(layer, &x, inputs, &adapter_tensors(layer, false)));
        Some(Tensor::from_inner(wrap(out)))
    }

    /// The vector-Jacobian product of layer `index` at `input` (under autodiff) with the
    /// gradient `upstream` of its output (outside autodiff): the gradient of its input and
    /// those of its adapters.
    pub fn vjp(
        &self,
        index: usize,
        input: &Tensor<3>,
        upstream: &Tensor<3>,
        inputs: &PassInputs,
    ) -> Option<(Tensor<3>, GradientsParams)> {
        let mut stack = self.track(input, true)?;
        self.forward_tracked(index, &mut stack, inputs);
        let (input_gradient, params) = stack.vjp(upstream)?;
        Some((input_gradient?, params))
    }

    /// Start a stack of layers whose graph libtorch keeps, on `x` (under autodiff); the
    /// gradient of `x` is taken too when `input_grad`.
    pub fn track(&self, x: &Tensor<3>, input_grad: bool) -> Option<TrackedStack> {
        let input = handle(x.clone().inner())?.detach();
        let input = if input_grad {
            input.set_requires_grad(true)
        } else {
            input
        };
        Some(TrackedStack {
            current: input.shallow_clone(),
            input: input_grad.then_some(input),
            leaves: Vec::new(),
        })
    }

    /// Run layer `index` on the top of `stack`, recording its graph.
    pub fn forward_tracked(&self, index: usize, stack: &mut TrackedStack, inputs: &PassInputs) {
        let layer = &self.weights.layers[index];
        let adapters = adapter_tensors(layer, true);
        stack.current = self.layer(layer, &stack.current, inputs, &adapters);
        for (adapter, tensors) in layer
            .projections()
            .iter()
            .filter_map(|p| p.adapter.as_ref())
            .zip(adapters.into_iter().flatten())
        {
            stack.leaves.push((adapter.a_id, tensors.a));
            stack.leaves.push((adapter.b_id, tensors.b));
        }
    }

    fn layer(
        &self,
        layer: &LayerWeights,
        x: &Th,
        inputs: &PassInputs,
        adapters: &[Option<AdapterTensors>],
    ) -> Th {
        let inputs = match layer.kind {
            LayerKind::FullAttention => &inputs.global,
            LayerKind::SlidingAttention => &inputs.local,
        };
        let project = |p: &Projection, index: usize, x: &Th| train(p, x, &adapters[index]);
        DecoderWeights::residual(
            layer,
            x,
            |normed| self.attention(layer, normed, inputs, project),
            |normed| self.weights.mlp(layer, normed, project),
        )
    }

    fn attention(
        &self,
        layer: &LayerWeights,
        normed: &Th,
        inputs: &KindInputs,
        project: impl Fn(&Projection, usize, &Th) -> Th,
    ) -> Th {
        let weights = &self.weights;
        let spec = &weights.spec;
        let size = normed.size();
        let (rows, len) = (size[0], size[1]);
        let (heads, kv_heads, d) = (
            spec.heads as i64,
            spec.kv_heads as i64,
            spec.head_dim as i64,
        );
        let groups = heads / kv_heads;
        let x = narrowed(normed, weights.compute);
        let q = project(&layer.q, 0, &x).reshape([rows, len, heads, d]);
        let k = project(&layer.k, 1, &x).reshape([rows, len, kv_heads, d]);
        let v = narrowed(&project(&layer.v, 2, &x), weights.compute)
            .reshape([rows, len, kv_heads, d])
            .transpose(1, 2);
        let qk = weights.rotated_qk(layer, q, k, 2, &inputs.cos, &inputs.signed_sin);
        // Query heads that share a key head are folded into the query length, as in `text.rs`.
        let q = qk
            .narrow(2, 0, heads)
            .transpose(1, 2)
            .reshape([rows, kv_heads, groups * len, d]);
        let k = qk.narrow(2, heads, kv_heads).transpose(1, 2);
        let out = match spec.attn_softcap {
            None => Th::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&inputs.seen),
                0.0,
                false,
                spec.attention_scale,
                false,
            ),
            Some(cap) => {
                let scores = widened(&q.matmul(&k.transpose(2, 3))) * spec.attention_scale;
                let scores = (scores / cap).tanh() * cap;
                let scores = scores.masked_fill(&inputs.hidden, f64::NEG_INFINITY);
                narrowed(&scores.softmax(-1, Kind::Float), weights.compute).matmul(&v)
            }
        };
        let out =
            out.reshape([rows, heads, len, d])
                .transpose(1, 2)
                .reshape([rows, len, heads * d]);
        widened(&project(&layer.o, 3, &out))
    }
}

/// A layer's adapters, in the order of its projections: as they are (`leaves` false, for a run
/// that records nothing), or as leaves aliasing them, which collect their gradients.
fn adapter_tensors(layer: &LayerWeights, leaves: bool) -> Vec<Option<AdapterTensors>> {
    let tensor = |t: &Th| {
        if leaves {
            t.detach().set_requires_grad(true)
        } else {
            t.shallow_clone()
        }
    };
    layer
        .projections()
        .iter()
        .map(|p| {
            p.adapter.as_ref().map(|a| AdapterTensors {
                a: tensor(&a.a),
                b: tensor(&a.b),
            })
        })
        .collect()
}

/// Decoder layers run with libtorch's graph kept (training without checkpointing): their output,
/// the leaves the gradients are taken for, and the input when its gradient is wanted.
pub struct TrackedStack {
    current: Th,
    input: Option<Th>,
    leaves: Vec<(burn::module::ParamId, Th)>,
}

impl TrackedStack {
    /// The top layer's output, under autodiff, untracked (burn's head starts from it).
    pub fn output(&self) -> Tensor<3> {
        Tensor::from_inner(wrap(self.current.detach()))
    }

    /// The vector-Jacobian product of the whole stack with the gradient `upstream` of its
    /// output (outside autodiff): the gradient of its input, when it was asked for, and those
    /// of every adapter.
    pub fn vjp(self, upstream: &Tensor<3>) -> Option<(Option<Tensor<3>>, GradientsParams)> {
        let upstream = handle(upstream.clone())?;
        let product = (&self.current * upstream).sum(Kind::Float);
        let mut leaves: Vec<Th> = self.input.iter().map(Th::shallow_clone).collect();
        leaves.extend(self.leaves.iter().map(|(_, t)| t.shallow_clone()));
        let mut gradients = Th::run_backward(&[product], &leaves, false, false).into_iter();
        let input = match self.input {
            Some(_) => Some(wrap(gradients.next()?)),
            None => None,
        };
        let mut params = GradientsParams::new();
        for (id, _) in &self.leaves {
            params.register::<2>(*id, wrap(gradients.next()?));
        }
        Some((input, params))
    }
}

/// A projection in training, as [`crate::layers::LoraLinear::forward`] computes it, in the
/// weight's dtype: the base product, and with an adapter `dropout(x) A (alpha/r/keep) B` from
/// its f32 parameters cast for the products (the casts are in the graph, so the gradients reach
/// the f32 leaves), the second product added to the base one where it is accumulated.
fn train(projection: &Projection, x: &Th, tensors: &Option<AdapterTensors>) -> Th {
    // The products run on `[tokens, d_in]`, so the update is added in place into the base
    // product itself rather than into a view of it (see `add_update`).
    let mut size = x.size();
    let width = size.pop().unwrap_or(1);
    let x = x.reshape([-1, width]);
    let base = projection.base(&x);
    let out = match (&projection.adapter, tensors) {
        (Some(adapter), Some(tensors)) => {
            let (input, keep) = dropout(&x, adapter);
            with_update(base, &input, &tensors.a, &tensors.b, adapter.scale / keep)
        }
        _ => base,
    };
    size.push(out.size()[1]);
    out.reshape(size)
}

/// burn's `Dropout` on libtorch, draw for draw, as [`crate::layers::lora_dropout`] applies it:
/// a Bernoulli mask over the input's elements (its rows flattened: the same draws in the same
/// order as burn's mask of the unflattened input), and the product, with the fraction kept for
/// the caller to rescale. The mask is drawn directly in the input's dtype, which in bf16 halves
/// the bytes it writes and needs no cast: libtorch's Bernoulli kernels draw in f32 whatever the
/// output's dtype, so a bf16 mask holds the zeros and ones of the f32 draw burn's path casts
/// (`libtorch_autograd_layers_take_burns_gradients` would see any other mask).
fn dropout(x: &Th, adapter: &Adapter) -> (Th, f64) {
    if adapter.dropout == 0.0 {
        return (x.shallow_clone(), 1.0);
    }
    let keep = 1.0 - adapter.dropout;
    let mut mask = Th::empty(x.size(), (x.kind(), x.device()));
    let mask = mask.bernoulli_float_(keep);
    (x * mask, keep)
}
