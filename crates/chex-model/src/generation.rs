//! Batched generation for GRPO rollouts: prompts left-padded into one batch, each prompt's image
//! encoded and prefilled once and its cache repeated for every sampled completion, then one new
//! position per step through the key/value cache; the next token is chosen on the device, so
//! only the chosen ids and their log-probs come to the host each step.

use burn::tensor::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::mask::BatchLayout;
use crate::prompt::{EncodedPrompt, left_pad};
use crate::sampling::{SamplingConfig, row_rng, sample_rows};
use crate::vlm::{Gemma3ForConditionalGeneration, ImageInputs, token_tensor};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// Most tokens generated per completion.
    pub max_new_tokens: usize,
    /// Completions per prompt (GRPO's group size).
    pub samples_per_prompt: usize,
    /// How tokens are chosen.
    pub sampling: SamplingConfig,
    /// Tokens that end a completion (kept as its last token).
    pub stop_tokens: Vec<u32>,
    /// Seed of the per-row generators.
    pub seed: u64,
    /// Feed only new positions through a key/value cache (false recomputes everything each
    /// step; slower, kept as the reference the cache is tested against).
    pub use_cache: bool,
}

impl GenerationConfig {
    /// Greedy decoding of `max_new_tokens`, one completion per prompt.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            samples_per_prompt: 1,
            sampling: SamplingConfig::greedy(),
            stop_tokens: Vec::new(),
            seed: 0,
            use_cache: true,
        }
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop token was produced.
    StopToken,
    /// `max_new_tokens` were produced without one (TRL's "clipped" completion).
    MaxNewTokens,
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Index of the prompt it answers.
    pub prompt: usize,
    /// Generated ids, including the stop token when there was one.
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the temperature-scaled policy.
    pub logprobs: Vec<f32>,
    /// Why it ended.
    pub stop: StopReason,
}

/// Generate `samples_per_prompt` completions for each prompt. `pixels` holds one image per
/// prompt (`[prompts, 3, side, side]`) when the prompts have image blocks.
pub fn generate(
    model: &Gemma3ForConditionalGeneration,
    prompts: &[EncodedPrompt],
    pixels: Option<Tensor<4>>,
    config: &GenerationConfig,
    device: &Device,
) -> Result<Vec<Completion>, ModelError> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let group = config.samples_per_prompt.max(1);
    let features = match pixels {
        Some(p) => {
            let n = p.dims()[0];
            if n != prompts.len() {
                return Err(ModelError::Generation(format!(
                    "{n} images for {} prompts",
                    prompts.len()
                )));
            }
            Some(model.encode_images(p)?)
        }
        None => None,
    };
    if features.is_none() && prompts.iter().any(|p| p.image_block.is_some()) {
        return Err(ModelError::Generation(
            "prompts have image tokens but no images were given".into(),
        ));
    }
    let rows: Vec<&[u32]> = prompts.iter().map(|p| p.ids.as_slice()).collect();
    let blocks: Vec<_> = prompts.iter().map(|p| p.image_block.clone()).collect();
    let (ids, width, prompt_layout) = left_pad(&rows, &blocks, 0);
    let capacity = width + config.max_new_tokens;
    if capacity > model.max_positions() {
        return Err(ModelError::Generation(format!(
            "prompt width {width} + {} new tokens exceeds the {} positions the model covers",
            config.max_new_tokens,
            model.max_positions()
        )));
    }
    let prompt_images: Vec<usize> = (0..prompts.len()).collect();
    let images = features.as_ref().map(|f| ImageInputs {
        features: f,
        image_of_row: &prompt_images,
    });
    // Every sampled row copies its prompt's row.
    let layout = BatchLayout {
        rows: prompt_layout
            .rows
            .iter()
            .flat_map(|r| std::iter::repeat_n(r.clone(), group))
            .collect(),
    };
    let batch = prompts.len() * group;
    let mut rngs: Vec<_> = (0..batch).map(|r| row_rng(config.seed, r)).collect();
    let mut out: Vec<Completion> = (0..batch)
        .map(|r| Completion {
            prompt: r / group,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            stop: StopReason::MaxNewTokens,
        })
        .collect();
    let mut finished = vec![false; batch];
    let vocab = model.config.text_config.vocab_size;

    // The tied head is the embedding's transposed view: every backend multiplies by it in place
    // (flex with strides, libtorch through the BLAS transpose flag), so it is never copied.
    // (A copy through host memory here made each call at Gemma 3's 262k vocabulary 1.2 s slower
    // on flex and 5.5 s on libtorch's CPU: `generate_call_gemma3_vocab` in benches/generation.rs.)
    let head = model.output_head();
    let mut cache = config
        .use_cache
        .then(|| model.new_cache(prompts.len(), capacity, device));
    let tokens = token_tensor(&ids, prompts.len(), width, device);
    let hidden = model.forward_hidden(tokens, &prompt_layout, images, cache.as_mut());
    let [p, _, d] = hidden.dims();
    let last = hidden.slice([0..p, width - 1..width, 0..d]);
    let mut logits = repeat_rows(
        model.logits_with_head(last, &head).reshape([p, vocab]),
        group,
    );
    if let Some(cache) = cache.as_mut() {
        cache.repeat_rows(group);
    }
    let all_images: Vec<usize> = (0..batch).map(|r| r / group).collect();
    let mut history: Vec<u32> = ids
        .chunks(width)
        .flat_map(|row| std::iter::repeat_n(row, group))
        .flatten()
        .copied()
        .collect();
    let mut length = width;

    for _ in 0..config.max_new_tokens {
        // Every row draws each step, stopped or not, so a row's draws never depend on the
        // others'; the choice itself happens on the device.
        let uniforms: Vec<f64> = if config.sampling.is_greedy() {
            Vec::new()
        } else {
            rngs.iter_mut().map(|rng| rng.random::<f64>()).collect()
        };
        let picks = sample_rows(logits, &config.sampling, &uniforms)?;
        let mut next = Vec::with_capacity(batch);
        for (r, (token, logprob)) in picks.into_iter().enumerate() {
            if finished[r] {
                next.push(0);
                continue;
            }
            out[r].tokens.push(token);
            out[r].logprobs.push(logprob);
            if config.stop_tokens.contains(&token) {
                finished[r] = true;
                out[r].stop = StopReason::StopToken;
            }
            next.push(token);
        }
        if finished.iter().all(|f| *f)
            || out.iter().all(|c| c.tokens.len() == config.max_new_tokens)
        {
            break;
        }
        let images = features.as_ref().map(|f| ImageInputs {
            features: f,
            image_of_row: &all_images,
        });
        logits = match cache.as_mut() {
            Some(cache) => {
                let step = token_tensor(&next, batch, 1, device);
                let hidden = model.forward_hidden(step, &layout, None, Some(cache));
                model
                    .logits_with_head(hidden, &head)
                    .reshape([batch, vocab])
            }
            None => {
                history = history
                    .chunks(length)
                    .zip(&next)
                    .flat_map(|(row, t)| row.iter().copied().chain(std::iter::once(*t)))
                    .collect();
                length += 1;
                let all = token_tensor(&history, batch, length, device);
                let hidden = model.forward_hidden(all, &layout, images, None);
                let last = hidden.slice([0..batch, length - 1..length, 0..d]);
                model.logits_with_head(last, &head).reshape([batch, vocab])
            }
        };
    }
    Ok(out)
}

fn repeat_rows(t: Tensor<2>, times: usize) -> Tensor<2> {
    if times == 1 {
        return t;
    }
    let [b, v] = t.dims();
    t.unsqueeze_dim::<3>(1)
        .expand([b, times, v])
        .reshape([b * times, v])
}
