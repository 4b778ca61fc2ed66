//! Teacher-forced scoring: per-token log-probabilities and entropies of given completions under
//! the model, in one forward pass, differentiable when the model lives on an autodiff device
//! (what the GRPO loss and the SFT loss need).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::mask::BatchLayout;
use crate::prompt::left_pad;
use crate::vlm::{Gemma3ForConditionalGeneration, ImageInputs, token_tensor};

/// One row to score: a prompt (with its image block) and a completion.
#[derive(Debug, Clone, Copy)]
pub struct ScoringRow<'a> {
    /// Prompt ids.
    pub prompt: &'a [u32],
    /// Image token positions in the prompt.
    pub image_block: Option<&'a std::ops::Range<usize>>,
    /// Completion ids.
    pub completion: &'a [u32],
}

/// Scores of a batch, `[batch, longest completion]`; positions past a completion's end hold
/// zeros and a zero in `mask`.
#[derive(Debug, Clone)]
pub struct TokenScores {
    /// `log p(token | prefix)` at temperature `T`.
    pub logprobs: Tensor<2>,
    /// Entropy of the next-token distribution at each position.
    pub entropies: Tensor<2>,
    /// 1 for completion tokens, 0 for padding.
    pub mask: Tensor<2>,
}

/// Score completions. Logits are divided by `temperature` first, as TRL does, so the scores
/// compare with the log-probs recorded while sampling at that temperature.
pub fn score_completions(
    model: &Gemma3ForConditionalGeneration,
    rows: &[ScoringRow<'_>],
    images: Option<ImageInputs<'_>>,
    temperature: f32,
    device: &Device,
) -> TokenScores {
    let prompts: Vec<&[u32]> = rows.iter().map(|r| r.prompt).collect();
    let blocks: Vec<_> = rows.iter().map(|r| r.image_block.cloned()).collect();
    let (prompt_ids, width, layout) = left_pad(&prompts, &blocks, 0);
    let longest = rows
        .iter()
        .map(|r| r.completion.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let batch = rows.len();
    let total = width + longest;
    let mut ids = Vec::with_capacity(batch * total);
    let mut targets = Vec::with_capacity(batch * longest);
    let mut mask = Vec::with_capacity(batch * longest);
    for (r, row) in rows.iter().enumerate() {
        ids.extend_from_slice(&prompt_ids[r * width..(r + 1) * width]);
        for i in 0..longest {
            let token = row.completion.get(i).copied();
            ids.push(token.unwrap_or(0));
            targets.push(token.unwrap_or(0) as i64);
            mask.push(if token.is_some() { 1.0f32 } else { 0.0 });
        }
    }
    let layout = BatchLayout { rows: layout.rows };
    let hidden = model.forward_hidden(
        token_tensor(&ids, batch, total, device),
        &layout,
        images,
        None,
    );
    let [_, _, d] = hidden.dims();
    // The hidden state at slot t predicts the token at slot t + 1.
    let predicting = hidden.slice([0..batch, width - 1..total - 1, 0..d]);
    let logits = model.logits(predicting) / temperature.max(1e-6) as f64;
    let logp = log_softmax(logits, 2);
    let targets: Tensor<3, Int> =
        Tensor::from_data(TensorData::new(targets, [batch, longest, 1]), device);
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [batch, longest]), device);
    let chosen = logp.clone().gather(2, targets).reshape([batch, longest]);
    let entropies = (logp.clone().exp() * logp)
        .sum_dim(2)
        .reshape([batch, longest])
        .neg();
    TokenScores {
        logprobs: chosen * mask.clone(),
        entropies: entropies * mask.clone(),
        mask,
    }
}
