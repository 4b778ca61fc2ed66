//! Train a byte-level BPE with Gemma's special tokens, for presets too small for Gemma's
//! 262k-token vocabulary.

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

use super::{ChexTokenizer, SPECIAL_TOKENS};
use crate::error::ModelError;

/// Train on `corpus` up to `vocab_size` tokens (special tokens get ids 0..9).
pub fn train_bpe<I, S>(corpus: I, vocab_size: usize) -> Result<ChexTokenizer, ModelError>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let fail = |e: tokenizers::Error| ModelError::Tokenizer {
        path: "(training)".into(),
        message: e.to_string(),
    };
    let special: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(special)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let byte_level = ByteLevel::default().add_prefix_space(false);
    let mut tokenizer = TokenizerBuilder::<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default().into())
    .with_pre_tokenizer(Some(byte_level.into()))
    .with_decoder(Some(byte_level.into()))
    .build()
    .map_err(fail)?;
    tokenizer.train(&mut trainer, corpus).map_err(fail)?;
    ChexTokenizer::wrap(tokenizer.into(), "(trained BPE)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_round_trips_and_keeps_special_ids() {
        let corpus = [
            "The heart is enlarged.",
            "No pneumothorax.",
            "<solution>Cardiomegaly</solution>",
        ]
        .iter()
        .cycle()
        .take(30);
        let tok = train_bpe(corpus, 300).unwrap();
        assert_eq!((tok.pad, tok.eos, tok.bos, tok.image), (0, 1, 2, 8));
        let text = "<start_of_turn>user\nIs the heart enlarged?<end_of_turn>";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids[0], tok.start_of_turn);
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}
