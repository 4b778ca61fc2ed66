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
//! It computes what [`crate::text`]'s layers compute, in the same precisions (products and the
//! MLP's activation in the weights' dtype, adapters included; norms, rotary angles and softmax
//! in f32); tests hold the two paths to each other on libtorch's CPU backend in f32, and each to
//! the f32 model in bf16, with and without LoRA. It
//! applies only to one new token per row, on libtorch tensors outside autodiff: training and
//! prefill keep burn's operations.
//!
//! **Static shapes** ([`KvCache::set_static_decode`], on by default where CUDA graphs run): the
//! step reads every slot of the cache under a mask over the whole capacity and writes its slot
//! through an index held on the device, so every step issues the same operations on the same
//! buffers. On a GPU with the `cuda-graphs` feature the step is then captured once per
//! generation call and replayed (`fused::graph`); elsewhere it runs eagerly, which is how the
//! CPU tests check what the graph computes.

use burn::tensor::{Bool, Tensor};
use tch::{Kind, Tensor as Th};

use super::weights::{
    DecoderWeights, LayerWeights, Norm, Projection, add_update, handle, narrowed, widened,
    with_update, wrap,
};
use crate::cache::KvCache;
use crate::config::LayerKind;
use crate::text::{Gemma3TextModel, StepInputs};

/// The decoder's weights as libtorch handles sharing storage with the model's parameters, and
/// the gains of its norms, prepared once per generation call.
pub struct FusedDecoder {
    weights: DecoderWeights,
    final_norm: Norm,
    /// The static-shape step captured as a CUDA graph, once it has been.
    #[cfg(feature = "cuda-graphs")]
    graph: GraphState,
}

/// Whether the static-shape step has a CUDA graph.
#[cfg(feature = "cuda-graphs")]
enum GraphState {
    /// Not captured yet: the next static-shape step on a GPU captures it.
    Pending,
    Captured(Box<CapturedStep>),
    /// Not on a GPU, or a capture or replay failed (reported once): steps run eagerly.
    Unavailable,
}

/// A captured step: the buffers its inputs are copied into, the cache buffers it was captured
/// over, and the buffer its output lands in. Fields drop in order, the graph last.
#[cfg(feature = "cuda-graphs")]
struct CapturedStep {
    out: Th,
    inputs: StaticInputs,
    cache_buffers: Vec<(usize, usize)>,
    graph: super::graph::CudaGraph,
}

impl std::fmt::Debug for FusedDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedDecoder")
            .field("layers", &self.weights.layers.len())
            .field("compute", &self.weights.compute)
            .finish()
    }
}

/// A step's inputs in the shapes the static-shape step reads (see
/// [`crate::text::KeyReads::WholeCache`]): the same every step of a generation call, so a CUDA
/// graph can be replayed on them.
struct StaticInputs {
    /// `[rows, hidden]`, f32.
    x: Th,
    /// Per attention kind (global, local): `cos` and `sin` `[rows, 1, head_dim]`.
    rope: [(Th, Th); 2],
    /// Per attention kind: `[rows, kv_heads, groups, capacity]`, true where a key is hidden.
    masks: [Th; 2],
    /// The slot this step writes, `[1]` int64.
    slot: Th,
}

#[cfg(feature = "cuda-graphs")]
impl StaticInputs {
    fn copy_from(&mut self, other: &Self) {
        self.x.copy_(&other.x);
        for (mine, theirs) in self.rope.iter_mut().zip(&other.rope) {
            mine.0.copy_(&theirs.0);
            mine.1.copy_(&theirs.1);
        }
        for (mine, theirs) in self.masks.iter_mut().zip(&other.masks) {
            mine.copy_(theirs);
        }
        self.slot.copy_(&other.slot);
    }

    /// Buffers of their own holding the same values.
    fn copied(&self) -> Self {
        Self {
            x: self.x.copy(),
            rope: self.rope.each_ref().map(|(c, s)| (c.copy(), s.copy())),
            masks: self.masks.each_ref().map(|m| m.copy()),
            slot: self.slot.copy(),
        }
    }

    fn same_shapes(&self, other: &Self) -> bool {
        self.x.size() == other.x.size() && self.masks[0].size() == other.masks[0].size()
    }
}

/// Where a step's keys and values go in the cache and which of them it reads.
#[derive(Clone, Copy)]
enum CacheAccess<'a> {
    /// Write slot `slot`, read the filled slots from the kind's `read_from`.
    Growing { slot: i64 },
    /// Write the slot `slot` holds, read the whole cache (the mask hides the rest).
    Whole { slot: &'a Th },
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
            #[cfg(feature = "cuda-graphs")]
            graph: GraphState::Pending,
        })
    }

    /// Whether this decoder's steps replay a captured CUDA graph.
    pub fn replays_graph(&self) -> bool {
        #[cfg(feature = "cuda-graphs")]
        {
            matches!(self.graph, GraphState::Captured(_))
        }
        #[cfg(not(feature = "cuda-graphs"))]
        false
    }

    /// A step's rotary `cos` and `sin` as `[rows, 1, head_dim]` libtorch handles.
    fn rope_handles(&self, rope: &(Tensor<4>, Tensor<4>)) -> Option<(Th, Th)> {
        let shape = [
            rope.0.dims()[0] as i64,
            1,
            self.weights.spec.head_dim as i64,
        ];
        Some((
            handle(rope.0.clone())?.reshape(shape),
            handle(rope.1.clone())?.reshape(shape),
        ))
    }

    fn kind_inputs(
        &self,
        rope: &(Tensor<4>, Tensor<4>),
        mask: &Tensor<4, Bool>,
        read_from: usize,
    ) -> Option<KindInputs> {
        let rows = rope.0.dims()[0] as i64;
        let (cos, sin) = self.rope_handles(rope)?;
        Some(KindInputs {
            cos,
            signed_sin: self.weights.signed(sin),
            mask: handle(mask.clone())?,
            read_from: read_from as i64,
            rows,
        })
    }

    /// Run every layer and the final norm on one new token per row, `x` `[rows, 1, hidden]` in
    /// f32, writing keys and values into `cache` at `step`'s slot. `None` when `x`, the step's
    /// tables or the cache are not libtorch tensors outside autodiff (the first two are checked
    /// before anything is written; a cache found wrong part-way keeps the slots written so far,
    /// which burn's path, run instead, writes again).
    ///
    /// When `step` reads the whole cache ([`crate::text::KeyReads::WholeCache`]), the step takes
    /// static shapes instead (and on a GPU with the `cuda-graphs` feature, replays a captured
    /// graph).
    pub fn step(
        &mut self,
        x: &Tensor<3>,
        step: &StepInputs,
        cache: &mut KvCache,
    ) -> Option<Tensor<3>> {
        let [rows, len, hidden] = x.dims();
        if len != 1 || cache.layers.len() != self.weights.layers.len() {
            return None;
        }
        if step.whole_cache {
            return self.static_step(x, step, cache);
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
            let slot = CacheAccess::Growing {
                slot: step.start as i64,
            };
            x = self.layer(layer, &x, inputs, slot, &keys, &values);
            layer_cache.restore(wrap(keys), wrap(values));
        }
        cache.advance(1);
        let out = self.final_norm.apply(&x);
        Some(wrap(out.reshape([rows as i64, 1, hidden as i64])))
    }

    /// [`Self::step`] in static shapes: the inputs gathered into [`StaticInputs`], every cache
    /// buffer taken out (and put back whatever happens), then the layers run eagerly or as a
    /// replayed graph.
    fn static_step(
        &mut self,
        x: &Tensor<3>,
        step: &StepInputs,
        cache: &mut KvCache,
    ) -> Option<Tensor<3>> {
        let [rows, _, hidden] = x.dims();
        let x_handle = handle(x.clone())?;
        let device = x_handle.device();
        let inputs = StaticInputs {
            x: x_handle.reshape([rows as i64, hidden as i64]),
            rope: [
                self.rope_handles(&step.rope_global)?,
                self.rope_handles(&step.rope_local)?,
            ],
            masks: [
                handle(step.mask_global.clone())?,
                handle(step.mask_local.clone())?,
            ],
            slot: Th::full([1], step.start as i64, (Kind::Int64, device)),
        };
        let taken: Vec<_> = cache.layers.iter_mut().map(|l| l.take()).collect();
        let buffers: Option<Vec<(Th, Th)>> = taken
            .iter()
            .map(|(k, v)| Some((handle(k.clone())?, handle(v.clone())?)))
            .collect();
        let out = buffers.map(|buffers| self.layers_on(&inputs, &buffers));
        for (layer, (keys, values)) in cache.layers.iter_mut().zip(taken) {
            layer.restore(keys, values);
        }
        let out = out?;
        cache.advance(1);
        Some(wrap(out.reshape([rows as i64, 1, hidden as i64])))
    }

    /// The static-shape layers and final norm on `inputs`: replayed from a graph where one is
    /// (or can now be) captured, else run eagerly.
    fn layers_on(&mut self, inputs: &StaticInputs, buffers: &[(Th, Th)]) -> Th {
        #[cfg(feature = "cuda-graphs")]
        if let Some(out) = self.through_graph(inputs, buffers) {
            return out;
        }
        self.static_layers(inputs, buffers)
    }

    /// The static-shape step itself: only libtorch calls on `inputs` and `buffers`, with no
    /// host synchronisation, so that it can be captured.
    fn static_layers(&self, inputs: &StaticInputs, buffers: &[(Th, Th)]) -> Th {
        let kinds = [0, 1].map(|kind| {
            let (cos, sin) = &inputs.rope[kind];
            KindInputs {
                cos: cos.shallow_clone(),
                signed_sin: self.weights.signed(sin.shallow_clone()),
                mask: inputs.masks[kind].shallow_clone(),
                read_from: 0,
                rows: inputs.x.size()[0],
            }
        });
        let access = CacheAccess::Whole { slot: &inputs.slot };
        let mut x = inputs.x.shallow_clone();
        for (layer, (keys, values)) in self.weights.layers.iter().zip(buffers) {
            let kind = match layer.kind {
                LayerKind::FullAttention => &kinds[0],
                LayerKind::SlidingAttention => &kinds[1],
            };
            x = self.layer(layer, &x, kind, access, keys, values);
        }
        self.final_norm.apply(&x)
    }

    /// One decoder layer on the residual stream `x` `[rows, hidden]`.
    fn layer(
        &self,
        layer: &LayerWeights,
        x: &Th,
        inputs: &KindInputs,
        access: CacheAccess,
        keys: &Th,
        values: &Th,
    ) -> Th {
        DecoderWeights::residual(
            layer,
            x,
            |normed| self.attention(layer, normed, inputs, access, keys, values),
            |normed| self.weights.mlp(layer, normed, |p, _, x| infer(p, x)),
        )
    }

    /// The step through a CUDA graph: replayed when one was captured over these buffers and
    /// shapes, else captured now (this step's result comes from the warm-up run that precedes
    /// the capture). `None` where graphs do not apply: off the GPU, or after a failure, which
    /// is reported once and leaves the eager step in charge.
    #[cfg(feature = "cuda-graphs")]
    fn through_graph(&mut self, inputs: &StaticInputs, buffers: &[(Th, Th)]) -> Option<Th> {
        let tch::Device::Cuda(device) = inputs.x.device() else {
            self.graph = GraphState::Unavailable;
            return None;
        };
        let cache_buffers: Vec<(usize, usize)> = buffers
            .iter()
            .map(|(k, v)| (k.data_ptr() as usize, v.data_ptr() as usize))
            .collect();
        let failed = |what: String| {
            eprintln!("chex: CUDA graph of the decode step unavailable ({what}); decoding eagerly");
            GraphState::Unavailable
        };
        match &mut self.graph {
            GraphState::Unavailable => return None,
            GraphState::Captured(captured)
                if captured.cache_buffers == cache_buffers
                    && captured.inputs.same_shapes(inputs) =>
            {
                captured.inputs.copy_from(inputs);
                return match captured.graph.replay() {
                    Ok(()) => {
                        super::count_graph_replay();
                        Some(captured.out.copy())
                    }
                    Err(e) => {
                        self.graph = failed(e);
                        None
                    }
                };
            }
            _ => {}
        }
        let mut graph = match super::graph::CudaGraph::new() {
            Ok(graph) => graph,
            Err(e) => {
                self.graph = failed(e);
                return None;
            }
        };
        let statics = inputs.copied();
        match graph.capture(device, || self.static_layers(&statics, buffers)) {
            Ok((eager, out)) => {
                self.graph = GraphState::Captured(Box::new(CapturedStep {
                    out,
                    inputs: statics,
                    cache_buffers,
                    graph,
                }));
                Some(eager)
            }
            Err(e) => {
                self.graph = failed(e);
                None
            }
        }
    }

    fn attention(
        &self,
        layer: &LayerWeights,
        normed: &Th,
        inputs: &KindInputs,
        access: CacheAccess,
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
        let (keys, values) = match access {
            CacheAccess::Growing { slot } => {
                keys.narrow(2, slot, 1).copy_(&k);
                values.narrow(2, slot, 1).copy_(&v);
                let read = slot + 1 - inputs.read_from;
                (
                    keys.narrow(2, inputs.read_from, read),
                    values.narrow(2, inputs.read_from, read),
                )
            }
            CacheAccess::Whole { slot } => {
                let (mut keys, mut values) = (keys.shallow_clone(), values.shallow_clone());
                let _ = keys.index_copy_(2, slot, &k);
                let _ = values.index_copy_(2, slot, &v);
                (keys, values)
            }
        };
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
/// in it; with an adapter, plus `x A B alpha/r` in that dtype, the second product added where it
/// is accumulated (as [`crate::layers::LoraLinear::forward`] computes it, with the scale folded
/// into `B` once).
fn infer(projection: &Projection, x: &Th) -> Th {
    let base = projection.base(x);
    let Some(adapter) = &projection.adapter else {
        return base;
    };
    match &adapter.inference {
        Some((a, b_scaled)) => add_update(base, &x.mm(a), b_scaled),
        None => with_update(base, x, &adapter.a, &adapter.b, adapter.scale),
    }
}
