//! Training examples (an image and its findings), the policy being trained (model, tokenizer,
//! prompt), and evaluation by generation: greedy answers parsed into labels and scored.

use std::path::PathBuf;
use std::sync::Arc;

use chex_data::labels::CHEXPERT_LABELS;
use chex_data::{Dataset, ImageCache, PreparedImage, UncertaintyPolicy};
use chex_metrics::{EvalInput, Evaluation, ZeroDivision, evaluate};
use chex_model::burn::module::Module;
use chex_model::burn::tensor::Device;
use chex_model::generation::{Completion, GenerationConfig, generate};
use chex_model::prompt::{EncodedPrompt, encode_prompt};
use chex_model::{ChexTokenizer, Gemma3ForConditionalGeneration};
use chex_rewards::{LabelVocabulary, RewardContext, extract_labels, parse_output};

use super::TrainError;
use crate::inputs::pixel_batch;
use crate::prompts::PromptVariant;

/// One image and its positive findings, by CheXpert label name.
#[derive(Debug, Clone)]
pub struct Example {
    /// Where the image came from.
    pub path: PathBuf,
    /// The prepared pixels.
    pub image: Arc<PreparedImage>,
    /// Positive findings (`No Finding` when none).
    pub labels: Vec<String>,
    /// A teacher-written reasoning trace, when the data has one.
    pub reasoning: Option<String>,
}

impl Example {
    /// Indices of the labels in the CheXpert vocabulary the rewards use.
    pub fn truth(&self, vocabulary: &LabelVocabulary) -> Vec<usize> {
        let mut t: Vec<usize> = self
            .labels
            .iter()
            .filter_map(|l| vocabulary.lookup(l))
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }
}

/// Examples for `indices` of `dataset` (uncertain findings count as negative, as in the study).
pub fn examples_from(
    dataset: &Dataset,
    indices: &[usize],
    cache: &ImageCache,
) -> Result<Vec<Example>, TrainError> {
    let names = dataset.label_space.labels();
    let paths: Vec<PathBuf> = indices
        .iter()
        .map(|&i| dataset.samples[i].image.clone())
        .collect();
    let images = cache.get_many(&paths);
    indices
        .iter()
        .zip(images)
        .map(|(&i, image)| {
            let sample = &dataset.samples[i];
            let mut labels: Vec<String> = sample
                .positive_indices(UncertaintyPolicy::PositiveOnly)
                .into_iter()
                .map(|l| names[l].clone())
                .filter(|l| l != "No Finding")
                .collect();
            if labels.is_empty() {
                labels.push("No Finding".into());
            }
            Ok(Example {
                path: sample.image.clone(),
                image: image?,
                labels,
                reasoning: None,
            })
        })
        .collect()
}

/// One line of an SFT data file: `{"image": "...", "labels": [...], "reasoning": "..."}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SftRecord {
    /// Image path, absolute or relative to the file.
    pub image: PathBuf,
    /// Positive findings, CheXpert names or synonyms the reward vocabulary knows.
    pub labels: Vec<String>,
    /// A teacher-written reasoning trace (the whole answer with its tags, or the reasoning
    /// alone, which is then wrapped with the labels).
    #[serde(default)]
    pub reasoning: Option<String>,
}

/// Read an SFT JSONL file into examples; a malformed line, an unknown label or an unreadable
/// image is an error naming the file and line.
pub fn read_sft_jsonl(
    path: &std::path::Path,
    cache: &ImageCache,
) -> Result<Vec<Example>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let vocabulary = LabelVocabulary::chexpert();
    let mut examples = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |message: String| {
            TrainError::Config(format!("{}:{}: {message}", path.display(), n + 1))
        };
        let record: SftRecord = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        let mut labels = Vec::new();
        for label in &record.labels {
            let index = vocabulary
                .lookup(label)
                .ok_or_else(|| at(format!("unknown label `{label}`")))?;
            labels.push(vocabulary.labels()[index].clone());
        }
        if labels.is_empty() {
            labels.push("No Finding".into());
        }
        let image_path = if record.image.is_absolute() {
            record.image.clone()
        } else {
            base.join(&record.image)
        };
        let image = cache.get(&image_path).map_err(|e| at(e.to_string()))?;
        let reasoning = record.reasoning.map(|r| {
            if r.contains("<solution>") {
                r
            } else {
                format!(
                    "<think>{r}</think><solution>{}</solution>",
                    labels.join(", ")
                )
            }
        });
        examples.push(Example {
            path: image_path,
            image,
            labels,
            reasoning,
        });
    }
    Ok(examples)
}

/// The model being trained with what it reads: tokenizer, prompt variant and encoded prompt.
#[derive(Clone)]
pub struct Policy {
    /// The vision-language model.
    pub model: Gemma3ForConditionalGeneration,
    /// Its tokenizer.
    pub tokenizer: ChexTokenizer,
    /// The prompt variant.
    pub variant: PromptVariant,
    /// The prompt, tokenized, with its image block.
    pub prompt: EncodedPrompt,
}

impl Policy {
    /// Assemble; the tokenizer must agree with the model's special ids.
    pub fn new(
        model: Gemma3ForConditionalGeneration,
        tokenizer: ChexTokenizer,
        variant: PromptVariant,
    ) -> Result<Self, TrainError> {
        tokenizer.check_against(&model.config)?;
        let prompt = encode_prompt(
            &tokenizer,
            &variant.question(),
            model.config.mm_tokens_per_image,
        )?;
        Ok(Self {
            model,
            tokenizer,
            variant,
            prompt,
        })
    }

    /// Token ids of an answer followed by the end-of-turn token (what SFT learns to write).
    pub fn answer_ids(&self, answer: &str) -> Result<Vec<u32>, TrainError> {
        let mut ids = self.tokenizer.encode(answer)?;
        ids.push(self.tokenizer.end_of_turn);
        Ok(ids)
    }

    /// Tokens that end a completion.
    pub fn stop_tokens(&self) -> Vec<u32> {
        vec![self.tokenizer.end_of_turn, self.tokenizer.eos]
    }
}

/// Greedy answers for `examples` (in batches of `batch`), each parsed into labels.
pub struct Answers {
    /// The completions, in example order.
    pub completions: Vec<Completion>,
    /// Decoded text of each.
    pub texts: Vec<String>,
}

/// Generate one greedy answer per example.
pub fn answer(
    policy: &Policy,
    examples: &[Example],
    max_new_tokens: usize,
    batch: usize,
    device: &Device,
) -> Result<Answers, TrainError> {
    let model = policy.model.valid();
    let mut completions = Vec::with_capacity(examples.len());
    let mut texts = Vec::with_capacity(examples.len());
    for (c, chunk) in examples.chunks(batch.max(1)).enumerate() {
        let images: Vec<&PreparedImage> = chunk.iter().map(|e| e.image.as_ref()).collect();
        let pixels = pixel_batch(&images, device);
        let prompts = vec![policy.prompt.clone(); chunk.len()];
        let config = GenerationConfig {
            stop_tokens: policy.stop_tokens(),
            ..GenerationConfig::greedy(max_new_tokens)
        };
        for mut completion in generate(&model, &prompts, Some(pixels), &config, device)? {
            completion.prompt += c * batch.max(1);
            texts.push(policy.tokenizer.decode(&completion.tokens, true)?);
            completions.push(completion);
        }
    }
    Ok(Answers { completions, texts })
}

/// Score answers against the examples on the CheXpert labels: predicted labels are read
/// leniently from the answer block; an unparseable answer predicts nothing.
pub fn score_answers(
    texts: &[String],
    examples: &[Example],
    context: &RewardContext,
) -> Result<Evaluation, TrainError> {
    let labels: Vec<String> = CHEXPERT_LABELS.iter().map(|s| s.to_string()).collect();
    let mut truth = Vec::with_capacity(examples.len());
    let mut predicted = Vec::with_capacity(examples.len());
    let mut parsed = Vec::with_capacity(examples.len());
    for (text, example) in texts.iter().zip(examples) {
        let mut t = vec![false; labels.len()];
        for i in example.truth(&context.vocabulary) {
            t[i] = true;
        }
        let mut p = vec![false; labels.len()];
        let output = parse_output(text, &context.format, context.mode);
        if let Some(answer) = &output.answer {
            for i in extract_labels(answer, &context.vocabulary).labels {
                p[i] = true;
            }
        }
        parsed.push(output.answer.is_some());
        truth.push(t);
        predicted.push(p);
    }
    evaluate(
        EvalInput {
            labels: &labels,
            truth: &truth,
            predicted: &predicted,
            parsed: Some(&parsed),
        },
        ZeroDivision::Zero,
        None,
    )
    .map_err(|e| TrainError::Config(e.to_string()))
}
