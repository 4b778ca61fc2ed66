//! Train a byte-level BPE with Gemma's special tokens, for presets too small for Gemma's
//! 262k-token vocabulary.

use std::str::FromStr;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

use super::{ChexTokenizer, SPECIAL_TOKENS};
use crate::config::Gemma3Config;
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

/// [`train_bpe`] to `config`'s vocabulary size, with the image tokens moved to the ids `config`
/// gives them. A preset at MedGemma-4B's shapes keeps Gemma's ids (`<start_of_image>` 255999,
/// `<end_of_image>` 256000, `<image_soft_token>` 262144), which a small trained vocabulary never
/// reaches; the ids they leave empty stay unused, like the ids the training did not fill.
pub fn train_bpe_for<I, S>(corpus: I, config: &Gemma3Config) -> Result<ChexTokenizer, ModelError>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let trained = train_bpe(corpus, config.text_config.vocab_size)?;
    let wanted = [
        ("<start_of_image>", config.boi_token_index),
        ("<end_of_image>", config.eoi_token_index),
        ("<image_soft_token>", config.image_token_index),
    ];
    if wanted
        .iter()
        .all(|(token, id)| trained.inner.token_to_id(token) == Some(*id))
    {
        return Ok(trained);
    }
    relocate_tokens(&trained, &wanted)
}

/// `tokenizer` with each named token at the given id, in its vocabulary and its added tokens.
fn relocate_tokens(
    tokenizer: &ChexTokenizer,
    moves: &[(&str, u32)],
) -> Result<ChexTokenizer, ModelError> {
    let fail = |message: String| ModelError::Tokenizer {
        path: "(trained BPE)".into(),
        message,
    };
    let json = tokenizer
        .inner
        .to_string(false)
        .map_err(|e| fail(e.to_string()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| fail(e.to_string()))?;
    for &(token, id) in moves {
        let taken = value["model"]["vocab"].as_object().and_then(|vocab| {
            vocab
                .iter()
                .find(|(t, i)| *t != token && i.as_u64() == Some(id.into()))
        });
        if let Some((other, _)) = taken {
            return Err(fail(format!(
                "cannot move `{token}` to id {id}: `{other}` has it"
            )));
        }
        value["model"]["vocab"][token] = id.into();
        let added = value["added_tokens"]
            .as_array_mut()
            .and_then(|tokens| tokens.iter_mut().find(|t| t["content"] == token))
            .ok_or_else(|| fail(format!("has no added token `{token}`")))?;
        added["id"] = id.into();
    }
    let inner =
        tokenizers::Tokenizer::from_str(&value.to_string()).map_err(|e| fail(e.to_string()))?;
    ChexTokenizer::wrap(inner, "(trained BPE)".into())
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
        let tok = train_bpe(corpus.clone(), 300).unwrap();
        assert_eq!((tok.pad, tok.eos, tok.bos, tok.image), (0, 1, 2, 8));
        let text = "<start_of_turn>user\nIs the heart enlarged?<end_of_turn>";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids[0], tok.start_of_turn);
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }

    #[test]
    fn a_preset_with_gemma_ids_gets_its_image_tokens_there() {
        let corpus = ["No finding.", "<solution>Edema</solution>"]
            .iter()
            .cycle()
            .take(30);
        let config = Gemma3Config::preset("medgemma-4b").unwrap();
        let tok = train_bpe_for(corpus.clone(), &config).unwrap();
        tok.check_against(&config).unwrap();
        let text = "<start_of_image><image_soft_token><end_of_image>No finding.";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids[..3], [255_999, 262_144, 256_000]);
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(tok.decode(&ids, true).unwrap(), "No finding.");
        assert_eq!((tok.pad, tok.eos, tok.bos), (0, 1, 2));

        // The tiny preset's ids are the trained ones: nothing moves.
        let tiny = Gemma3Config::preset("tiny").unwrap();
        let tok = train_bpe_for(corpus, &tiny).unwrap();
        assert_eq!(tok.image, tiny.image_token_index);
        tok.check_against(&tiny).unwrap();
    }
}
