//! The output head and its log-softmax at completion positions, a block of positions and a block
//! of the vocabulary at a time.
//!
//! Gemma 3's head is a `[hidden, 262,208]` matrix (1.3 GB in bf16). Computing a chunk of
//! positions against the whole vocabulary reads all of it per chunk: at 8 rows of 128 tokens and
//! 64 MiB of f32 logits a chunk, 16 reads in the forward pass and 32 more in a checkpointed
//! backward pass, each a product only 64 rows tall. Blocks of the vocabulary instead read each
//! column of the head once per pass, as products as tall as every completion position; each
//! block's log-sum-exp and entropy under its own softmax, and the chosen token's logit, are
//! merged across the blocks afterwards (as flash attention merges its tiles), so no tensor spans
//! the vocabulary. The backward pass needs no graph through the softmax: with the log-sum-exp
//! `L` and mean logit `E[z]` of the forward pass, the gradient of the logits `z` is
//! `g_lp (onehot - p) + g_H p (E[z] - z)` with `p = exp(z - L)`, formed block by block as a
//! constant `w`. For a frozen head (LoRA) `w` times the transposed block is the gradient of the
//! hidden states, formed by hand; for one that trains, `sum(z · w)` carries `w` through autodiff
//! to the head's parameters as well. On libtorch a frozen head without bias or soft-cap runs
//! both passes as a few libtorch kernels a block ([`crate::fused`]'s `head`), the backward pass
//! as each block's own softmax rescaled by `exp(L_b - L)`, from the blocks' log-sum-exps `L_b`
//! the forward pass keeps.
//!
//! ```
//! use chex_model::head::HeadBlocks;
//! // MedGemma-4B's vocabulary at 8 rows of 128 completion tokens: every position in one range,
//! // the vocabulary in 17 blocks of at most 2^24 logits.
//! let blocks = HeadBlocks::plan(8, 128, 262_208, chex_model::head::BLOCK_ELEMENTS);
//! assert_eq!((blocks.positions.len(), blocks.vocab.len()), (1, 17));
//! ```

use std::ops::Range;

use burn::tensor::{Gradients, IndexingUpdateOp, Int, Tensor};

use crate::layers::product;
use crate::vlm::Gemma3ForConditionalGeneration;

/// Most logits one block holds, `rows × positions × vocabulary entries`: 2^24 (64 MiB in f32).
pub const BLOCK_ELEMENTS: usize = 1 << 24;

/// Fewest vocabulary entries a block spans (unless the budget is smaller): each block is a
/// product and a dozen element-wise calls, and narrower blocks would add calls, not save memory
/// worth having.
pub const MIN_VOCAB_BLOCK: usize = 8192;

/// How the head covers `[rows, positions, vocabulary]`: every range of positions meets every
/// block of the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadBlocks {
    /// Ranges of completion positions, in order.
    pub positions: Vec<Range<usize>>,
    /// Blocks of the vocabulary, in order, of equal width but the last.
    pub vocab: Vec<Range<usize>>,
}

impl HeadBlocks {
    /// Blocks of at most `budget` logits (or one position's worth of a block, when that is
    /// more): the vocabulary split as little as the budget allows with all positions in one
    /// range, but in no more blocks than [`MIN_VOCAB_BLOCK`]-wide ones would make; the
    /// positions split only when even that does not fit.
    pub fn plan(rows: usize, positions: usize, vocab: usize, budget: usize) -> Self {
        let (rows, positions, vocab, budget) =
            (rows.max(1), positions.max(1), vocab.max(1), budget.max(1));
        let narrowest = MIN_VOCAB_BLOCK.min(budget);
        let wanted = (rows * positions * vocab).div_ceil(budget);
        let blocks = wanted.clamp(1, vocab.div_ceil(narrowest).max(1));
        let width = vocab.div_ceil(blocks);
        let per_range = (budget / (rows * width)).max(1);
        Self {
            positions: ranges(positions, per_range),
            vocab: ranges(vocab, width),
        }
    }
}

/// `0..total` in consecutive ranges of `step` (the last may be shorter).
fn ranges(total: usize, step: usize) -> Vec<Range<usize>> {
    (0..total)
        .step_by(step)
        .map(|start| start..(start + step).min(total))
        .collect()
}

/// Scores of a range of positions, each `[rows, positions]` (and what the backward pass needs).
#[derive(Debug, Clone)]
pub struct HeadScores {
    /// `log p(target)` at the temperature.
    pub logprobs: Tensor<2>,
    /// Entropy of each position's distribution.
    pub entropies: Tensor<2>,
    /// The log-sum-exp `L` of each position's logits.
    pub log_norm: Tensor<2>,
    /// The mean logit `E_p[z]` under the position's distribution (`L - entropy`).
    pub mean_logit: Tensor<2>,
    /// The log-sum-exp of each block of the vocabulary, `[rows, positions, blocks]`.
    pub block_log_norms: Tensor<3>,
}

impl HeadScores {
    /// The scores of completion `positions` (indices into these scores' own positions).
    pub fn positions(&self, positions: Range<usize>) -> Self {
        let [rows, all] = self.logprobs.dims();
        if positions == (0..all) {
            return self.clone();
        }
        let cut = |t: &Tensor<2>| t.clone().slice([0..rows, positions.clone()]);
        let blocks = self.block_log_norms.dims()[2];
        Self {
            logprobs: cut(&self.logprobs),
            entropies: cut(&self.entropies),
            log_norm: cut(&self.log_norm),
            mean_logit: cut(&self.mean_logit),
            block_log_norms: self
                .block_log_norms
                .clone()
                .slice([0..rows, positions, 0..blocks]),
        }
    }

    /// Consecutive ranges' scores as one (panics on none).
    pub fn join(mut ranges: Vec<Self>) -> Self {
        if ranges.len() == 1 {
            return ranges.remove(0);
        }
        let join = |part: fn(&Self) -> &Tensor<2>| {
            Tensor::cat(ranges.iter().map(|r| part(r).clone()).collect(), 1)
        };
        Self {
            logprobs: join(|r| &r.logprobs),
            entropies: join(|r| &r.entropies),
            log_norm: join(|r| &r.log_norm),
            mean_logit: join(|r| &r.mean_logit),
            block_log_norms: Tensor::cat(
                ranges.iter().map(|r| r.block_log_norms.clone()).collect(),
                1,
            ),
        }
    }
}

/// The gradients of a loss with respect to a range's scores, each `[rows, positions]`; a score
/// the loss does not use has none.
#[derive(Debug, Clone, Default)]
pub struct ScoreGradients {
    /// Of the log-probabilities.
    pub logprobs: Option<Tensor<2>>,
    /// Of the entropies.
    pub entropies: Option<Tensor<2>>,
}

/// The output head (bias and final soft-cap included) at a temperature.
pub struct OutputHead<'a> {
    model: &'a Gemma3ForConditionalGeneration,
    /// The head `[hidden, vocab]` and its bias, detached, for a head that records nothing;
    /// `None`: taken from the model at each block, so each block's graph is its own (a backward
    /// pass consumes the graph it walks, the tied embedding's transpose included).
    detached: Option<(Tensor<2>, Option<Tensor<1>>)>,
    inverse_temperature: f64,
}

impl<'a> OutputHead<'a> {
    /// `model`'s head, recording its products for a backward pass when `tracked` (and the head
    /// trains); logits are divided by `temperature`.
    pub fn new(model: &'a Gemma3ForConditionalGeneration, temperature: f32, tracked: bool) -> Self {
        Self {
            model,
            detached: (!tracked).then(|| {
                (
                    model.output_head().detach(),
                    model.output_bias().map(Tensor::detach),
                )
            }),
            inverse_temperature: 1.0 / temperature.max(1e-6) as f64,
        }
    }

    /// The head `[hidden, vocab]` and its bias.
    fn parts(&self) -> (Tensor<2>, Option<Tensor<1>>) {
        match &self.detached {
            Some((head, bias)) => (head.clone(), bias.clone()),
            None => (self.model.output_head(), self.model.output_bias()),
        }
    }

    /// Whether the head records products that lead to trained parameters.
    pub fn trains(&self) -> bool {
        let (head, bias) = self.parts();
        head.is_tracked() || bias.as_ref().is_some_and(Tensor::is_tracked)
    }

    /// The temperature-scaled logits `[rows, positions, vocab.len()]` of `normed`
    /// `[rows, positions, hidden]` (the final norm applied) over the entries `vocab`.
    pub fn logits(&self, normed: Tensor<3>, vocab: &Range<usize>) -> Tensor<3> {
        self.logits_of_input(self.input(normed), vocab)
    }

    /// Whether the model's head ends in a soft-cap `cap · tanh(z / cap)`.
    fn softcapped(&self) -> bool {
        self.model
            .config
            .text_config
            .final_logit_softcapping
            .is_some()
    }

    /// Whether the temperature scales the head's input rather than its logits: the same
    /// logits when the head has no bias and no final soft-cap, for one pass over the hidden
    /// states instead of one over every block of logits (and another in the backward pass).
    fn scales_input(&self) -> bool {
        !self.softcapped() && self.model.output_bias().is_none()
    }

    /// `normed` as the head's products take it: scaled by the temperature when
    /// [`Self::scales_input`].
    fn input(&self, normed: Tensor<3>) -> Tensor<3> {
        if self.inverse_temperature != 1.0 && self.scales_input() {
            normed * self.inverse_temperature
        } else {
            normed
        }
    }

    /// The temperature-scaled logits of a block of the head from an [`Self::input`].
    fn block_logits(
        &self,
        input: Tensor<3>,
        head: &Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Tensor<3> {
        let logits = self.model.logits_with_parts(input, head, bias);
        if self.inverse_temperature == 1.0 || self.scales_input() {
            logits
        } else {
            logits * self.inverse_temperature
        }
    }

    /// The temperature-scaled logits of `input` over the entries `vocab`.
    fn logits_of_input(&self, input: Tensor<3>, vocab: &Range<usize>) -> Tensor<3> {
        let (head, bias) = self.parts();
        let (head, bias) = block_parts(head, bias, vocab);
        self.block_logits(input, &head, bias)
    }

    /// The scores of `targets` `[rows, positions, 1]` from `normed` `[rows, positions, hidden]`,
    /// over the vocabulary in `blocks` (at least one, as [`HeadBlocks::plan`] makes; panics on
    /// none). Differentiable when `normed` or the head is tracked (the graph then keeps every
    /// block).
    pub fn scores(
        &self,
        normed: Tensor<3>,
        targets: &Tensor<3, Int>,
        blocks: &[Range<usize>],
    ) -> HeadScores {
        let input = self.input(normed);
        if let Some(scores) = self.scores_on_libtorch(&input, targets, blocks) {
            return scores;
        }
        self.scores_by_operations(input, targets, blocks)
    }

    /// [`Self::scores`] from an [`Self::input`] through burn's operations, on any backend.
    fn scores_by_operations(
        &self,
        input: Tensor<3>,
        targets: &Tensor<3, Int>,
        blocks: &[Range<usize>],
    ) -> HeadScores {
        let (mut log_norms, mut entropies) = (vec![], vec![]);
        let mut chosen: Option<Tensor<3>> = None;
        for vocab in blocks {
            let logits = self.logits_of_input(input.clone(), vocab);
            let target = chosen_logit(&logits, targets, vocab, blocks.len() == 1);
            chosen = Some(match chosen {
                Some(sum) => sum + target,
                None => target,
            });
            // The shift only steadies exp; its gradient cancels, so it is out of the graph.
            let max = logits.clone().max_dim(2).detach();
            let shifted = logits - max.clone();
            let weights = shifted.clone().exp();
            let total = weights.clone().sum_dim(2);
            let log_total = total.clone().log();
            // The block's entropy from the shifted logits, `log Σw - Σ w·(z - max) / Σw`: two
            // small terms, where `L_b - E_b[z]` would subtract two large ones.
            entropies.push(log_total.clone() - (weights * shifted).sum_dim(2) / total);
            log_norms.push(log_total + max);
        }
        merged(
            Tensor::cat(log_norms, 2),
            Tensor::cat(entropies, 2),
            chosen.expect("the vocabulary has at least one block"),
        )
    }

    /// Whether libtorch's kernels may take the head's passes ([`crate::fused::head`]): a head
    /// that records nothing, whose temperature scales its input (no bias, no soft-cap).
    fn fusable(&self) -> bool {
        cfg!(feature = "tch") && !self.trains() && self.scales_input()
    }

    /// [`Self::scores`] from an [`Self::input`] that records nothing, by libtorch's kernels;
    /// `None` off libtorch or when [`Self::fusable`] is not.
    fn scores_on_libtorch(
        &self,
        input: &Tensor<3>,
        targets: &Tensor<3, Int>,
        blocks: &[Range<usize>],
    ) -> Option<HeadScores> {
        if input.is_tracked() || !self.fusable() {
            return None;
        }
        #[cfg(feature = "tch")]
        {
            let (head, _) = self.parts();
            let statistics = crate::fused::head::block_statistics(
                &input.clone().inner(),
                &head.inner(),
                &targets.clone().inner(),
                blocks,
            )?;
            // Back on the caller's device kind: an autodiff pass goes on with these scores.
            let lift = |t: Tensor<3>| {
                if input.is_autodiff() { t.autodiff() } else { t }
            };
            Some(merged(
                lift(statistics.log_norms),
                lift(statistics.entropies),
                lift(statistics.chosen),
            ))
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = (targets, blocks);
            None
        }
    }

    /// Whether the gradient reaches no parameter of the head and passes through no soft-cap, so
    /// that [`Self::normed_gradient`] carries it through the head's product by hand.
    fn frozen(&self) -> bool {
        !self.trains() && !self.softcapped()
    }

    /// The gradient of a loss with respect to `normed` `[rows, positions, hidden]` (a tracked
    /// leaf), given the gradients `upstream` of the scores of `targets` at these positions and the
    /// forward pass's scores `forward` there; `on_block` receives each block's gradients when
    /// the head trains (the head's own among them). `None` when the loss uses no score here.
    pub fn normed_gradient(
        &self,
        normed: &Tensor<3>,
        targets: &Tensor<3, Int>,
        forward: &HeadScores,
        upstream: &ScoreGradients,
        blocks: &[Range<usize>],
        mut on_block: impl FnMut(Gradients),
    ) -> Option<Tensor<3>> {
        let factors = LogitGradient::new(forward, upstream)?;
        if self.frozen() {
            return Some(self.frozen_normed_gradient(normed, targets, &factors, blocks));
        }
        let trains = self.trains();
        let targets = targets.clone().inner();
        let mut total: Option<Tensor<3>> = None;
        for vocab in blocks {
            // Each block's backward pass consumes its graph, so each scales its own input.
            let logits = self.logits(normed.clone(), vocab);
            let mut weight = factors.spread(logits.clone().inner(), 1.0);
            if let Some(g_lp) = &factors.logprobs {
                let (index, inside) = block_index(&targets, vocab, blocks.len() == 1);
                let at_target = match inside {
                    Some(inside) => g_lp.clone() * inside,
                    None => g_lp.clone(),
                };
                weight = weight.scatter(2, index, at_target, IndexingUpdateOp::Add);
            }
            let mut grads = (logits * weight.autodiff()).sum().backward();
            if let Some(share) = normed.grad_remove(&mut grads) {
                total = Some(match total {
                    Some(sum) => sum + share,
                    None => share,
                });
            }
            if trains {
                on_block(grads);
            }
        }
        total
    }

    /// [`Self::normed_gradient`] for a [frozen](Self::frozen) head, outside autodiff: each
    /// block's logits' gradient times the transposed block, the product autodiff would run,
    /// without the passes its graph adds over every logit (a gradient of ones, its product
    /// with the weight, the temperature's rescale); the target's term `g_lp · onehot` reaches
    /// `normed` as `g_lp` times the target's column of the head, once for all blocks instead of
    /// a scatter into each.
    fn frozen_normed_gradient(
        &self,
        normed: &Tensor<3>,
        targets: &Tensor<3, Int>,
        factors: &LogitGradient,
        blocks: &[Range<usize>],
    ) -> Tensor<3> {
        let x = normed.clone().inner();
        let [rows, positions, hidden] = x.dims();
        let input = self.input(x.clone());
        let (head, bias) = self.parts();
        let (head, bias) = (head.inner(), bias.map(Tensor::inner));
        let scale = self.inverse_temperature;
        let target_term = factors.logprobs.as_ref().map(|g_lp| {
            let index = targets.clone().inner().reshape([rows * positions]);
            let columns = head.clone().transpose().select(0, index).cast(x.dtype());
            columns.reshape([rows, positions, hidden]) * (g_lp.clone() * scale)
        });
        let blocks_term = self
            .logprob_gradient_on_libtorch(&input, &head, factors, blocks)
            .unwrap_or_else(|| {
                self.blocks_gradient_by_operations(&input, head, bias, factors, blocks)
            });
        match target_term {
            Some(target) => target + blocks_term,
            None => blocks_term,
        }
    }

    /// The blocks' part of [`Self::frozen_normed_gradient`] (all but the target's term) from an
    /// [`Self::input`] through burn's operations, on any backend.
    fn blocks_gradient_by_operations(
        &self,
        input: &Tensor<3>,
        head: Tensor<2>,
        bias: Option<Tensor<1>>,
        factors: &LogitGradient,
        blocks: &[Range<usize>],
    ) -> Tensor<3> {
        let mut total: Option<Tensor<3>> = None;
        for vocab in blocks {
            let (block, block_bias) = block_parts(head.clone(), bias.clone(), vocab);
            let logits = self.block_logits(input.clone(), &block, block_bias);
            let weight = factors.spread(logits, self.inverse_temperature);
            let share = product(weight, block.transpose(), None);
            total = Some(match total {
                Some(sum) => sum + share,
                None => share,
            });
        }
        total.expect("the vocabulary has at least one block")
    }

    /// The blocks' part of [`Self::frozen_normed_gradient`] by libtorch's kernels, when the loss
    /// uses the log-probabilities alone and [`Self::fusable`]; `None` otherwise.
    fn logprob_gradient_on_libtorch(
        &self,
        input: &Tensor<3>,
        head: &Tensor<2>,
        factors: &LogitGradient,
        blocks: &[Range<usize>],
    ) -> Option<Tensor<3>> {
        if factors.entropies.is_some() || !self.fusable() {
            return None;
        }
        let g_lp = factors.logprobs.as_ref()?;
        #[cfg(feature = "tch")]
        {
            crate::fused::head::logprob_gradient(
                input,
                head,
                &factors.block_log_norms,
                &factors.log_norm,
                &(g_lp.clone() * -self.inverse_temperature),
                blocks,
            )
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = (input, head, g_lp, blocks);
            None
        }
    }
}

/// The columns `vocab` of the head `[hidden, vocab]` and the entries of its bias.
fn block_parts(
    head: Tensor<2>,
    bias: Option<Tensor<1>>,
    vocab: &Range<usize>,
) -> (Tensor<2>, Option<Tensor<1>>) {
    let [hidden, size] = head.dims();
    if *vocab == (0..size) {
        return (head, bias);
    }
    (
        head.slice([0..hidden, vocab.clone()]),
        bias.map(|b| b.slice([vocab.clone()])),
    )
}

/// The gradient of a loss with respect to the logits `z`, `g_lp (onehot - p) + g_H p (E[z] - z)`,
/// from its per-position factors `[rows, positions, 1]` (outside autodiff).
struct LogitGradient {
    log_norm: Tensor<3>,
    mean_logit: Tensor<3>,
    /// Each block's log-sum-exp, `[rows, positions, blocks]` (libtorch's backward pass rescales
    /// each block's own softmax by it).
    #[cfg_attr(not(feature = "tch"), allow(dead_code))]
    block_log_norms: Tensor<3>,
    logprobs: Option<Tensor<3>>,
    entropies: Option<Tensor<3>>,
}

impl LogitGradient {
    /// The factors from the forward pass's scores, or `None` when the loss uses neither score.
    fn new(forward: &HeadScores, upstream: &ScoreGradients) -> Option<Self> {
        let column = |t: &Tensor<2>| t.clone().inner().unsqueeze_dim::<3>(2);
        let factors = Self {
            log_norm: column(&forward.log_norm),
            mean_logit: column(&forward.mean_logit),
            block_log_norms: forward.block_log_norms.clone().inner(),
            logprobs: upstream.logprobs.as_ref().map(column),
            entropies: upstream.entropies.as_ref().map(column),
        };
        (factors.logprobs.is_some() || factors.entropies.is_some()).then_some(factors)
    }

    /// `scale` times the gradient of the block of logits `z` but for the target's term:
    /// `scale · p · (g_H (E[z] - z) - g_lp)`. The scale joins the per-position factors, not
    /// the block; `z` is consumed (overwritten where no one else holds it).
    fn spread(&self, z: Tensor<3>, scale: f64) -> Tensor<3> {
        match &self.entropies {
            None => {
                let g_lp = self.logprobs.as_ref().expect("a score is used");
                (z - self.log_norm.clone()).exp() * (g_lp.clone() * -scale)
            }
            Some(g_h) => {
                let p = (z.clone() - self.log_norm.clone()).exp();
                let g_h = g_h.clone() * scale;
                let mut offset = self.mean_logit.clone() * g_h.clone();
                if let Some(g_lp) = &self.logprobs {
                    offset = offset - g_lp.clone() * scale;
                }
                p * (offset - z * g_h)
            }
        }
    }
}

/// The logit of each target inside `vocab`, zero for targets outside it, `[rows, positions, 1]`.
fn chosen_logit(
    logits: &Tensor<3>,
    targets: &Tensor<3, Int>,
    vocab: &Range<usize>,
    whole: bool,
) -> Tensor<3> {
    let (index, inside) = block_index(targets, vocab, whole);
    let chosen = logits.clone().gather(2, index);
    match inside {
        Some(inside) => chosen * inside,
        None => chosen,
    }
}

/// `targets` as indices into the block `vocab` (clamped into it), and 1 where a target lies in
/// the block, 0 elsewhere (`None` when the block is the whole vocabulary).
fn block_index(
    targets: &Tensor<3, Int>,
    vocab: &Range<usize>,
    whole: bool,
) -> (Tensor<3, Int>, Option<Tensor<3>>) {
    if whole {
        return (targets.clone(), None);
    }
    let (start, end) = (vocab.start as i64, vocab.end as i64);
    let inside = targets
        .clone()
        .greater_equal_elem(start)
        .bool_and(targets.clone().lower_elem(end))
        .float();
    let index = (targets.clone() - start).clamp(0, end - start - 1);
    (index, Some(inside))
}

/// The scores from each block's log-sum-exp `L_b` and entropy `H_b` under its own softmax,
/// `[rows, positions, blocks]`, and the targets' logits `[rows, positions, 1]`. With each block's
/// share of the probability `π_b = exp(L_b - L)`, the entropy is `Σ π_b H_b - Σ π_b log π_b`
/// (within the blocks, then between them).
fn merged(log_norms: Tensor<3>, entropies: Tensor<3>, chosen: Tensor<3>) -> HeadScores {
    let [rows, positions, blocks] = log_norms.dims();
    let flat = |t: Tensor<3>| t.reshape([rows, positions]);
    let (log_norm, entropy) = if blocks == 1 {
        (log_norms.clone(), entropies)
    } else {
        // The shift only steadies exp; its gradient cancels, so it is out of the graph.
        let max = log_norms.clone().max_dim(2).detach();
        let log_norm = (log_norms.clone() - max.clone()).exp().sum_dim(2).log() + max;
        let log_shares = log_norms.clone() - log_norm.clone();
        let shares = log_shares.clone().exp();
        (log_norm, (shares * (entropies - log_shares)).sum_dim(2))
    };
    HeadScores {
        logprobs: flat(chosen - log_norm.clone()),
        entropies: flat(entropy.clone()),
        mean_logit: flat(log_norm.clone() - entropy),
        log_norm: flat(log_norm),
        block_log_norms: log_norms,
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Device, Distribution, TensorData};

    use super::*;
    use crate::device::{DeviceChoice, on_every_test_device};
    use crate::{Gemma3Config, ModelDtype};

    /// Whether `ranges` cut `0..total` into consecutive non-empty pieces.
    fn cut(ranges: &[Range<usize>], total: usize) -> bool {
        ranges.first().map(|r| r.start) == Some(0)
            && ranges.last().map(|r| r.end) == Some(total)
            && ranges.windows(2).all(|w| w[0].end == w[1].start)
            && ranges.iter().all(|r| !r.is_empty())
    }

    #[test]
    fn a_plan_covers_the_head_within_its_budget() {
        let gemma = 262_208;
        for (rows, positions, vocab, budget) in [
            (8, 128, gemma, BLOCK_ELEMENTS),
            (16, 128, gemma, BLOCK_ELEMENTS),
            (1, 1, gemma, BLOCK_ELEMENTS),
            (64, 512, gemma, BLOCK_ELEMENTS),
            (8, 128, 2048, BLOCK_ELEMENTS),
            (2, 5, 2048, 64),
            (2, 5, 2048, 1000),
            (2, 5, 2048, 12_288),
            (3, 7, 10, 1),
        ] {
            let plan = HeadBlocks::plan(rows, positions, vocab, budget);
            let case = format!("{rows} × {positions} × {vocab} in {budget}: {plan:?}");
            assert!(cut(&plan.positions, positions), "{case}");
            assert!(cut(&plan.vocab, vocab), "{case}");
            let widest = plan.vocab.iter().map(Range::len).max().unwrap();
            let tallest = plan.positions.iter().map(Range::len).max().unwrap();
            assert!(rows * tallest * widest <= budget || tallest == 1, "{case}");
            assert!(
                plan.vocab.len() <= vocab.div_ceil(MIN_VOCAB_BLOCK.min(budget)),
                "{case}"
            );
        }
        // MedGemma-4B: the scoring figure's 8 rows and GRPO's 16 read the head once a pass;
        // 64 rows of 512 tokens read it 16 times, a range of 32 positions at a time.
        let shape = |p: HeadBlocks| (p.positions.len(), p.vocab.len(), p.vocab[0].len());
        assert_eq!(
            shape(HeadBlocks::plan(8, 128, gemma, BLOCK_ELEMENTS)),
            (1, 17, 15_424)
        );
        assert_eq!(
            shape(HeadBlocks::plan(16, 128, gemma, BLOCK_ELEMENTS)),
            (1, 33, 7_946)
        );
        assert_eq!(
            shape(HeadBlocks::plan(64, 512, gemma, BLOCK_ELEMENTS)),
            (16, 33, 7_946)
        );
        // A small vocabulary is one block, as one position range when it fits.
        assert_eq!(
            shape(HeadBlocks::plan(8, 128, 2048, BLOCK_ELEMENTS)),
            (1, 1, 2048)
        );
    }

    /// A tiny model (its head soft-capped when `softcap`), hidden states `[2, 3, hidden]` and
    /// targets at the vocabulary's edges and the blocks' (`[2, 3, 1]`).
    fn head_inputs(
        device: &Device,
        softcap: Option<f64>,
    ) -> (Gemma3ForConditionalGeneration, Tensor<3>, Tensor<3, Int>) {
        let mut config = Gemma3Config::preset("tiny").unwrap();
        config.text_config.final_logit_softcapping = softcap;
        let model = Gemma3ForConditionalGeneration::seeded(&config, 4, device);
        let hidden = config.text_config.hidden_size;
        let vocab = config.text_config.vocab_size as i64;
        device.seed(9);
        let normed = Tensor::<3>::random([2, 3, hidden], Distribution::Normal(0.0, 3.0), device);
        let targets = Tensor::<3, Int>::from_data(
            TensorData::new(vec![0i64, 63, 64, 682, 683, vocab - 1], [2, 3, 1]),
            device,
        );
        (model, normed, targets)
    }

    /// The log-probabilities, entropies, log-sum-exps and mean logits of `targets` by burn's
    /// `log_softmax` over the whole vocabulary at once.
    fn reference(logits: Tensor<3>, targets: Tensor<3, Int>) -> [Tensor<2>; 4] {
        let [rows, positions, _] = logits.dims();
        let flat = |t: Tensor<3>| t.reshape([rows, positions]);
        let logp = log_softmax(logits.clone(), 2);
        let p = logp.clone().exp();
        let log_norm = logits.clone() - logp.clone();
        [
            flat(logp.clone().gather(2, targets)),
            flat((p.clone() * logp).sum_dim(2).neg()),
            flat(log_norm.slice_dim(2, 0..1)),
            flat((p * logits).sum_dim(2)),
        ]
    }

    fn largest_difference(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn blocked_scores_match_the_whole_log_softmax() {
        on_every_test_device(|choice, device| {
            for softcap in [None, Some(2.0)] {
                let (model, normed, targets) = head_inputs(device, softcap);
                let head = OutputHead::new(&model, 0.7, false);
                let vocab = model.output_head().dims()[1];
                let expected = reference(head.logits(normed.clone(), &(0..vocab)), targets.clone());
                for budget in [BLOCK_ELEMENTS, 64, 1000] {
                    let blocks = HeadBlocks::plan(2, 3, vocab, budget).vocab;
                    let got = head.scores(normed.clone(), &targets, &blocks);
                    let got = [got.logprobs, got.entropies, got.log_norm, got.mean_logit];
                    for (name, (g, e)) in ["log-prob", "entropy", "log-sum-exp", "mean logit"]
                        .iter()
                        .zip(got.into_iter().zip(expected.clone()))
                    {
                        let diff = largest_difference(g, e);
                        assert!(
                            diff < 2e-5,
                            "{choice} {softcap:?} {budget}: {name} off by {diff}"
                        );
                    }
                }
            }
        });
    }

    #[test]
    fn the_blocked_gradient_is_the_gradient_through_the_whole_log_softmax() {
        on_every_test_device(|choice, device| {
            let ad = device.clone().autodiff();
            // A head that trains takes each block from the model afresh, through autodiff; a
            // frozen one without a soft-cap has its gradient carried by hand; a frozen one with a
            // soft-cap goes through autodiff again.
            for (softcap, trains) in [
                (None, true),
                (Some(2.0), true),
                (None, false),
                (Some(2.0), false),
            ] {
                let (model, normed, targets) = head_inputs(device, softcap);
                let model = model.to_device(&ad);
                let model = if trains { model.train() } else { model };
                let head = OutputHead::new(&model, 0.7, true);
                assert_eq!(head.trains(), trains, "{choice}");
                assert_eq!(head.frozen(), !trains && softcap.is_none(), "{choice}");
                let vocab = model.output_head().dims()[1];
                let normed = Tensor::<3>::from_data(normed.into_data(), &ad).require_grad();
                let targets = Tensor::<3, Int>::from_data(targets.into_data(), &ad);
                let weights = |seed| {
                    device.seed(seed);
                    Tensor::<2>::random([2, 3], Distribution::Normal(0.0, 1.0), device)
                };
                let (g_lp, g_h) = (weights(1), weights(2));
                for (use_lp, use_h) in [(true, true), (true, false), (false, true)] {
                    let [lp, h, _, _] =
                        reference(head.logits(normed.clone(), &(0..vocab)), targets.clone());
                    let mut loss = None;
                    if use_lp {
                        loss = Some((lp * g_lp.clone().autodiff()).sum());
                    }
                    if use_h {
                        let term = (h * g_h.clone().autodiff()).sum();
                        loss = Some(match loss {
                            Some(l) => l + term,
                            None => term,
                        });
                    }
                    let mut grads = loss.unwrap().backward();
                    let expected = normed.grad_remove(&mut grads).unwrap();
                    let scale = expected.clone().abs().max().into_scalar::<f32>();
                    let upstream = ScoreGradients {
                        logprobs: use_lp.then(|| g_lp.clone()),
                        entropies: use_h.then(|| g_h.clone()),
                    };
                    for budget in [BLOCK_ELEMENTS, 64, 1000] {
                        let blocks = HeadBlocks::plan(2, 3, vocab, budget).vocab;
                        let stats = head.scores(normed.clone().detach(), &targets, &blocks);
                        let mut calls = 0;
                        let got = head
                            .normed_gradient(&normed, &targets, &stats, &upstream, &blocks, |_| {
                                calls += 1
                            })
                            .unwrap();
                        assert_eq!(calls, if trains { blocks.len() } else { 0 });
                        let diff = (got - expected.clone()).abs().max().into_scalar::<f32>();
                        assert!(
                            diff <= 1e-5 * scale.max(1.0),
                            "{choice} {softcap:?} trains {trains} lp {use_lp} entropy {use_h} \
                             {budget}: off by {diff} (largest {scale})"
                        );
                    }
                }
                // No score used, no gradient.
                let stats = head.scores(
                    normed.clone().detach(),
                    &targets,
                    &HeadBlocks::plan(2, 3, vocab, BLOCK_ELEMENTS).vocab,
                );
                let none = head.normed_gradient(
                    &normed,
                    &targets,
                    &stats,
                    &ScoreGradients::default(),
                    &HeadBlocks::plan(2, 3, vocab, BLOCK_ELEMENTS).vocab,
                    |_| {},
                );
                assert!(none.is_none(), "{choice}");
            }
        });
    }
    /// The largest difference relative to the largest magnitude of `expected`.
    fn relative_difference<const D: usize>(got: Tensor<D>, expected: Tensor<D>) -> f32 {
        let scale = expected.clone().abs().max().into_scalar::<f32>().max(1e-12);
        (got - expected).abs().max().into_scalar::<f32>() / scale
    }

    #[test]
    fn libtorch_kernels_take_a_frozen_heads_passes_as_burns_operations_do() {
        on_every_test_device(|choice, device| {
            let on_libtorch = matches!(choice, DeviceChoice::TchCpu | DeviceChoice::TchCuda(_));
            let (model, normed, targets) = head_inputs(device, None);
            let exact = OutputHead::new(&model, 0.7, false);
            device.seed(3);
            let g_lp = Tensor::<2>::random([2, 3], Distribution::Normal(0.0, 1.0), device);
            for dtype in [ModelDtype::F32, ModelDtype::Bf16] {
                if dtype.ensure_supported(device).is_err() {
                    continue;
                }
                let model = model.clone().with_dtype(dtype);
                let head = OutputHead::new(&model, 0.7, false);
                let (weights, bias) = head.parts();
                let input = head.input(normed.clone());
                let vocab = weights.dims()[1];
                for budget in [BLOCK_ELEMENTS, 64, 1000] {
                    let blocks = HeadBlocks::plan(2, 3, vocab, budget).vocab;
                    let case = format!("{choice} {dtype} {} blocks", blocks.len());
                    let fused = head.scores_on_libtorch(&input, &targets, &blocks);
                    assert_eq!(fused.is_some(), on_libtorch, "{case}");
                    let Some(fused) = fused else { continue };
                    // The same bf16 logits either way: only f32's rounding apart.
                    let expected = head.scores_by_operations(input.clone(), &targets, &blocks);
                    let pairs = [
                        ("log-prob", fused.logprobs, expected.logprobs.clone()),
                        ("entropy", fused.entropies, expected.entropies.clone()),
                        ("log-sum-exp", fused.log_norm, expected.log_norm.clone()),
                        ("mean logit", fused.mean_logit, expected.mean_logit.clone()),
                    ];
                    for (name, got, want) in pairs {
                        let diff = largest_difference(got, want);
                        assert!(diff < 2e-5, "{case}: {name} off by {diff}");
                    }
                    let diff = largest_difference(
                        fused.block_log_norms.flatten(0, 1),
                        expected.block_log_norms.clone().flatten(0, 1),
                    );
                    assert!(diff < 2e-5, "{case}: blocks' log-sum-exps off by {diff}");

                    let upstream = ScoreGradients {
                        logprobs: Some(g_lp.clone()),
                        entropies: None,
                    };
                    let factors = LogitGradient::new(&expected, &upstream).unwrap();
                    let got = head
                        .logprob_gradient_on_libtorch(&input, &weights, &factors, &blocks)
                        .expect("a frozen head's gradient runs on libtorch");
                    let by_operations = head.blocks_gradient_by_operations(
                        &input,
                        weights.clone(),
                        bias.clone(),
                        &factors,
                        &blocks,
                    );
                    let (exact_weights, exact_bias) = exact.parts();
                    let reference = exact.blocks_gradient_by_operations(
                        &exact.input(normed.clone()),
                        exact_weights,
                        exact_bias,
                        &factors,
                        &blocks,
                    );
                    let error = relative_difference(got, reference.clone());
                    let error_of_operations = relative_difference(by_operations, reference);
                    // f32: burn's path to f32's rounding. bf16: within bf16's rounding of the f32
                    // model's gradient, as burn's own bf16 path is (each rounds the softmax and
                    // the product once, in other places).
                    let bound = match dtype {
                        ModelDtype::F32 => 1e-5,
                        ModelDtype::Bf16 => 2.0 * error_of_operations.max(2f32.powi(-9)),
                    };
                    assert!(
                        error <= bound,
                        "{case}: gradient off by {error} of the largest (burn's path: \
                         {error_of_operations})"
                    );
                    // An entropy term takes burn's path.
                    let upstream = ScoreGradients {
                        logprobs: Some(g_lp.clone()),
                        entropies: Some(g_lp.clone()),
                    };
                    let factors = LogitGradient::new(&expected, &upstream).unwrap();
                    assert!(
                        head.logprob_gradient_on_libtorch(&input, &weights, &factors, &blocks)
                            .is_none(),
                        "{case}"
                    );
                }
            }
        });
    }
}
