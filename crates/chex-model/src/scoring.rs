//! Teacher-forced scoring: per-token log-probabilities and entropies of given completions under
//! the model, in one forward pass, differentiable when the model lives on an autodiff device
//! (what the GRPO loss and the SFT loss need). The output head and the log-softmax run only at
//! completion positions and a chunk of positions at a time (see [`positions_per_chunk`]).

use std::ops::Range;

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
    let chunk = positions_per_chunk(rows.len(), model.config.text_config.vocab_size);
    score_in_chunks(model, rows, images, temperature, chunk, device)
}

/// [`score_completions`] with `chunk` positions per pass of the output head.
pub fn score_in_chunks(
    model: &Gemma3ForConditionalGeneration,
    rows: &[ScoringRow<'_>],
    images: Option<ImageInputs<'_>>,
    temperature: f32,
    chunk: usize,
    device: &Device,
) -> TokenScores {
    let batch = ScoringBatch::new(rows, device);
    let hidden = model.forward_hidden(batch.ids.clone(), &batch.layout, images, None);
    batch.scores(model, hidden, temperature, chunk)
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

    /// The completions' scores from the final hidden states `[batch, width + longest, hidden]`.
    pub fn scores(
        &self,
        model: &Gemma3ForConditionalGeneration,
        hidden: Tensor<3>,
        temperature: f32,
        chunk: usize,
    ) -> TokenScores {
        let (chosen, entropies) = self.scores_over(
            model,
            &self.chunks(chunk),
            |positions| self.predicting(&hidden, positions),
            &model.output_head(),
            model.output_bias(),
            temperature,
        );
        self.masked(chosen, entropies)
    }

    /// Log-probabilities and entropies `[batch, longest]`, unmasked, a chunk of positions at a
    /// time; `predicting` gives each chunk's normed hidden states.
    pub fn scores_over(
        &self,
        model: &Gemma3ForConditionalGeneration,
        chunks: &[Range<usize>],
        predicting: impl Fn(Range<usize>) -> Tensor<3>,
        head: &Tensor<2>,
        bias: Option<Tensor<1>>,
        temperature: f32,
    ) -> (Tensor<2>, Tensor<2>) {
        let mut chosen = Vec::with_capacity(chunks.len());
        let mut entropies = Vec::with_capacity(chunks.len());
        for positions in chunks {
            let (logits, targets) = self.chunk_logits(
                model,
                predicting(positions.clone()),
                head,
                bias.clone(),
                positions.clone(),
                temperature,
            );
            let (logprob, entropy) = selected_log_softmax(logits, targets);
            chosen.push(logprob);
            entropies.push(entropy);
        }
        (Tensor::cat(chosen, 1), Tensor::cat(entropies, 1))
    }

    /// Completion positions a chunk at a time: the head runs only at the completion's positions
    /// (transformers' `logits_to_keep`), and over the vocabulary `chunk` positions at a time,
    /// so no full-vocabulary tensor spans the whole completion.
    pub fn chunks(&self, chunk: usize) -> Vec<Range<usize>> {
        let chunk = chunk.max(1);
        (0..self.longest)
            .step_by(chunk)
            .map(|start| start..(start + chunk).min(self.longest))
            .collect()
    }

    /// The hidden states that predict completion `positions`: the state at slot t predicts the
    /// token at slot t + 1.
    pub fn predicting(&self, hidden: &Tensor<3>, positions: Range<usize>) -> Tensor<3> {
        let [batch, _, d] = hidden.dims();
        let slots = self.width - 1 + positions.start..self.width - 1 + positions.end;
        hidden.clone().slice([0..batch, slots, 0..d])
    }

    /// The temperature-scaled logits `[batch, positions, vocab]` at completion `positions`, from
    /// the hidden states that predict them (already normed), and the ids they score
    /// `[batch, positions, 1]`: what [`selected_log_softmax`] or [`selected_log_probs`] take.
    pub fn chunk_logits(
        &self,
        model: &Gemma3ForConditionalGeneration,
        predicting: Tensor<3>,
        head: &Tensor<2>,
        bias: Option<Tensor<1>>,
        positions: Range<usize>,
        temperature: f32,
    ) -> (Tensor<3>, Tensor<3, Int>) {
        let batch = predicting.dims()[0];
        let inverse_temperature = 1.0 / temperature.max(1e-6) as f64;
        let logits = model.logits_with_parts(predicting, head, bias) * inverse_temperature;
        let targets = self.targets.clone().slice([0..batch, positions, 0..1]);
        (logits, targets)
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

/// Most elements of one chunk's `[batch, positions, vocab]` logits: 2^24 (64 MiB in f32).
pub const CHUNK_ELEMENTS: usize = 1 << 24;

/// Positions scored per chunk so that a chunk's logits stay within [`CHUNK_ELEMENTS`] (at least
/// one position).
pub fn positions_per_chunk(batch: usize, vocab: usize) -> usize {
    (CHUNK_ELEMENTS / (batch.max(1) * vocab.max(1))).max(1)
}

/// `log softmax(logits)` at `targets` and the entropy of each position's distribution, from
/// the log-sum-exp, without a second full-vocabulary log-probability tensor (TRL's
/// `selective_log_softmax`). `logits` is `[batch, positions, vocab]`, `targets`
/// `[batch, positions, 1]`; both results are `[batch, positions]`.
pub fn selected_log_softmax(logits: Tensor<3>, targets: Tensor<3, Int>) -> (Tensor<2>, Tensor<2>) {
    let [batch, positions, _] = logits.dims();
    let (weights, total, log_norm) = log_normaliser(logits.clone());
    let chosen = logits.clone().gather(2, targets) - log_norm.clone();
    // One exponential serves both the normaliser and the probabilities.
    let probabilities = weights / total;
    let entropy = log_norm - (probabilities * logits).sum_dim(2);
    (
        chosen.reshape([batch, positions]),
        entropy.reshape([batch, positions]),
    )
}

/// The log-probabilities alone of [`selected_log_softmax`]: what a backward pass reruns when
/// no loss term depends on the entropies, three full-vocabulary passes fewer.
pub fn selected_log_probs(logits: Tensor<3>, targets: Tensor<3, Int>) -> Tensor<2> {
    let [batch, positions, _] = logits.dims();
    let (_, _, log_norm) = log_normaliser(logits.clone());
    (logits.gather(2, targets) - log_norm).reshape([batch, positions])
}

/// `exp(logits - max)`, its sum over the vocabulary and the log-sum-exp `[batch, positions, 1]`.
fn log_normaliser(logits: Tensor<3>) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
    // The shift only steadies exp; its gradient cancels, so it is taken out of the graph.
    let shift = logits.clone().max_dim(2).detach();
    let weights = (logits - shift.clone()).exp();
    let total = weights.clone().sum_dim(2);
    let log_norm = total.clone().log() + shift;
    (weights, total, log_norm)
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::log_softmax;

    use super::*;
    use crate::Gemma3Config;
    use crate::device::on_every_test_device;

    #[test]
    fn selected_log_softmax_matches_the_full_one() {
        on_every_test_device(|_, device| {
            let logits = Tensor::<3>::from_data(
                TensorData::new(
                    (0..2 * 3 * 7)
                        .map(|i| ((i * 37 % 11) as f32 - 5.0) * 3.0)
                        .collect::<Vec<_>>(),
                    [2, 3, 7],
                ),
                device,
            );
            let targets = Tensor::<3, Int>::from_data(
                TensorData::new(vec![0i64, 6, 3, 2, 5, 1], [2, 3, 1]),
                device,
            );
            let (chosen, entropy) = selected_log_softmax(logits.clone(), targets.clone());
            let logp = log_softmax(logits.clone(), 2);
            let expected = logp.clone().gather(2, targets.clone()).reshape([2, 3]);
            let expected_entropy = (logp.clone().exp() * logp).sum_dim(2).reshape([2, 3]).neg();
            let close = |a: Tensor<2>, b: Tensor<2>| {
                let diff: f32 = (a - b).abs().max().into_scalar::<f32>();
                assert!(diff < 1e-5, "{diff}");
            };
            close(chosen.clone(), expected);
            close(entropy, expected_entropy);
            close(selected_log_probs(logits, targets), chosen);
        });
    }

    #[test]
    fn scores_do_not_depend_on_the_chunk_size() {
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
            let whole = score_in_chunks(&model, &rows, None, 0.8, 64, device);
            let single = score_in_chunks(&model, &rows, None, 0.8, 1, device);
            let uneven = score_in_chunks(&model, &rows, None, 0.8, 2, device);
            for other in [single, uneven] {
                let diff: f32 = (other.logprobs - whole.logprobs.clone())
                    .abs()
                    .max()
                    .into_scalar::<f32>();
                assert!(diff < 1e-6, "{diff}");
                let diff: f32 = (other.entropies - whole.entropies.clone())
                    .abs()
                    .max()
                    .into_scalar::<f32>();
                assert!(diff < 1e-6, "{diff}");
            }
        });
        // MedGemma's vocabulary at GRPO's 16 rows: 3 positions a chunk, under 64 MiB of logits.
        assert_eq!(positions_per_chunk(16, 262_208), 3);
        assert!(positions_per_chunk(16, 262_208) * 16 * 262_208 <= CHUNK_ELEMENTS);
        assert_eq!(positions_per_chunk(1, 10), CHUNK_ELEMENTS / 10);
    }
}
