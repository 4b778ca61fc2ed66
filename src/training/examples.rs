//! Training examples (an image and its findings, from a dataset or an SFT JSONL file) and the
//! policy being trained (model, tokenizer, prompt).

use std::path::PathBuf;
use std::sync::Arc;

use chex_data::{Dataset, ImageCache, PreparedImage, UncertaintyPolicy};
use chex_model::prompt::{EncodedPrompt, encode_prompt};
use chex_model::{ChexTokenizer, Gemma3ForConditionalGeneration};
use chex_rewards::{LabelVocabulary, OutputFormat};

use crate::error::{Error, Result};
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
) -> Result<Vec<Example>> {
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
/// image is an error naming the file and line. Image paths are relative to the file's folder
/// and may not leave it unless `allow_absolute_paths`.
pub fn read_sft_jsonl(
    path: &std::path::Path,
    cache: &ImageCache,
    allow_absolute_paths: bool,
) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let vocabulary = LabelVocabulary::chexpert();
    let mut examples = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |message: String| Error::line(path, n + 1, message);
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
        let written = record.image.to_string_lossy();
        let image_path =
            chex_data::join_inside(base, &written, allow_absolute_paths).map_err(|reason| {
                at(format!(
                    "image path `{written}` {reason}; pass --allow-absolute-paths \
                     (data.allow_absolute_paths = true) to read images outside {}",
                    base.display()
                ))
            })?;
        let image = cache.get(&image_path).map_err(|e| at(e.to_string()))?;
        let format = OutputFormat::default();
        let reasoning = record.reasoning.map(|r| {
            if format.has_answer_block(&r) {
                r
            } else {
                format.render(&r, &labels.join(", "))
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
    ) -> Result<Self> {
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
    pub fn answer_ids(&self, answer: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(answer)?;
        ids.push(self.tokenizer.end_of_turn);
        Ok(ids)
    }

    /// Tokens that end a completion.
    pub fn stop_tokens(&self) -> Vec<u32> {
        vec![self.tokenizer.end_of_turn, self.tokenizer.eos]
    }
}
