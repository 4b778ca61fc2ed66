//! The frozen output head's two passes over a block of the vocabulary in libtorch's own
//! kernels. burn's operations take a block's logits through a dozen element-wise calls, each a
//! pass over `[positions, block]` values (the widening to f32, the maximum, the shift, the
//! exponential, two sums, a product for the mean logit), and the backward pass through six
//! more. Here the forward pass is the product, one `log_softmax` (with its widening) and, for
//! the entropy, an exponential, a product and a sum; the backward pass is the product, one
//! `softmax` in the product's dtype and the gradient's product, scaled per position. Only
//! a head that records nothing and has neither bias nor soft-cap takes these paths (LoRA on
//! Gemma 3): [`crate::head`] falls back to burn's operations otherwise.

use std::ops::Range;

use burn::tensor::{Int, Tensor};
use tch::{Kind, Tensor as Th};

use super::weights::{handle, narrowed, widened, wrap};

/// Per-block statistics of the logits `z = input · head[:, block]`, each `[rows, positions, _]`.
pub(crate) struct BlockStatistics {
    /// The log-sum-exp of each block, `[.., blocks]` (f32).
    pub log_norms: Tensor<3>,
    /// The entropy of each block's own softmax, `[.., blocks]` (f32).
    pub entropies: Tensor<3>,
    /// The logit of each position's target, `[.., 1]` (f32).
    pub chosen: Tensor<3>,
}

/// The [`BlockStatistics`] of `input` `[rows, positions, hidden]` against the head `[hidden,
/// vocab]` over `blocks`, for targets `[rows, positions, 1]`; `None` unless all are libtorch
/// tensors outside autodiff. The products run in the head's dtype, the statistics in f32.
pub(crate) fn block_statistics(
    input: &Tensor<3>,
    head: &Tensor<2>,
    targets: &Tensor<3, Int>,
    blocks: &[Range<usize>],
) -> Option<BlockStatistics> {
    let [rows, positions, _] = input.dims();
    let count = blocks.len() as i64;
    let head = handle(head.clone())?;
    let x = product_rows(&handle(input.clone())?, head.kind());
    let targets = handle(targets.clone())?.reshape([-1, 1]);
    let (index, inside) = block_indices(&targets, blocks);
    let (mut firsts, mut first_logprobs, mut dots, mut chosen) = (vec![], vec![], vec![], vec![]);
    for (b, vocab) in blocks.iter().enumerate() {
        let z = x.mm(&columns(&head, vocab));
        chosen.push(z.gather(1, &index.narrow(1, b as i64, 1), false));
        let logp = z.log_softmax(-1, Kind::Float);
        // `p · log p` summed is the block's negative entropy. (A batched dot product would read
        // both once and write nothing, but MKL's runs ten times f32's rounding on the CPU.)
        let mut p = logp.exp();
        let _ = p.g_mul_(&logp);
        dots.push(p.sum_dim_intlist(1, true, Kind::Float));
        // The block's log-sum-exp is any logit less its log-probability.
        firsts.push(z.narrow(1, 0, 1));
        first_logprobs.push(logp.narrow(1, 0, 1));
    }
    let log_norms = widened(&Th::cat(&firsts, 1)) - Th::cat(&first_logprobs, 1);
    let entropies = -Th::cat(&dots, 1);
    let chosen = (widened(&Th::cat(&chosen, 1)) * inside).sum_dim_intlist(1, true, Kind::Float);
    let shape = |last: i64| [rows as i64, positions as i64, last];
    Some(BlockStatistics {
        log_norms: wrap(log_norms.reshape(shape(count))),
        entropies: wrap(entropies.reshape(shape(count))),
        chosen: wrap(chosen.reshape(shape(1))),
    })
}

/// `Σ_blocks factor_b · softmax(z_b) · head[:, b]ᵀ`, the gradient of `input` `[rows, positions,
/// hidden]` through the head's products when the logits' gradient is `p · factor` with
/// `p = exp(z - L)` (the log-probabilities' term but for the target's one-hot, which the caller
/// adds): `factor_b = exp(L_b - L) · factor` rescales each block's own softmax. `log_norms`
/// `[.., blocks]` and `log_norm` `[.., 1]` come from the forward pass, `factor` `[.., 1]` from
/// the loss. Summed in f32, returned in `input`'s dtype; `None` unless all are libtorch tensors
/// outside autodiff.
pub(crate) fn logprob_gradient(
    input: &Tensor<3>,
    head: &Tensor<2>,
    log_norms: &Tensor<3>,
    log_norm: &Tensor<3>,
    factor: &Tensor<3>,
    blocks: &[Range<usize>],
) -> Option<Tensor<3>> {
    let input = handle(input.clone())?;
    let head = handle(head.clone())?;
    let x = product_rows(&input, head.kind());
    let column = |t: &Tensor<3>| handle(t.clone()).map(|t| t.reshape([-1, 1]));
    let (log_norm, factor) = (column(log_norm)?, column(factor)?);
    let log_norms = handle(log_norms.clone())?.reshape([-1, blocks.len() as i64]);
    // One scale per position and block, in f32. It scales rows, so it applies to each block's
    // product `softmax(z_b) · head_bᵀ` (`[positions, hidden]`) rather than to the softmax
    // (`[positions, block]`): no pass over the block of its own, and no rounding more than
    // burn's path makes (the softmax's and the product's).
    let scales = (log_norms - log_norm).exp() * factor;
    let mut total: Option<Th> = None;
    for (b, vocab) in blocks.iter().enumerate() {
        let block = columns(&head, vocab);
        let share = x.mm(&block).softmax(-1, None::<Kind>).mm(&block.tr());
        let scale = scales.narrow(1, b as i64, 1);
        total = Some(match total {
            Some(mut sum) => {
                let _ = sum.addcmul_(&share, &scale);
                sum
            }
            None => widened(&share) * scale,
        });
    }
    Some(wrap(narrowed(&total?, input.kind()).reshape(input.size())))
}

/// `input` `[rows, positions, hidden]` as the products' rows `[rows · positions, hidden]` in
/// `kind`.
fn product_rows(input: &Th, kind: Kind) -> Th {
    let hidden = input.size().last().copied().unwrap_or(1);
    narrowed(&input.reshape([-1, hidden]), kind)
}

/// The columns `vocab` of the head `[hidden, vocab]`, a view.
fn columns(head: &Th, vocab: &Range<usize>) -> Th {
    head.narrow(1, vocab.start as i64, vocab.len() as i64)
}

/// Each target `[n, 1]` as an index into each block (clamped into it), `[n, blocks]`, and 1.0
/// where the target lies in the block, 0.0 elsewhere, `[n, blocks]`.
fn block_indices(targets: &Th, blocks: &[Range<usize>]) -> (Th, Th) {
    let device = targets.device();
    let bound = |f: fn(&Range<usize>) -> usize| {
        let values: Vec<i64> = blocks.iter().map(|b| f(b) as i64).collect();
        Th::from_slice(&values).to_device(device).reshape([1, -1])
    };
    let (starts, ends) = (bound(|b| b.start), bound(|b| b.end));
    let offsets = targets - &starts;
    let index = offsets
        .clamp_min(0)
        .minimum(&(&ends - &starts - 1))
        .to_kind(Kind::Int64);
    let inside = targets
        .ge_tensor(&starts)
        .logical_and(&targets.lt_tensor(&ends))
        .to_kind(Kind::Float);
    (index, inside)
}
