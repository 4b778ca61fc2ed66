//! Scores for training, with optional gradient checkpointing per decoder layer: the forward pass
//! keeps only each layer's input, and the backward pass reruns one layer at a time, carrying
//! the gradient of its output down to its input (PyTorch's `checkpoint` around each decoder
//! layer, as transformers' `gradient_checkpointing_enable` does). The activations kept shrink
//! from every layer's intermediates to one `[batch, len, hidden]` tensor per layer, for one
//! more forward pass of the layers. The output head and log-softmax are checkpointed too, a
//! block of positions and vocabulary at a time ([`crate::head`]): their kept activations would
//! otherwise be several `[batch, completion, vocab]` f32 tensors, 2 GiB each for 16 rows of
//! 128 tokens at Gemma's 262,208-token vocabulary.
//!
//! On libtorch, with only LoRA adapters training, the layers are direct libtorch calls and
//! their backward is libtorch's autograd ([`crate::fused::autograd`]): with checkpointing both
//! runs of each layer, without it one run with libtorch's graph kept (the head is then
//! checkpointed as above all the same). The gradients are the same.
//!
//! On an autodiff device each layer runs under its own generator seed, drawn once per pass, in
//! both modes: a rerun layer draws the same LoRA-dropout masks as its first run, and a run with
//! checkpointing takes the same gradients as one without (outside autodiff nothing draws, and
//! the generator is left alone). The generators are per process, so another thread drawing
//! during a pass would take numbers a rerun layer must draw again.
//!
//! ```
//! use burn::module::Module;
//! use burn::tensor::Device;
//! use chex_model::checkpointing::score_for_training;
//! use chex_model::lora::{LoraConfig, apply_lora};
//! use chex_model::scoring::ScoringRow;
//! use chex_model::{Gemma3Config, Gemma3ForConditionalGeneration};
//!
//! let config = Gemma3Config::preset("tiny").unwrap();
//! let device = Device::flex().autodiff();
//! let model = Gemma3ForConditionalGeneration::seeded(&config, 0, &Device::flex());
//! let model = apply_lora(model, &LoraConfig::chexreason(), 0, &Device::flex());
//! let model = model.to_device(&device).train();
//! let row = ScoringRow { prompt: &[2, 30, 31], image_block: None, completion: &[40, 41, 1] };
//! let (scores, graph) = score_for_training(&model, &[row], None, 1.0, true, &device);
//! let loss = scores.logprobs.sum().neg();
//! let gradients = graph.gradients(loss, &model);
//! assert!(!gradients.is_empty());
//! ```

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};

use crate::head::{BLOCK_ELEMENTS, HeadBlocks, HeadScores, OutputHead, ScoreGradients};
use crate::scoring::{ScoringBatch, ScoringRow, TokenScores};
use crate::text::{KeyReads, StepInputs};
use crate::vlm::{Gemma3ForConditionalGeneration, ImageInputs};

/// The graph behind a [`score_for_training`] pass, which may stop at the decoder layers: take
/// gradients through [`gradients`](Self::gradients), never with `loss.backward()`, which would
/// miss every layer.
pub struct ScoreGraph {
    /// What the backward pass needs to rerun the layers (`None`: the graph is whole).
    checkpoints: Option<LayerCheckpoints>,
}

/// One pass's layer inputs, kept out of the graph, and what rerunning a layer needs.
struct LayerCheckpoints {
    /// The rows, for rerunning the head.
    batch: ScoringBatch,
    /// How the head covers the completion positions and the vocabulary.
    blocks: HeadBlocks,
    temperature: f32,
    /// The head's scores in the forward pass: the log-probabilities and entropies are the
    /// leaves the loss's graph starts from (`[batch, longest]` each), the rest what the head's
    /// backward pass needs.
    head_scores: HeadScores,
    /// Input of each decoder layer, detached.
    inputs: Vec<Tensor<3>>,
    /// Generator seed each layer ran under (none outside autodiff).
    seeds: Vec<u64>,
    /// Rotary angles and masks of the pass.
    step: StepInputs,
    /// The last layer's output, before the final norm, detached.
    top: Tensor<3>,
    /// The embeddings with their graph, when anything before the layers trains.
    embedded: Option<Tensor<3>>,
    /// The layers through libtorch's autograd, when they apply (see [`crate::fused::autograd`]).
    #[cfg(feature = "tch")]
    fused: Option<FusedLayers>,
    /// Without checkpointing on libtorch: the layers with the graph libtorch kept (`inputs` is
    /// then empty).
    #[cfg(feature = "tch")]
    tracked: Option<crate::fused::autograd::TrackedStack>,
}

#[cfg(feature = "tch")]
type FusedLayers = (
    crate::fused::autograd::AutogradLayers,
    crate::fused::autograd::PassInputs,
);

/// The libtorch layers for this pass, when the model and the switch allow them.
#[cfg(feature = "tch")]
fn fused_layers(text: &crate::text::Gemma3TextModel, step: &StepInputs) -> Option<FusedLayers> {
    if !fused_training() {
        return None;
    }
    let layers = crate::fused::autograd::AutogradLayers::new(text)?;
    let inputs = layers.inputs(step)?;
    Some((layers, inputs))
}

/// Whether LoRA training on libtorch runs its layers through libtorch's autograd: on unless the
/// environment sets `CHEX_FUSED_TRAINING=0` (for benchmarks that compare the two) or the current
/// thread is inside [`with_fused_training`]. Always false in a build without libtorch.
pub fn fused_training() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(feature = "tch")
        && FUSED_TRAINING_HERE
            .with(|here| here.get())
            .unwrap_or_else(|| {
                *ON.get_or_init(|| std::env::var("CHEX_FUSED_TRAINING").map_or(true, |v| v != "0"))
            })
}

thread_local! {
    static FUSED_TRAINING_HERE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Run `work` with [`fused_training`] forced on or off for the current thread (what a test that
/// compares the two paths in one process needs).
pub fn with_fused_training<R>(on: bool, work: impl FnOnce() -> R) -> R {
    let before = FUSED_TRAINING_HERE.with(|here| here.replace(Some(on)));
    let result = work();
    FUSED_TRAINING_HERE.with(|here| here.set(before));
    result
}

/// Score `rows` on the autodiff `device` for a loss to differentiate, keeping each decoder
/// layer's whole graph (`checkpointing` false) or only its input (true): the scores, as
/// [`crate::scoring::score_completions`] gives them, and the graph to take gradients through.
pub fn score_for_training(
    model: &Gemma3ForConditionalGeneration,
    rows: &[ScoringRow<'_>],
    images: Option<ImageInputs<'_>>,
    temperature: f32,
    checkpointing: bool,
    device: &Device,
) -> (TokenScores, ScoreGraph) {
    score_for_training_in_blocks(
        model,
        rows,
        images,
        temperature,
        checkpointing,
        BLOCK_ELEMENTS,
        device,
    )
}

/// [`score_for_training`] with at most `budget` logits per block of the output head (see
/// [`HeadBlocks::plan`]).
pub fn score_for_training_in_blocks(
    model: &Gemma3ForConditionalGeneration,
    rows: &[ScoringRow<'_>],
    images: Option<ImageInputs<'_>>,
    temperature: f32,
    checkpointing: bool,
    budget: usize,
    device: &Device,
) -> (TokenScores, ScoreGraph) {
    let batch = ScoringBatch::new(rows, device);
    let [_, len] = batch.ids.dims();
    let embedded = model.embed(batch.ids.clone(), &batch.layout, 0, images);
    let text = &model.model.language_model;
    let step = text.step_inputs(&batch.layout, 0, len, KeyReads::Own, device);
    let layers = text.layers.len();
    let seeds = layer_seeds(layers, embedded.is_autodiff(), device);
    let blocks = batch.blocks(model, budget);
    #[cfg(feature = "tch")]
    let fused = fused_layers(text, &step);
    #[cfg(feature = "tch")]
    let whole_graph = !checkpointing && fused.is_none();
    #[cfg(not(feature = "tch"))]
    let whole_graph = !checkpointing;
    if whole_graph {
        let mut x = embedded;
        for index in 0..layers {
            seed_layer(device, &seeds, index);
            x = text.forward_layer(index, x, &step);
        }
        let hidden = text.norm.forward(x);
        let scores = batch.scores(model, hidden, temperature, &blocks);
        return (scores, ScoreGraph { checkpoints: None });
    }
    let mut inputs = Vec::with_capacity(layers);
    let mut x = embedded.clone().detach();
    // Without checkpointing (and so on libtorch): the layers' graph kept by libtorch, the head
    // checkpointed as below.
    #[cfg(feature = "tch")]
    let mut tracked = None;
    #[cfg(feature = "tch")]
    if !checkpointing
        && let Some((layers_on_libtorch, pass)) = &fused
        && let Some(mut stack) = layers_on_libtorch.track(&x, embedded.is_tracked())
    {
        for index in 0..layers {
            seed_layer(device, &seeds, index);
            layers_on_libtorch.forward_tracked(index, &mut stack, pass);
        }
        x = stack.output();
        tracked = Some(stack);
    }
    // With checkpointing: each layer's input kept, the layer run without a graph.
    #[cfg(feature = "tch")]
    let checkpointed_layers = if tracked.is_some() { 0 } else { layers };
    #[cfg(not(feature = "tch"))]
    let checkpointed_layers = layers;
    for index in 0..checkpointed_layers {
        inputs.push(x.clone());
        seed_layer(device, &seeds, index);
        #[cfg(feature = "tch")]
        if let Some((fused, pass)) = &fused
            && let Some(output) = fused.forward(index, &x, pass)
        {
            x = output;
            continue;
        }
        x = text.forward_layer_untracked(index, x, &step);
    }
    // The head on untracked copies of the final norm and the head: only the scores are kept.
    let norm = text.norm.clone().no_grad();
    let head = OutputHead::new(model, temperature, false);
    let mut head_scores = batch.scores_over(&head, &blocks, |positions| {
        norm.forward(batch.predicting(&x, positions))
    });
    head_scores.logprobs = head_scores.logprobs.require_grad();
    head_scores.entropies = head_scores.entropies.require_grad();
    let scores = batch.masked(head_scores.logprobs.clone(), head_scores.entropies.clone());
    (
        scores,
        ScoreGraph {
            checkpoints: Some(LayerCheckpoints {
                batch,
                blocks,
                temperature,
                head_scores,
                inputs,
                seeds,
                step,
                top: x,
                embedded: embedded.is_tracked().then_some(embedded),
                #[cfg(feature = "tch")]
                fused,
                #[cfg(feature = "tch")]
                tracked,
            }),
        },
    )
}

impl ScoreGraph {
    /// Whether the decoder layers run through libtorch's autograd ([`crate::fused::autograd`])
    /// rather than burn's operations.
    pub fn layers_on_libtorch_autograd(&self) -> bool {
        #[cfg(feature = "tch")]
        {
            self.checkpoints
                .as_ref()
                .is_some_and(|c| c.fused.is_some() || c.tracked.is_some())
        }
        #[cfg(not(feature = "tch"))]
        false
    }

    /// Gradients of `loss` (computed from the pass's scores) for `model`'s trainable parameters.
    pub fn gradients(
        self,
        loss: Tensor<1>,
        model: &Gemma3ForConditionalGeneration,
    ) -> GradientsParams {
        let Some(c) = self.checkpoints else {
            return GradientsParams::from_grads(loss.backward(), model);
        };
        let device = c.top.device();
        let text = &model.model.language_model;
        let mut accumulator = GradientsAccumulator::new();
        let mut grads = loss.backward();
        let upstream_logprobs = c.head_scores.logprobs.grad_remove(&mut grads);
        let upstream_entropies = c.head_scores.entropies.grad_remove(&mut grads);
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
        // The head, rerun a block at a time: each range of positions gathers the gradient of
        // its normed hidden states over the vocabulary's blocks, then takes it through the
        // final norm to the last layer's output.
        let top = c.top.require_grad();
        let head = OutputHead::new(model, c.temperature, true);
        let head_trains = head.trains();
        let mut carried: Option<Tensor<3>> = None;
        let rows = c.head_scores.logprobs.dims()[0];
        for positions in &c.blocks.positions {
            let range = |t: &Tensor<2>| t.clone().slice([0..rows, positions.clone()]);
            let upstream = ScoreGradients {
                logprobs: upstream_logprobs.as_ref().map(range),
                entropies: upstream_entropies.as_ref().map(range),
            };
            let normed = text
                .norm
                .forward(c.batch.predicting(&top, positions.clone()));
            let leaf = normed.clone().detach().require_grad();
            let Some(gradient) = head.normed_gradient(
                &leaf,
                &c.batch.targets(positions.clone()),
                &c.head_scores.positions(positions.clone()),
                &upstream,
                &c.blocks.vocab,
                |grads| {
                    if head_trains {
                        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
                    }
                },
            ) else {
                continue;
            };
            let mut grads = (normed * gradient.autodiff()).sum().backward();
            if let Some(share) = top.grad_remove(&mut grads) {
                carried = Some(match carried {
                    Some(sum) => sum + share,
                    None => share,
                });
            }
            accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
        }
        #[cfg(feature = "tch")]
        if let Some(stack) = c.tracked
            && let Some(upstream) = carried.take()
        {
            // The stack's tensors and the head's gradient are all libtorch's, and libtorch's
            // autograd returns a gradient for every leaf: nothing can be missing here.
            let (gradient, params) = stack
                .vjp(&upstream)
                .expect("a libtorch layer stack takes the gradients of all its leaves");
            carried = gradient;
            accumulator.accumulate(model, params);
        }
        for (index, input) in c.inputs.into_iter().enumerate().rev() {
            // Nothing downstream depends on this layer's output: neither on the layers below.
            let Some(upstream) = carried.take() else {
                break;
            };
            seed_layer(&device, &c.seeds, index);
            #[cfg(feature = "tch")]
            if let Some((fused, pass)) = &c.fused
                && let Some((gradient, params)) = fused.vjp(index, &input, &upstream, pass)
            {
                carried = Some(gradient);
                accumulator.accumulate(model, params);
                continue;
            }
            let input = input.require_grad();
            let output = text.forward_layer(index, input.clone(), &c.step);
            // The vector-Jacobian product of the layer with the gradient of its output.
            let mut grads = (output * upstream.autodiff()).sum().backward();
            carried = input.grad_remove(&mut grads);
            accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
        }
        if let (Some(embedded), Some(upstream)) = (c.embedded, carried) {
            let grads = (embedded * upstream.autodiff()).sum().backward();
            accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
        }
        accumulator.grads()
    }
}

/// One seed per layer from `device`'s generator, so a pass is as reproducible as the generator;
/// none outside autodiff, where LoRA dropout never draws and a pass should leave the generator
/// alone.
fn layer_seeds(layers: usize, autodiff: bool, device: &Device) -> Vec<u64> {
    if layers == 0 || !autodiff {
        return Vec::new();
    }
    let draws = Tensor::<1, Int>::random([layers], Distribution::Uniform(0.0, 1e9), device);
    draws
        .into_data()
        .iter::<i64>()
        .map(|seed| seed as u64)
        .collect()
}

/// Seed `device` for layer `index`, when the pass drew seeds.
fn seed_layer(device: &Device, seeds: &[u64], index: usize) {
    if let Some(&seed) = seeds.get(index) {
        device.seed(seed);
    }
}
