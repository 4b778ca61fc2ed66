//! Teacher-forced scoring: per-token log-probabilities and entropies of given completions under
//! the model, in one forward pass, differentiable when the model lives on an autodiff device
//! (what the GRPO loss and the SFT loss need). The output head and the log-softmax run only at
//! completion positions, a block of positions and of the vocabulary at a time ([`crate::head`]).

use std::ops::Range;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::head::{BLOCK_ELEMENTS, HeadBlocks, HeadScores, OutputHead};
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
    score_in_blocks(model, rows, images, temperature, BLOCK_ELEMENTS, device)
}

/// [`score_completions`] with at most `budget` logits per block of the output head (see
/// [`HeadBlocks::plan`]).
pub fn score_in_blocks(
    model: &Gemma3ForConditionalGeneration,
    rows: &[ScoringRow<'_>],
    images: Option<ImageInputs<'_>>,
    temperature: f32,
    budget: usize,
    device: &Device,
) -> TokenScores {
    let batch = ScoringBatch::new(rows, device);
    let hidden = model.forward_hidden(batch.ids.clone(), &batch.layout, images, None);
    let blocks = batch.blocks(model, budget);
    batch.scores(model, hidden, temperature, &blocks)
}

/// Rows laid out for one teacher-forced pass: prompts left-padded to a common width, then each
/// completion padded to the longest.
pub(crate) struct ScoringBatch {
    /// `[batch, width + longest]` token ids.
    pub ids: Tensor<2, Int>,
    pub layout: BatchLayout,
    /// Padded prompt width.
    width: usize,
    /// Longest completion (at least 1).
    longest: usize,
    /// `[batch, longest, 1]` completion ids.
    targets: Tensor<3, Int>,
    /// `[batch, longest]`: 1 for completion tokens, 0 for padding.
    mask: Tensor<2>,
}

impl ScoringBatch {
    pub fn new(rows: &[ScoringRow<'_>], device: &Device) -> Self {
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
        Self {
            ids: token_tensor(&ids, batch, total, device),
            layout: BatchLayout { rows: layout.rows },
            width,
            longest,
            targets: Tensor::from_data(TensorData::new(targets, [batch, longest, 1]), device),
            mask: Tensor::from_data(TensorData::new(mask, [batch, longest]), device),
        }
    }

    /// How the output head covers this batch's completion positions, at most `budget` logits a
    /// block.
    pub fn blocks(&self, model: &Gemma3ForConditionalGeneration, budget: usize) -> HeadBlocks {
        let [batch, _] = self.mask.dims();
        let vocab = model.config.text_config.vocab_size;
        HeadBlocks::plan(batch, self.longest, vocab, budget)
    }

    /// The completions' scores from the final hidden states `[batch, width + longest, hidden]`
    /// (the final norm applied), differentiable through them and the head when they are tracked.
    pub fn scores(
        &self,
        model: &Gemma3ForConditionalGeneration,
        hidden: Tensor<3>,
        temperature: f32,
        blocks: &HeadBlocks,
    ) -> TokenScores {
        let head = OutputHead::new(model, temperature, true);
        let scores = self.scores_over(&head, blocks, |positions| {
            self.predicting(&hidden, positions)
        });
        self.masked(scores.logprobs, scores.entropies)
    }

    /// The scores `[batch, longest]`, unmasked, a range of positions at a time; `predicting`
    /// gives each range's normed hidden states.
    pub fn scores_over(
        &self,
        head: &OutputHead<'_>,
        blocks: &HeadBlocks,
        predicting: impl Fn(Range<usize>) -> Tensor<3>,
    ) -> HeadScores {
        HeadScores::join(
            blocks
                .positions
                .iter()
                .map(|positions| {
                    head.scores(
                        predicting(positions.clone()),
                        &self.targets(positions.clone()),
                        &blocks.vocab,
                    )
                })
                .collect(),
        )
    }

    /// The hidden states that predict completion `positions`: the state at slot t predicts the
    /// token at slot t + 1.
    pub fn predicting(&self, hidden: &Tensor<3>, positions: Range<usize>) -> Tensor<3> {
        let [batch, _, d] = hidden.dims();
        let slots = self.width - 1 + positions.start..self.width - 1 + positions.end;
        hidden.clone().slice([0..batch, slots, 0..d])
    }

    /// The ids scored at completion `positions`, `[batch, positions, 1]`.
    pub fn targets(&self, positions: Range<usize>) -> Tensor<3, Int> {
        let batch = self.targets.dims()[0];
        self.targets.clone().slice([0..batch, positions, 0..1])
    }

    /// Scores with padding positions zeroed.
    pub fn masked(&self, chosen: Tensor<2>, entropies: Tensor<2>) -> TokenScores {
        TokenScores {
            logprobs: chosen * self.mask.clone(),
            entropies: entropies * self.mask.clone(),
            mask: self.mask.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gemma3Config;
    use crate::device::on_every_test_device;

    #[test]
    fn scores_do_not_depend_on_the_blocks() {
        on_every_test_device(|_, device| {
            let config = Gemma3Config::preset("tiny").unwrap();
            let model = Gemma3ForConditionalGeneration::seeded(&config, 3, device);
            let (a, b) = ([5u32, 9, 12, 4], [5u32, 7]);
            let rows = [
                ScoringRow {
                    prompt: &a,
                    image_block: None,
                    completion: &[3, 8, 2, 11, 6],
                },
                ScoringRow {
                    prompt: &b,
                    image_block: None,
                    completion: &[14, 1],
                },
            ];
            // The tiny preset's 2,048-token vocabulary in one block and 5 positions in one range;
            // then in 32 blocks of 64, a position a range; in blocks of 683, 683 and 682; and
            // whole, over ranges of 3 and 2 positions.
            let scores = |budget| score_in_blocks(&model, &rows, None, 0.8, budget, device);
            let whole = scores(BLOCK_ELEMENTS);
            for other in [scores(64), scores(1000), scores(12_288)] {
                let diff: f32 = (other.logprobs - whole.logprobs.clone())
                    .abs()
                    .max()
                    .into_scalar::<f32>();
                assert!(diff < 1e-6, "{diff}");
                let diff: f32 = (other.entropies - whole.entropies.clone())
                    .abs()
                    .max()
                    .into_scalar::<f32>();
                // A few of f32's steps at these entropies (≈ 7.6 nats, steps of 4.8e-7): the
                // blocks sum their terms in other orders.
                assert!(diff < 4e-6, "{diff}");
            }
        });
    }
}
