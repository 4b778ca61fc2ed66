//! The backend operations the model leans on keep burn's contract on every backend under test.
//!
//! burn-tch 0.22.1 handed burn's attention mask (true = forbidden) to LibTorch, whose boolean
//! mask means the opposite, and dropped the soft-cap: every non-autodiff forward on libtorch
//! (generation, validation, the GRPO reference) attended to exactly the wrong keys while
//! training, which runs burn's reference attention under autodiff, looked fine. The vendored
//! patch in `vendor/burn-tch` fixes it; this test pins the contract so that no backend can drift
//! from burn's reference implementation again. The same copy passes a weight shared by every
//! batch to LibTorch as a matrix (no copy per batch); a test holds those products and their
//! gradients to the batch-by-batch ones.

use burn::tensor::module::{attention, attention_fallback};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use chex_model::device::on_every_test_device;

/// A seeded pseudo-random tensor built on the host, so that every backend sees the same values.
fn host_tensor(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Causal with two padding keys in the second row and one extra forbidden key, so that masked
/// and unmasked positions are mixed in every row and no row is fully masked.
fn mixed_mask(batch: usize, heads: usize, q: usize, k: usize, device: &Device) -> Tensor<4, Bool> {
    let mut forbidden = Vec::with_capacity(batch * heads * q * k);
    for b in 0..batch {
        for _ in 0..heads {
            for qi in 0..q {
                let query_slot = k - q + qi;
                for ki in 0..k {
                    let padding = b == 1 && ki < 2 && query_slot >= 2;
                    forbidden.push(ki > query_slot || padding || (ki == 3 && qi == q - 1));
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(forbidden, [batch, heads, q, k]), device)
}

fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn fused_attention_equals_burns_reference_with_masks_and_soft_caps() {
    on_every_test_device(|choice, device| {
        let (batch, heads, q_len, k_len, dim) = (2, 3, 5, 7, 8);
        let q = host_tensor([batch, heads, q_len, dim], 1, device);
        let k = host_tensor([batch, heads, k_len, dim], 2, device);
        let v = host_tensor([batch, heads, k_len, dim], 3, device);
        let mask = mixed_mask(batch, heads, q_len, k_len, device);
        for softcap in [None, Some(2.0)] {
            let options = AttentionModuleOptions {
                scale: Some(0.3),
                softcap,
                is_causal: false,
            };
            type Attention = fn(
                Tensor<4>,
                Tensor<4>,
                Tensor<4>,
                Option<Tensor<4, Bool>>,
                Option<Tensor<4>>,
                AttentionModuleOptions,
            ) -> Tensor<4>;
            let ways: [Attention; 2] = [attention, attention_fallback];
            let [fused, reference] = ways.map(|way| {
                way(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    Some(mask.clone()),
                    None,
                    options,
                )
            });
            let diff = max_abs_diff(fused, reference);
            assert!(
                diff < 1e-5,
                "{choice}: attention with softcap {softcap:?} differs from burn's reference by {diff}"
            );
        }
    });
}

#[test]
fn a_masked_key_changes_nothing_and_an_allowed_one_does() {
    // Independent of burn's reference: perturbing a forbidden key's value must leave the output
    // alone, and perturbing an allowed one must move it.
    on_every_test_device(|choice, device| {
        let q = host_tensor([1, 1, 1, 4], 4, device);
        let k = host_tensor([1, 1, 3, 4], 5, device);
        let v = host_tensor([1, 1, 3, 4], 6, device);
        let forbid_last = Tensor::<4, Bool>::from_data(
            TensorData::new(vec![false, false, true], [1, 1, 1, 3]),
            device,
        );
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        let run = |v: Tensor<4>| {
            attention(
                q.clone(),
                k.clone(),
                v,
                Some(forbid_last.clone()),
                None,
                options,
            )
        };
        let base = run(v.clone());
        let bump = |slot: usize| {
            let mut host = vec![0.0f32; 12];
            host[slot * 4..slot * 4 + 4].fill(10.0);
            v.clone() + Tensor::from_data(TensorData::new(host, [1, 1, 3, 4]), device)
        };
        assert!(
            max_abs_diff(run(bump(2)), base.clone()) < 1e-6,
            "{choice}: a forbidden key leaked into the output"
        );
        assert!(
            max_abs_diff(run(bump(0)), base) > 1e-3,
            "{choice}: an allowed key was ignored"
        );
    });
}

#[test]
fn a_weight_shared_by_every_batch_multiplies_each_batch_and_takes_their_gradients() {
    // burn's `linear` keeps the batched form when the rows fill its tiles (a multiple of 32) and
    // hands the backend the weight as `[1, .., 1, k, n]`; the vendored burn-tch passes such an
    // operand to LibTorch as a matrix (so that no copy per batch is made). Each batch's product
    // must still be that batch times the weight, forward and backward, on every backend.
    on_every_test_device(|choice, device| {
        let (batches, heads, rows, k, n) = (3, 2, 32, 5, 7);
        let x = host_tensor([batches, heads, rows, k], 7, device);
        let weight = host_tensor([1, 1, k, n], 8, device).reshape([k, n]);
        let shared = burn::tensor::module::linear(x.clone(), weight.clone(), None);
        assert_eq!(shared.dims(), [batches, heads, rows, n], "{choice}");
        let mut largest = 0.0f32;
        for b in 0..batches {
            for h in 0..heads {
                let slice = |t: Tensor<4>, width: usize| {
                    t.slice([b..b + 1, h..h + 1, 0..rows, 0..width])
                        .reshape([rows, width])
                };
                let expected = slice(x.clone(), k).matmul(weight.clone());
                let got = slice(shared.clone(), n);
                largest = largest.max((got - expected).abs().max().into_scalar::<f32>());
            }
        }
        assert!(
            largest < 1e-5,
            "{choice}: shared-weight product off by {largest}"
        );

        // Gradients: of the input through the shared weight, and of the weight summed over the
        // batches, against the same product with the batches folded into rows by hand.
        let autodiff = device.clone().autodiff();
        let leaf = |t: Tensor<4>| Tensor::<4>::from_data(t.into_data(), &autodiff).require_grad();
        let (x3, w3) = (leaf(x.clone()), leaf(weight.clone().reshape([1, 1, k, n])));
        let upstream = host_tensor([batches, heads, rows, n], 9, &autodiff);
        let grads = (burn::tensor::module::linear(x3.clone(), w3.clone().reshape([k, n]), None)
            * upstream.clone())
        .sum()
        .backward();
        let (x2, w2) = (leaf(x.clone()), leaf(weight.clone().reshape([1, 1, k, n])));
        let folded = x2
            .clone()
            .reshape([batches * heads * rows, k])
            .matmul(w2.clone().reshape([k, n]));
        let grads_folded = (folded * upstream.reshape([batches * heads * rows, n]))
            .sum()
            .backward();
        let gap = |a: Option<Tensor<4>>, b: Option<Tensor<4>>, what: &str| {
            let (a, b) = (a.expect(what), b.expect(what));
            let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
            (a - b).abs().max().into_scalar::<f32>() / scale
        };
        let input_gap = gap(x3.grad(&grads), x2.grad(&grads_folded), "input gradient");
        let weight_gap = gap(w3.grad(&grads), w2.grad(&grads_folded), "weight gradient");
        assert!(
            input_gap < 1e-5 && weight_gap < 1e-5,
            "{choice}: gradients through a shared weight off by {input_gap} (input), {weight_gap} (weight)"
        );
    });
}
