//! Answering images and scoring the answers — generate, decode, parse, score — in one place,
//! used by GRPO's rollouts and validation, the study's evaluation and `chex generate`.

use chex_data::PreparedImage;
use chex_data::labels::CHEXPERT_LABELS;
use chex_metrics::{EvalInput, Evaluation, ZeroDivision, evaluate};
use chex_model::burn::module::Module;
use chex_model::burn::tensor::Device;
use chex_model::generation::{Completion, GenerationConfig, StopReason, generate};
use chex_model::sampling::SamplingConfig;
use chex_rewards::{Prepared, RewardContext};

use crate::error::Result;
use crate::inputs::pixel_batch;
use crate::training::Policy;

/// How answers are generated.
#[derive(Debug, Clone)]
pub struct AnswerSettings {
    /// Longest answer in tokens.
    pub max_new_tokens: usize,
    /// Images per `generate` call.
    pub batch: usize,
    /// Greedy (temperature 0) or sampled.
    pub sampling: SamplingConfig,
    /// Answers per image (GRPO's group size).
    pub samples_per_image: usize,
    /// Seed of the first batch's per-row generators; batch `c` uses `seed + c`.
    pub seed: u64,
}

impl AnswerSettings {
    /// One greedy answer per image.
    pub fn greedy(max_new_tokens: usize, batch: usize) -> Self {
        Self {
            max_new_tokens,
            batch,
            sampling: SamplingConfig::greedy(),
            samples_per_image: 1,
            seed: 0,
        }
    }
}

/// One generated answer, decoded and parsed.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Index of the image it answers.
    pub image: usize,
    /// The generated ids and their sampling log-probs.
    pub completion: Completion,
    /// The text, special tokens removed.
    pub text: String,
    /// The text parsed (answer block, labels) with the image's truth.
    pub prepared: Prepared,
}

impl Answer {
    /// Whether generation stopped at the length limit rather than at a stop token.
    pub fn truncated(&self) -> bool {
        self.completion.stop == StopReason::MaxNewTokens
    }
}

/// Answer `images` with `policy`: `samples_per_image` answers each, adjacent, in image order.
/// `truths[i]` holds image `i`'s true label indices in the context's vocabulary (empty when
/// unknown); the rewards and scores read them from [`Answer::prepared`].
pub fn answer_images(
    policy: &Policy,
    images: &[&PreparedImage],
    truths: &[Vec<usize>],
    settings: &AnswerSettings,
    context: &RewardContext,
    device: &Device,
) -> Result<Vec<Answer>> {
    let model = policy.model.valid();
    let batch = settings.batch.max(1);
    let mut answers = Vec::with_capacity(images.len() * settings.samples_per_image.max(1));
    for (c, chunk) in images.chunks(batch).enumerate() {
        let config = GenerationConfig {
            max_new_tokens: settings.max_new_tokens,
            samples_per_prompt: settings.samples_per_image.max(1),
            sampling: settings.sampling,
            stop_tokens: policy.stop_tokens(),
            seed: settings.seed.wrapping_add(c as u64),
            use_cache: true,
        };
        let prompts = vec![policy.prompt.clone(); chunk.len()];
        let completions = generate(
            &model,
            &prompts,
            Some(pixel_batch(chunk, device)),
            &config,
            device,
        )?;
        for completion in completions {
            let image = c * batch + completion.prompt;
            let text = policy.tokenizer.decode(&completion.tokens, true)?;
            let truth = truths.get(image).map(Vec::as_slice).unwrap_or(&[]);
            let prepared = context.prepare(&text, completion.tokens.len(), truth);
            answers.push(Answer {
                image,
                completion,
                text,
                prepared,
            });
        }
    }
    Ok(answers)
}

/// Score answers on the fourteen CheXpert labels (truth and predictions read from each
/// answer's parse; an unparseable answer predicts nothing): GRPO's validation figure.
pub fn chexpert_scores(answers: &[Answer]) -> Result<Evaluation> {
    let labels: Vec<String> = CHEXPERT_LABELS.iter().map(|s| s.to_string()).collect();
    let row = |indices: &[usize]| -> Vec<bool> {
        let mut r = vec![false; labels.len()];
        for &i in indices {
            if let Some(cell) = r.get_mut(i) {
                *cell = true;
            }
        }
        r
    };
    let truth: Vec<Vec<bool>> = answers.iter().map(|a| row(&a.prepared.truth)).collect();
    let predicted: Vec<Vec<bool>> = answers
        .iter()
        .map(|a| row(&a.prepared.extracted.labels))
        .collect();
    let parsed: Vec<bool> = answers
        .iter()
        .map(|a| a.prepared.parsed.answer.is_some())
        .collect();
    Ok(evaluate(
        EvalInput {
            labels: &labels,
            truth: &truth,
            predicted: &predicted,
            parsed: Some(&parsed),
        },
        ZeroDivision::Zero,
        None,
    )?)
}
