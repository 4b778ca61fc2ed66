//! The text the tiny presets' tokenizer is trained on: every prompt variant and reference
//! answers for label sets drawn at random, so the vocabulary covers what SFT and GRPO read and
//! write.

use chex_data::labels::CHEXPERT_LABELS;
use chex_model::tokenizer::train::train_bpe_for;
use chex_model::{ChexTokenizer, Gemma3Config};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::prompts::{PROMPT_VARIANTS, reference_answer};

/// Prompts and answers, `answers` of them, drawn with `seed`.
pub fn training_corpus(answers: usize, seed: u64) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut corpus: Vec<String> = PROMPT_VARIANTS.iter().map(|v| v.question()).collect();
    for _ in 0..answers {
        let count = rng.random_range(0..4);
        let mut labels: Vec<&str> = (0..count)
            .map(|_| CHEXPERT_LABELS[rng.random_range(1..CHEXPERT_LABELS.len())])
            .collect();
        labels.sort();
        labels.dedup();
        let variant = PROMPT_VARIANTS[rng.random_range(0..PROMPT_VARIANTS.len())];
        corpus.push(reference_answer(&labels, variant, &mut rng));
    }
    corpus
}

/// The tokenizer of a preset: byte-level BPE trained on [`training_corpus`], with the image
/// tokens at the preset's ids.
pub fn preset_tokenizer(config: &Gemma3Config) -> Result<ChexTokenizer, chex_model::ModelError> {
    let corpus = training_corpus(2000, 0);
    train_bpe_for(corpus.iter(), config)
}
