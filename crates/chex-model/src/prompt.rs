//! Prompt assembly: Gemma 3's chat template, the image placeholder expanded to
//! begin-of-image + N image tokens + end-of-image (as the `transformers` processor does), and
//! left-padded batches with their [`BatchLayout`].

use std::ops::Range;

use crate::error::ModelError;
use crate::mask::{BatchLayout, RowLayout};
use crate::tokenizer::ChexTokenizer;

/// The user turn holding one image and a question, ending where the model's turn begins.
pub fn chat_prompt(question: &str, image_tokens: usize) -> String {
    let image = format!(
        "\n\n<start_of_image>{}<end_of_image>\n\n",
        "<image_soft_token>".repeat(image_tokens)
    );
    format!("<bos><start_of_turn>user\n{image}{question}<end_of_turn>\n<start_of_turn>model\n")
}

/// A tokenized prompt and where its image tokens sit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPrompt {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Positions of the image tokens, when the prompt has an image.
    pub image_block: Option<Range<usize>>,
}

/// Tokenize a chat prompt and check it holds exactly one block of `image_tokens` image tokens.
pub fn encode_prompt(
    tokenizer: &ChexTokenizer,
    question: &str,
    image_tokens: usize,
) -> Result<EncodedPrompt, ModelError> {
    let ids = tokenizer.encode(&chat_prompt(question, image_tokens))?;
    let first = ids.iter().position(|&t| t == tokenizer.image);
    let count = ids.iter().filter(|&&t| t == tokenizer.image).count();
    let image_block = first.map(|f| f..f + count);
    if count != image_tokens
        || image_block
            .as_ref()
            .is_some_and(|b| ids[b.clone()].iter().any(|&t| t != tokenizer.image))
    {
        return Err(ModelError::Tokenizer {
            path: "(prompt)".into(),
            message: format!("expected one block of {image_tokens} image tokens, found {count}"),
        });
    }
    Ok(EncodedPrompt { ids, image_block })
}

/// Left-pad rows to one width: row-major ids and the layout the masks need.
pub fn left_pad(
    rows: &[&[u32]],
    image_blocks: &[Option<Range<usize>>],
    pad: u32,
) -> (Vec<u32>, usize, BatchLayout) {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut layout = BatchLayout::default();
    for (row, block) in rows.iter().zip(image_blocks) {
        let padding = width - row.len();
        ids.extend(std::iter::repeat_n(pad, padding));
        ids.extend_from_slice(row);
        layout.rows.push(RowLayout {
            padding,
            image_blocks: block
                .iter()
                .map(|b| b.start + padding..b.end + padding)
                .collect(),
        });
    }
    (ids, width, layout)
}
