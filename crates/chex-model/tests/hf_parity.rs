//! Parity with Hugging Face `transformers`: the fixture in `fixtures/gemma3_tiny` was written by
//! `scripts/make_model_fixture.py` from a random `Gemma3ForConditionalGeneration`. We load the
//! same checkpoint through our import path and must reproduce its logits and its greedy
//! continuation, with and without the key/value cache, on every backend under test
//! (`chex_model::device::test_devices`).

mod common;

use common::fixture;

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use chex_model::checkpoint::{from_pretrained, from_pretrained_in};
use chex_model::device::on_every_test_device;
use chex_model::generation::{GenerationConfig, generate};
use chex_model::prompt::{EncodedPrompt, encode_prompt, left_pad};
use chex_model::vlm::{ImageInputs, token_tensor};
use chex_model::{ChexTokenizer, Gemma3ForConditionalGeneration, ModelDtype};
use serde_json::Value;

fn expected_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
        .unwrap()
}

fn expected_tensor(name: &str) -> (Vec<f32>, Vec<usize>) {
    fixture_tensor("expected.safetensors", name)
}

fn fixture_tensor(file: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(fixture().join(file)).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(name).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, view.shape().to_vec())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn pixels(device: &Device) -> Tensor<4> {
    let (values, shape) = expected_tensor("pixel_values");
    Tensor::from_data(
        TensorData::new(values, [shape[0], shape[1], shape[2], shape[3]]),
        device,
    )
}

struct Setup {
    model: Gemma3ForConditionalGeneration,
    prompts: Vec<EncodedPrompt>,
    device: Device,
}

fn on_every_backend(check: impl Fn(Setup)) {
    on_every_test_device(|_, device| check(setup(device.clone())));
}

fn setup(device: Device) -> Setup {
    setup_in(device, ModelDtype::F32)
}

fn setup_in(device: Device, dtype: ModelDtype) -> Setup {
    let model = from_pretrained_in(&fixture(), dtype, &device).unwrap();
    let tokenizer = ChexTokenizer::from_file(&fixture().join("tokenizer.json")).unwrap();
    tokenizer.check_against(&model.config).unwrap();
    let expected = expected_json();
    let questions = [
        "Findings?",
        "List the CheXpert findings of this chest X-ray.",
    ];
    let prompts: Vec<EncodedPrompt> = questions
        .iter()
        .map(|q| encode_prompt(&tokenizer, q, model.config.mm_tokens_per_image).unwrap())
        .collect();
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(
            p.ids,
            ids(&expected["input_ids"][i]),
            "prompt {i} tokenizes as transformers does"
        );
    }
    Setup {
        model,
        prompts,
        device,
    }
}

fn max_abs_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn prompt_logits(s: &Setup, row: usize) -> Vec<f32> {
    let p = &s.prompts[row];
    let (ids, width, layout) = left_pad(&[&p.ids], std::slice::from_ref(&p.image_block), 0);
    let images = s
        .model
        .encode_images(pixels(&s.device).narrow(0, row, 1))
        .unwrap();
    let image_of_row = [0];
    let logits = s.model.forward(
        token_tensor(&ids, 1, width, &s.device),
        &layout,
        Some(ImageInputs {
            features: &images,
            image_of_row: &image_of_row,
        }),
    );
    logits.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn logits_match_transformers() {
    on_every_backend(|s| {
        for row in 0..2 {
            let (theirs, shape) = expected_tensor(&format!("logits_{row}"));
            let ours = prompt_logits(&s, row);
            let diff = max_abs_diff(&ours, &theirs);
            println!("prompt {row}: {shape:?} logits, max |Δ| = {diff:e}");
            assert!(diff <= 1e-4, "prompt {row}: max |Δlogit| {diff} > 1e-4");
        }
    });
}

fn mean_abs_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / ours.len() as f32
}

/// bf16 rounds every weight and product, so no tolerance fits every model; what a bf16 run
/// may differ by is measured on the reference itself. transformers in bf16 (every activation
/// in bf16) moves the logits by `own` from its f32 logits. Ours keeps the residual stream,
/// norms and softmax in f32, so it must land no further from the f32 logits than that, and,
/// by the triangle inequality, within twice that of transformers' bf16 logits. And it must
/// move at all: the f32 path agrees to 1e-4, so a bf16 path that silently ran in f32 fails.
#[test]
fn bf16_logits_match_transformers_in_bf16() {
    on_every_test_device(|choice, device| {
        if !device.supports_dtype(FloatDType::BF16) {
            let err = ModelDtype::Bf16.ensure_supported(device).unwrap_err();
            assert!(err.to_string().contains("\"f32\""), "{choice}: {err}");
            return;
        }
        let s = setup_in(device.clone(), ModelDtype::Bf16);
        assert_eq!(s.model.dtype(), ModelDtype::Bf16);
        let head = s.model.output_head();
        assert_eq!(head.dtype(), DType::BF16, "the tied head is bf16");
        let norm = s.model.model.language_model.norm.weight.val();
        assert_eq!(norm.dtype(), DType::F32, "norms stay f32");
        for row in 0..2 {
            let ours = prompt_logits(&s, row);
            let (bf16, _) =
                fixture_tensor("expected_bf16.safetensors", &format!("logits_{row}_bf16"));
            let (f32, _) =
                fixture_tensor("expected_bf16.safetensors", &format!("logits_{row}_f32"));
            let own = max_abs_diff(&bf16, &f32);
            let (to_f32, to_bf16) = (max_abs_diff(&ours, &f32), max_abs_diff(&ours, &bf16));
            println!(
                "{choice} prompt {row}: transformers bf16 vs f32 max {own:.4} mean {:.5}; ours bf16 \
                 vs f32 max {to_f32:.4} mean {:.5}; vs transformers bf16 max {to_bf16:.4} mean {:.5}",
                mean_abs_diff(&bf16, &f32),
                mean_abs_diff(&ours, &f32),
                mean_abs_diff(&ours, &bf16),
            );
            assert!(
                to_f32 <= own,
                "prompt {row}: {to_f32} from f32, transformers' bf16 {own}"
            );
            assert!(
                to_bf16 <= 2.0 * own,
                "prompt {row}: {to_bf16} from transformers' bf16"
            );
            assert!(
                to_f32 > 1e-3,
                "prompt {row}: bf16 logits equal f32 ones ({to_f32})"
            );
        }
    });
}

#[test]
fn greedy_continuation_matches_transformers_with_and_without_cache() {
    on_every_backend(|s| {
        let expected = expected_json();
        let want: Vec<Vec<u32>> = (0..2).map(|i| ids(&expected["greedy"][i])).collect();
        for use_cache in [true, false] {
            let config = GenerationConfig {
                use_cache,
                ..GenerationConfig::greedy(20)
            };
            let out = generate(
                &s.model,
                &s.prompts,
                Some(pixels(&s.device)),
                &config,
                &s.device,
            )
            .unwrap();
            let got: Vec<Vec<u32>> = out.iter().map(|c| c.tokens.clone()).collect();
            assert_eq!(got, want, "greedy continuation (cache: {use_cache})");
        }
    });
}

#[test]
fn uncached_forward_of_a_padded_batch_equals_single_rows() {
    // The left-padded batch must give each row the logits it gets alone.
    on_every_backend(|s| {
        let rows: Vec<&[u32]> = s.prompts.iter().map(|p| p.ids.as_slice()).collect();
        let blocks: Vec<_> = s.prompts.iter().map(|p| p.image_block.clone()).collect();
        let (ids, width, layout) = left_pad(&rows, &blocks, 0);
        let images = s.model.encode_images(pixels(&s.device)).unwrap();
        let image_of_row = [0, 1];
        let logits = s.model.forward(
            token_tensor(&ids, 2, width, &s.device),
            &layout,
            Some(ImageInputs {
                features: &images,
                image_of_row: &image_of_row,
            }),
        );
        let vocab = s.model.config.text_config.vocab_size;
        let short = s.prompts[0].ids.len();
        let padded = logits
            .slice([0..1, width - short..width, 0..vocab])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let alone = prompt_logits(&s, 0);
        assert!(max_abs_diff(&padded, &alone) < 1e-4);
    });
}

#[test]
fn peft_adapter_reproduces_transformers_and_round_trips() {
    on_every_backend(|s| {
        let (model, config) =
            chex_model::lora::load_adapter(s.model, &fixture().join("adapter"), &s.device).unwrap();
        assert_eq!(config.rank, 4);
        let with_adapter = Setup {
            model,
            prompts: s.prompts,
            device: s.device,
        };
        let (theirs, _) = expected_tensor("logits_0_lora");
        let ours = prompt_logits(&with_adapter, 0);
        let diff = max_abs_diff(&ours, &theirs);
        println!("LoRA logits max |Δ| = {diff:e}");
        assert!(diff <= 1e-4, "with the PEFT adapter: max |Δlogit| {diff}");

        // Saved in PEFT's layout and loaded onto a fresh base, the adapter gives the same logits.
        let dir = tempfile::tempdir().unwrap();
        chex_model::lora::save_adapter(&with_adapter.model, &config, dir.path()).unwrap();
        let base = from_pretrained(&fixture(), &with_adapter.device).unwrap();
        let (reloaded, _) =
            chex_model::lora::load_adapter(base, dir.path(), &with_adapter.device).unwrap();
        let again = Setup {
            model: reloaded,
            prompts: with_adapter.prompts.clone(),
            device: with_adapter.device.clone(),
        };
        assert!(max_abs_diff(&prompt_logits(&again, 0), &ours) < 1e-6);

        // Merged into the base weights, it still gives the same logits.
        let merged = Setup {
            model: chex_model::lora::merge_lora(again.model, &again.device),
            prompts: again.prompts,
            device: again.device,
        };
        assert!(max_abs_diff(&prompt_logits(&merged, 0), &ours) < 1e-4);
    });
}
