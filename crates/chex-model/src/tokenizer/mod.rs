//! Tokenizers from a Hugging Face `tokenizer.json` (the `tokenizers` crate), checked for the
//! special tokens the chat template and image placeholder need; and ([`train`]) a small
//! byte-level BPE for the tiny presets, trained on the project's own prompt/answer corpus.

pub mod train;

use std::path::Path;

use crate::config::Gemma3Config;
use crate::error::ModelError;

/// Gemma's special tokens, in the order our trained tokenizers give them ids 0..9 (Gemma's own
/// vocabulary has the first four at the same ids).
pub const SPECIAL_TOKENS: [&str; 9] = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
];

/// A tokenizer with the ids of the tokens prompt assembly and generation rely on.
#[derive(Clone)]
pub struct ChexTokenizer {
    inner: tokenizers::Tokenizer,
    /// `<pad>`.
    pub pad: u32,
    /// `<eos>`.
    pub eos: u32,
    /// `<bos>`.
    pub bos: u32,
    /// `<start_of_turn>`.
    pub start_of_turn: u32,
    /// `<end_of_turn>`, where a model turn stops.
    pub end_of_turn: u32,
    /// `<start_of_image>`.
    pub start_of_image: u32,
    /// `<end_of_image>`.
    pub end_of_image: u32,
    /// `<image_soft_token>`, replaced by image features.
    pub image: u32,
    source: String,
}

impl std::fmt::Debug for ChexTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChexTokenizer")
            .field("source", &self.source)
            .field("vocab", &self.vocab_size())
            .finish()
    }
}

impl ChexTokenizer {
    /// Load `tokenizer.json`; a missing special token is an error naming it.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::wrap(inner, path.display().to_string())
    }

    /// Wrap an in-memory tokenizer (`source` names it in errors).
    pub fn wrap(inner: tokenizers::Tokenizer, source: String) -> Result<Self, ModelError> {
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| ModelError::Tokenizer {
                    path: source.clone(),
                    message: format!(
                        "has no special token `{token}`, which the chat template needs"
                    ),
                })
        };
        Ok(Self {
            pad: id("<pad>")?,
            eos: id("<eos>")?,
            bos: id("<bos>")?,
            start_of_turn: id("<start_of_turn>")?,
            end_of_turn: id("<end_of_turn>")?,
            start_of_image: id("<start_of_image>")?,
            end_of_image: id("<end_of_image>")?,
            image: id("<image_soft_token>")?,
            inner,
            source,
        })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Check that the model's special ids and vocabulary agree with this tokenizer.
    pub fn check_against(&self, config: &Gemma3Config) -> Result<(), ModelError> {
        let pairs = [
            (
                "image_token_index",
                config.image_token_index,
                self.image,
                "<image_soft_token>",
            ),
            (
                "boi_token_index",
                config.boi_token_index,
                self.start_of_image,
                "<start_of_image>",
            ),
            (
                "eoi_token_index",
                config.eoi_token_index,
                self.end_of_image,
                "<end_of_image>",
            ),
        ];
        for (field, in_config, in_tokenizer, token) in pairs {
            if in_config != in_tokenizer {
                return Err(ModelError::Tokenizer {
                    path: self.source.clone(),
                    message: format!(
                        "gives `{token}` id {in_tokenizer} but the model config's {field} is {in_config}"
                    ),
                });
            }
        }
        // The count alone misses sparse ids: an id past the embedding table would fail deep in a
        // gather instead of here.
        let vocabulary = self.inner.get_vocab(true);
        if let Some((token, id)) = vocabulary
            .iter()
            .max_by_key(|(_, id)| **id)
            .filter(|(_, id)| **id as usize >= config.text_config.vocab_size)
        {
            return Err(ModelError::Tokenizer {
                path: self.source.clone(),
                message: format!(
                    "gives `{token}` id {id}, beyond the model's vocab_size {}",
                    config.text_config.vocab_size
                ),
            });
        }
        if self.vocab_size() > config.text_config.vocab_size {
            return Err(ModelError::Tokenizer {
                path: self.source.clone(),
                message: format!(
                    "has {} tokens but the model's vocab_size is {}",
                    self.vocab_size(),
                    config.text_config.vocab_size
                ),
            });
        }
        Ok(())
    }

    /// Token ids of `text`; special tokens written in the text are recognised, none are added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer {
                path: self.source.clone(),
                message: format!("cannot encode text: {e}"),
            })
    }

    /// Text of `ids`, without special tokens when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer {
                path: self.source.clone(),
                message: format!("cannot decode ids: {e}"),
            })
    }

    /// Save as `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        self.inner
            .save(path, true)
            .map_err(|e| ModelError::Tokenizer {
                path: path.display().to_string(),
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_beyond_the_embedding_table_is_refused_naming_the_token() {
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3_tiny");
        let config = Gemma3Config::from_file(&fixture.join("config.json")).unwrap();
        let text = std::fs::read_to_string(fixture.join("tokenizer.json")).unwrap();
        let fine = ChexTokenizer::from_file(&fixture.join("tokenizer.json")).unwrap();
        fine.check_against(&config).unwrap();
        // Same number of tokens as the model's vocabulary, but one of them renumbered past it.
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let vocab = json["model"]["vocab"].as_object_mut().unwrap();
        let last = vocab
            .iter()
            .find(|(_, id)| id.as_u64() == Some(399))
            .map(|(token, _)| token.clone())
            .unwrap();
        vocab.insert(last.clone(), serde_json::json!(450));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let far = ChexTokenizer::from_file(&path).unwrap();
        let e = far.check_against(&config).unwrap_err().to_string();
        assert!(far.vocab_size() <= config.text_config.vocab_size);
        assert!(
            e.contains(&format!("`{last}` id 450")) && e.contains("tokenizer.json"),
            "{e}"
        );
    }
}
