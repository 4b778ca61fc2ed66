//! The whole vision-language model: SigLIP tower, Gemma 3's multimodal projector and the
//! decoder, with image features spliced over the image placeholder tokens.
//!
//! The struct tree mirrors the checkpoint keys of transformers 5.x
//! (`model.vision_tower.…`, `model.multi_modal_projector.…`, `model.language_model.…`,
//! `lm_head.…`), so import needs no renaming beyond the older 4.x prefixes.

use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::cache::KvCache;
use crate::config::Gemma3Config;
use crate::error::ModelError;
use crate::layers::{GemmaRmsNorm, LoraLinear, product};
use crate::mask::BatchLayout;
use crate::precision::ModelDtype;
use crate::text::{Gemma3TextModel, KeyReads};
use crate::vision::SiglipVisionModel;

/// Average-pool the patch grid to `mm_tokens_per_image` tokens, RMS-norm, project to the
/// decoder width.
#[derive(Module, Debug)]
pub struct Gemma3MultiModalProjector {
    /// `[vision_hidden, text_hidden]`, applied as `x · W` (stored as in the checkpoint).
    pub mm_input_projection_weight: Param<Tensor<2>>,
    /// Gemma RMSNorm over the vision width.
    pub mm_soft_emb_norm: GemmaRmsNorm,
    /// Patches per side of the vision grid.
    pub patches_per_side: usize,
    /// Image tokens per side after pooling.
    pub tokens_per_side: usize,
}

impl Gemma3MultiModalProjector {
    fn new(config: &Gemma3Config, device: &Device) -> Self {
        let v = &config.vision_config;
        let weight = burn::nn::Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        }
        .init([v.hidden_size, config.text_config.hidden_size], device);
        Self {
            mm_input_projection_weight: weight,
            mm_soft_emb_norm: GemmaRmsNorm::new(v.hidden_size, v.layer_norm_eps, device),
            patches_per_side: config.patches_per_side(),
            tokens_per_side: (config.mm_tokens_per_image as f64).sqrt().round() as usize,
        }
    }

    /// `[images, patches, vision_hidden]` → `[images, mm_tokens, text_hidden]`.
    pub fn forward(&self, vision: Tensor<3>) -> Tensor<3> {
        let [n, _, d] = vision.dims();
        let (p, t) = (self.patches_per_side, self.tokens_per_side);
        let k = p / t;
        // Patch index is row * p + col; splitting rows and cols into (token, offset) pairs and
        // averaging the offsets is exactly a k×k average pool with stride k.
        let grid = vision.reshape([n, t, k, t, k, d]);
        let pooled = grid.mean_dim(4).mean_dim(2).reshape([n, t * t, d]);
        let normed = self.mm_soft_emb_norm.forward(pooled);
        product(normed, self.mm_input_projection_weight.val(), None)
    }
}

/// `model`: the three parts without the output head.
#[derive(Module, Debug)]
pub struct Gemma3Model {
    /// SigLIP encoder.
    pub vision_tower: SiglipVisionModel,
    /// Pool, norm, project.
    pub multi_modal_projector: Gemma3MultiModalProjector,
    /// Gemma 3 decoder.
    pub language_model: Gemma3TextModel,
}

/// `Gemma3ForConditionalGeneration`: the model and, when untied, its output head.
#[derive(Module, Debug)]
pub struct Gemma3ForConditionalGeneration {
    /// Vision tower, projector and decoder.
    pub model: Gemma3Model,
    /// Output head when `tie_word_embeddings` is false.
    pub lm_head: Option<LoraLinear>,
    /// The configuration the weights were built for.
    #[module(skip)]
    pub config: Arc<Gemma3Config>,
}

/// Which decoded image each row's image block shows.
#[derive(Debug, Clone, Copy)]
pub struct ImageInputs<'a> {
    /// `[images, mm_tokens, text_hidden]` from [`Gemma3ForConditionalGeneration::encode_images`].
    pub features: &'a Tensor<3>,
    /// For each row, the index of its image in `features` (rows without an image block are
    /// ignored).
    pub image_of_row: &'a [usize],
}

impl Gemma3ForConditionalGeneration {
    /// A randomly initialised model whose weights depend on `seed` alone, not on the backend:
    /// drawn on the CPU with flex and moved to `device`. burn's generators draw differently per
    /// backend, so seeding `device` itself would give every backend another model, and the same
    /// study another result. Builds without flex draw on `device`. The generator is per
    /// process: two threads seeding and drawing at once take each other's numbers.
    pub fn seeded(config: &Gemma3Config, seed: u64, device: &Device) -> Self {
        Self::seeded_in(config, seed, ModelDtype::F32, device)
    }

    /// [`seeded`](Self::seeded) in `dtype` (as [`with_dtype`](Self::with_dtype) casts), cast
    /// where the weights are drawn, one parameter at a time: an accelerator then receives only
    /// the bf16 weights, and never holds (nor caches) an f32 copy of the model. The values are
    /// those of `seeded(..).with_dtype(dtype)`.
    pub fn seeded_in(config: &Gemma3Config, seed: u64, dtype: ModelDtype, device: &Device) -> Self {
        #[cfg(feature = "flex")]
        {
            let host = Device::flex();
            if &host != device {
                host.seed(seed);
                return Self::new(config, &host)
                    .with_dtype(dtype)
                    .materialized()
                    .to_device(device);
            }
        }
        Self::drawn_on(config, seed, dtype, device)
    }

    /// A randomly initialised model drawn by `device`'s own generator, in `dtype`, one
    /// parameter at a time. Seconds where [`seeded_in`](Self::seeded_in)'s single CPU generator
    /// takes about a minute at 4B, for work whose cost does not depend on the values (the
    /// throughput harness); the weights differ between backends.
    pub fn drawn_on(config: &Gemma3Config, seed: u64, dtype: ModelDtype, device: &Device) -> Self {
        device.seed(seed);
        Self::new(config, device).with_dtype(dtype).materialized()
    }

    /// burn initialises parameters lazily, at first use and on the device they are then on:
    /// draw every one now, in module order, so that moving the model moves these values.
    fn materialized(self) -> Self {
        struct DrawEveryParameter;
        impl ModuleVisitor for DrawEveryParameter {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let _ = param.val();
            }
        }
        self.visit(&mut DrawEveryParameter);
        self
    }

    /// A randomly initialised model (rotary tables cover the config's maximum positions, capped
    /// at 8,192 to keep tables small; longer contexts need [`Self::with_max_positions`]).
    pub fn new(config: &Gemma3Config, device: &Device) -> Self {
        let max_positions = config.text_config.max_position_embeddings.min(8192);
        Self {
            model: Gemma3Model {
                vision_tower: SiglipVisionModel::new(&config.vision_config, device),
                multi_modal_projector: Gemma3MultiModalProjector::new(config, device),
                language_model: Gemma3TextModel::new(config, max_positions, device),
            },
            lm_head: (!config.text_config.tie_word_embeddings).then(|| {
                LoraLinear::new(
                    config.text_config.hidden_size,
                    config.text_config.vocab_size,
                    false,
                    0.02,
                    device,
                )
            }),
            config: Arc::new(config.clone()),
        }
    }

    /// Rebuild the rotary tables for contexts up to `max_positions`.
    pub fn with_max_positions(mut self, max_positions: usize) -> Self {
        let spec = crate::text::TextSpec::new(&self.config, max_positions);
        self.model.language_model.spec = Arc::new(spec);
        self
    }

    /// Longest context the rotary tables cover.
    pub fn max_positions(&self) -> usize {
        self.model.language_model.spec.rope_global.max_positions()
    }

    /// Encode images `[n, 3, side, side]` (normalised to [-1, 1]) into decoder-width tokens.
    pub fn encode_images(&self, pixels: Tensor<4>) -> Result<Tensor<3>, ModelError> {
        let v = &self.config.vision_config;
        let [_, c, h, w] = pixels.dims();
        if c != v.num_channels || h != v.image_size || w != v.image_size {
            return Err(ModelError::Image {
                what: "batch".into(),
                message: format!(
                    "shape [{c}, {h}, {w}] per image, expected [{}, {}, {}] (vision_config)",
                    v.num_channels, v.image_size, v.image_size
                ),
            });
        }
        let vision = self.model.vision_tower.forward(pixels);
        Ok(self.model.multi_modal_projector.forward(vision))
    }

    /// Token embeddings `[batch, len, hidden]` with image features written over each row's
    /// image block (slots counted from `start`).
    pub fn embed(
        &self,
        tokens: Tensor<2, Int>,
        layout: &BatchLayout,
        start: usize,
        images: Option<ImageInputs<'_>>,
    ) -> Tensor<3> {
        let embeddings = self.model.language_model.embed(tokens);
        let Some(images) = images else {
            return embeddings;
        };
        let [batch, len, hidden] = embeddings.dims();
        let any_block = layout.rows.iter().any(|r| {
            r.image_blocks
                .iter()
                .any(|b| b.start >= start && b.end <= start + len)
        });
        if !any_block {
            return embeddings;
        }
        let rows = (0..batch)
            .map(|b| {
                let mut row = embeddings.clone().slice([b..b + 1, 0..len, 0..hidden]);
                for block in &layout.rows[b].image_blocks {
                    if block.start < start || block.end > start + len {
                        continue;
                    }
                    let image = images.image_of_row[b];
                    let tokens = block.len();
                    let features =
                        images
                            .features
                            .clone()
                            .slice([image..image + 1, 0..tokens, 0..hidden]);
                    let local = (block.start - start)..(block.end - start);
                    row = row.slice_assign([0..1, local, 0..hidden], features);
                }
                row
            })
            .collect();
        Tensor::cat(rows, 0)
    }

    /// Hidden states after the final norm for slots `start..start+len`.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<2, Int>,
        layout: &BatchLayout,
        images: Option<ImageInputs<'_>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let device = tokens.device();
        let [_, len] = tokens.dims();
        let start = cache.as_ref().map(|c| c.filled()).unwrap_or(0);
        let x = self.embed(tokens, layout, start, images);
        let text = &self.model.language_model;
        let reads = match cache.as_ref() {
            Some(cache) if len == 1 && cache.decodes_static() => {
                KeyReads::WholeCache(cache.capacity())
            }
            Some(_) => KeyReads::Cached,
            None => KeyReads::Own,
        };
        let step = text.step_inputs(layout, start, len, reads, &device);
        text.forward_embeddings(x, &step, cache)
    }

    /// The output projection `[hidden, vocab]`: the untied head, or the embedding transposed.
    pub fn output_head(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self
                .model
                .language_model
                .embed_tokens
                .weight
                .val()
                .transpose(),
        }
    }

    /// Vocabulary logits of hidden states, with the final soft-cap when configured.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.logits_with_head(hidden, &self.output_head())
    }

    /// [`Self::logits`] with an output head prepared once (see [`Self::output_head`]), which
    /// saves transposing the tied embedding at every generation step.
    pub fn logits_with_head(&self, hidden: Tensor<3>, head: &Tensor<2>) -> Tensor<3> {
        self.logits_with_parts(hidden, head, self.output_bias())
    }

    /// The untied head's bias, when it has one.
    pub fn output_bias(&self) -> Option<Tensor<1>> {
        self.lm_head
            .as_ref()
            .and_then(|h| h.bias.as_ref())
            .map(|b| b.val())
    }

    /// [`Self::logits`] with the head and its bias given (detached ones record nothing for a
    /// backward pass).
    pub fn logits_with_parts(
        &self,
        hidden: Tensor<3>,
        head: &Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Tensor<3> {
        let logits = product(hidden, head.clone(), bias);
        match self.config.text_config.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Logits of every slot in one uncached pass.
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        layout: &BatchLayout,
        images: Option<ImageInputs<'_>>,
    ) -> Tensor<3> {
        self.logits(self.forward_hidden(tokens, layout, images, None))
    }

    /// A cache sized for this model.
    pub fn new_cache(&self, batch: usize, capacity: usize, device: &Device) -> KvCache {
        let t = &self.config.text_config;
        KvCache::new(
            t.num_hidden_layers,
            batch,
            t.num_key_value_heads,
            capacity,
            t.head_dim,
            self.dtype().float_dtype(),
            device,
        )
    }
}

/// Token ids `[batch, len]` as an integer tensor.
pub fn token_tensor(ids: &[u32], batch: usize, len: usize, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(data, [batch, len]), device)
}
