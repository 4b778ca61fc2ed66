//! Behaviour the parity fixture does not cover: sampled generation (seeded, cache equals
//! recompute), scoring agreeing with the sampler's log-probs, LoRA training only adapters, our
//! own checkpoints round-tripping, and clear errors for bad checkpoints; each on every backend
//! under test (`chex_model::device::test_devices`).

mod common;

use common::fixture;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Distribution, FloatDType, Tensor};
use chex_model::checkpoint::{from_pretrained, save_pretrained};
use chex_model::checkpointing::{
    score_for_training, score_for_training_in_blocks, with_fused_training,
};
use chex_model::device::{DeviceChoice, on_every_test_device};
use chex_model::generation::{Completion, GenerationConfig, generate};
use chex_model::head::BLOCK_ELEMENTS;
use chex_model::lora::{LoraConfig, adapter_parameter_count, apply_lora, for_each_linear};
use chex_model::prompt::{EncodedPrompt, left_pad};
use chex_model::sampling::SamplingConfig;
use chex_model::scoring::{ScoringRow, TokenScores, score_completions};
use chex_model::vlm::{ImageInputs, token_tensor};
use chex_model::{Gemma3Config, Gemma3ForConditionalGeneration, ModelDtype, ModelError};

/// burn's random generators are per process, so tests that seed and draw from them run one at
/// a time to keep each one's draws its own.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fixture's architecture with fresh random weights, and two prompts with image blocks.
fn small_model(
    device: &Device,
) -> (
    Gemma3ForConditionalGeneration,
    Vec<EncodedPrompt>,
    Tensor<4>,
) {
    device.seed(11);
    let config = Gemma3Config::from_file(&fixture().join("config.json")).unwrap();
    let model = Gemma3ForConditionalGeneration::new(&config, device);
    let mm = config.mm_tokens_per_image;
    let prompt = |text: &[u32]| {
        let mut ids = vec![2, 4, 6];
        ids.extend(std::iter::repeat_n(config.image_token_index, mm));
        ids.push(7);
        ids.extend_from_slice(text);
        EncodedPrompt {
            ids,
            image_block: Some(3..3 + mm),
        }
    };
    let prompts = vec![prompt(&[20, 21, 22]), prompt(&[30, 31, 32, 33, 34, 35, 36])];
    let pixels = Tensor::random([2, 3, 32, 32], Distribution::Uniform(-1.0, 1.0), device);
    (model, prompts, pixels)
}

fn sampling(use_cache: bool, seed: u64) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: 24,
        samples_per_prompt: 3,
        sampling: SamplingConfig::chexreason(),
        stop_tokens: vec![1],
        seed,
        use_cache,
    }
}

#[test]
fn sampled_generation_is_seeded_and_the_cache_equals_recomputation() {
    let _serial = serial();
    on_every_test_device(|_, device| {
        let (model, prompts, pixels) = small_model(device);
        let run = |config: &GenerationConfig| {
            generate(&model, &prompts, Some(pixels.clone()), config, device).unwrap()
        };
        let cached = run(&sampling(true, 5));
        assert_eq!(cached.len(), 6);
        assert_eq!(
            cached.iter().map(|c| c.prompt).collect::<Vec<_>>(),
            vec![0, 0, 0, 1, 1, 1]
        );
        let uncached = run(&sampling(false, 5));
        for (a, b) in cached.iter().zip(&uncached) {
            assert_eq!(
                a.tokens, b.tokens,
                "cached and recomputed generation agree token for token"
            );
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-4);
            }
        }
        assert_eq!(
            cached,
            run(&sampling(true, 5)),
            "same seed, same completions"
        );
        assert_ne!(
            cached,
            run(&sampling(true, 6)),
            "another seed, other completions"
        );
    });
}

/// Teacher-forced scores of sampled completions, each under its own prompt and image, at the
/// sampling temperature.
fn score_sampled(
    model: &Gemma3ForConditionalGeneration,
    prompts: &[EncodedPrompt],
    pixels: Tensor<4>,
    completions: &[Completion],
    config: &GenerationConfig,
    device: &Device,
) -> TokenScores {
    let features = model.encode_images(pixels).unwrap();
    let rows: Vec<ScoringRow> = completions
        .iter()
        .map(|c| ScoringRow {
            prompt: &prompts[c.prompt].ids,
            image_block: prompts[c.prompt].image_block.as_ref(),
            completion: &c.tokens,
        })
        .collect();
    let image_of_row: Vec<usize> = completions.iter().map(|c| c.prompt).collect();
    score_completions(
        model,
        &rows,
        Some(ImageInputs {
            features: &features,
            image_of_row: &image_of_row,
        }),
        config.sampling.temperature,
        device,
    )
}

#[test]
fn scoring_reproduces_the_sampling_log_probs() {
    let _serial = serial();
    on_every_test_device(|_, device| {
        let (model, prompts, pixels) = small_model(device);
        let config = sampling(true, 9);
        let completions =
            generate(&model, &prompts, Some(pixels.clone()), &config, device).unwrap();
        let scores = score_sampled(&model, &prompts, pixels, &completions, &config, device);
        let width = scores.logprobs.dims()[1];
        let scored = scores.logprobs.into_data().try_to_vec::<f32>().unwrap();
        let entropies = scores.entropies.into_data().try_to_vec::<f32>().unwrap();
        for (r, c) in completions.iter().enumerate() {
            for (i, lp) in c.logprobs.iter().enumerate() {
                let s = scored[r * width + i];
                assert!(
                    (s - lp).abs() < 1e-4,
                    "row {r} token {i}: scored {s} vs sampled {lp}"
                );
                assert!(entropies[r * width + i] > 0.0);
            }
            assert!(
                scored[r * width + c.tokens.len()..(r + 1) * width]
                    .iter()
                    .all(|v| *v == 0.0)
            );
        }
    });
}

/// The sampler's log-probs (cached decode, bf16 keys and values) against teacher-forced
/// scoring (one fused pass) in bf16: the two round in different orders, so they agree to bf16's
/// precision rather than f32's. Measured: max |Δ| below 0.01 on flex and tch-cpu.
#[test]
fn bf16_sampling_and_scoring_agree_to_bf16_precision() {
    let _serial = serial();
    on_every_test_device(|choice, device| {
        if !device.supports_dtype(FloatDType::BF16) {
            return;
        }
        let (model, prompts, pixels) = small_model(device);
        let model = model.with_dtype(ModelDtype::Bf16);
        let config = sampling(true, 9);
        let completions =
            generate(&model, &prompts, Some(pixels.clone()), &config, device).unwrap();
        assert_eq!(
            completions,
            generate(&model, &prompts, Some(pixels.clone()), &config, device).unwrap()
        );
        let scores = score_sampled(&model, &prompts, pixels, &completions, &config, device);
        let width = scores.logprobs.dims()[1];
        let scored = scores.logprobs.into_data().try_to_vec::<f32>().unwrap();
        let mut worst = 0.0f32;
        for (r, c) in completions.iter().enumerate() {
            for (i, lp) in c.logprobs.iter().enumerate() {
                worst = worst.max((scored[r * width + i] - lp).abs());
            }
        }
        println!("{choice}: bf16 sampled vs scored log-probs, max |Δ| {worst:.5}");
        assert!(worst < 0.02, "{choice}: {worst}");
    });
}

/// `model` with every adapter's B drawn at random instead of zero, so the adapters change the
/// output and A's gradients are not zero.
fn with_moved_adapters(
    mut model: Gemma3ForConditionalGeneration,
    device: &Device,
) -> Gemma3ForConditionalGeneration {
    for_each_linear(&mut model, &mut |_, linear| {
        if let Some(lora) = linear.lora.as_mut() {
            let b = Tensor::random(lora.b.dims(), Distribution::Normal(0.0, 0.05), device);
            lora.b = Param::from_tensor(b);
        }
        Ok(())
    })
    .unwrap();
    model
}

/// The fused libtorch decode step (`chex_model::fused::decoder`) computes what burn's layers
/// compute: the same prompts prefilled into two caches, one decoding fused and one not, give the
/// same hidden states step after step, past the sliding window, with an attention soft-cap and a
/// LoRA adapter whose B is not zero, in f32 and bf16; and in the static shapes a CUDA graph needs
/// (the whole cache read under a mask, the slot written by a device index), which on a libtorch
/// GPU built with `cuda-graphs` is the captured graph replayed. Backends without the fused path
/// take burn's layers through both caches; on libtorch the test checks that the fused path (and
/// where it applies, the graph) was taken.
///
/// In f32 the paths agree to float rounding (measured max |Δ| relative to the largest hidden
/// value on tch-cpu: 1.4e-6). In bf16 they round in different places (the fused step adds an
/// adapter's update inside the product, with one rounding where burn's operations take two), so
/// each is held to the f32 model's hidden states instead: the fused step's error may be at most
/// twice burn's (measured on tch-cpu: 0.0211 each without an adapter, where the two agree
/// exactly, and 0.0286 against burn's 0.0285 with one, where they differ by 0.026).
#[test]
fn the_fused_decode_step_computes_what_burns_layers_compute() {
    let _serial = serial();
    on_every_test_device(|choice, device| {
        let libtorch = matches!(choice, DeviceChoice::TchCpu | DeviceChoice::TchCuda(_));
        for (with_lora, static_shapes) in
            [(false, false), (true, false), (false, true), (true, true)]
        {
            device.seed(3);
            let mut config = Gemma3Config::from_file(&fixture().join("config.json")).unwrap();
            config.text_config.attn_logit_softcapping = Some(5.0);
            let mut model = Gemma3ForConditionalGeneration::new(&config, device);
            if with_lora {
                let lora = LoraConfig {
                    dropout: 0.0,
                    ..LoraConfig::chexreason()
                };
                model = with_moved_adapters(apply_lora(model, &lora, 1, device), device);
            }
            // Hidden states of 12 decode steps, and whether the cache decoded fused, statically
            // and through the graph.
            let decode = |model: &Gemma3ForConditionalGeneration, fused: bool| {
                let rows: [&[u32]; 2] = [&[2, 5, 9, 11], &[2, 7, 8, 12, 13, 14, 15]];
                let (ids, width, layout) = left_pad(&rows, &[None, None], 0);
                let steps = 12;
                let mut cache = model.new_cache(2, width + steps, device);
                cache.set_fused_decoding(fused);
                cache.set_static_decode(fused && static_shapes);
                model.forward_hidden(
                    token_tensor(&ids, 2, width, device),
                    &layout,
                    None,
                    Some(&mut cache),
                );
                let states: Vec<Tensor<3>> = (0..steps as u32)
                    .map(|step| {
                        let next = token_tensor(&[20 + step, 40 + 2 * step], 2, 1, device);
                        model.forward_hidden(next, &layout, None, Some(&mut cache))
                    })
                    .collect();
                let taken = (
                    cache.decodes_fused(),
                    cache.decodes_static(),
                    cache.replays_graph(),
                );
                (states, taken)
            };
            // The largest difference of `a` from `b` over the steps, relative to `b`'s largest value.
            let worst = |a: &[Tensor<3>], b: &[Tensor<3>]| {
                a.iter().zip(b).fold(0f32, |m, (a, b)| {
                    let scale: f32 = b.clone().abs().max().into_scalar();
                    let diff: f32 = (a.clone() - b.clone()).abs().max().into_scalar();
                    m.max(diff / scale)
                })
            };
            // Static shapes on a libtorch GPU are what the CUDA graph captures and replays.
            let graph = static_shapes
                && cfg!(feature = "cuda-graphs")
                && matches!(choice, DeviceChoice::TchCuda(_));
            let (reference, taken) = decode(&model, false);
            assert_eq!(taken, (false, false, false), "{choice}");
            let (fused, taken) = decode(&model, true);
            assert_eq!(
                taken,
                (libtorch, static_shapes && libtorch, graph),
                "{choice}"
            );
            let what =
                format!("{choice} lora {with_lora} static shapes {static_shapes} graph {graph}");
            let f32_error = worst(&fused, &reference);
            println!("{what}: f32, fused vs burn, max |Δ| {f32_error:.2e}");
            assert!(f32_error < 1e-5, "{what}: {f32_error}");
            if !device.supports_dtype(FloatDType::BF16) {
                continue;
            }
            let model = model.with_dtype(ModelDtype::Bf16);
            let (plain, _) = decode(&model, false);
            let (fused, taken) = decode(&model, true);
            assert_eq!(
                taken,
                (libtorch, static_shapes && libtorch, graph),
                "{choice}"
            );
            let (burn_error, fused_error) = (worst(&plain, &reference), worst(&fused, &reference));
            println!(
                "{what}: bf16 against f32, fused {fused_error:.4}, burn's {burn_error:.4}; \
                 fused vs burn {:.4}",
                worst(&fused, &plain)
            );
            assert!(burn_error > 0.0, "{what}: the bf16 model computed in f32");
            assert!(
                fused_error <= 2.0 * burn_error + 0.005 && fused_error < 0.1,
                "{what}: {fused_error} against {burn_error}"
            );
        }
    });
}

/// LoRA training on libtorch runs the layers through libtorch's autograd
/// (`chex_model::fused::autograd`), rerunning them with checkpointing and keeping libtorch's
/// graph without, and takes the gradients burn's whole graph takes: with B moved off zero (so
/// A's gradients are not zero too), LoRA dropout drawing, image blocks, padding, with an
/// attention soft-cap and without. In f32 they agree to float rounding (measured max |Δ|
/// relative to the largest gradient on tch-cpu, either mode: 1.3e-6, and 7.7e-7 with the
/// soft-cap). In bf16 the paths round in different places, so each is held to burn's f32 gradients instead: the libtorch
/// path's relative error may be at most twice burn's (measured on tch-cpu, either mode: 0.031
/// against burn's 0.037, and 0.036 against 0.032 with the soft-cap; flex's own: 0.047 and
/// 0.057). Where there is no libtorch every run is burn's.
#[test]
fn libtorch_autograd_layers_take_burns_gradients() {
    let _serial = serial();
    on_every_test_device(|choice, device| {
        let libtorch = matches!(choice, DeviceChoice::TchCpu | DeviceChoice::TchCuda(_));
        for softcap in [None, Some(5.0)] {
            // `fused`: through libtorch's autograd where it applies, else burn's operations.
            let gradients = |dtype: ModelDtype, checkpointing: bool, fused: bool| {
                let ad = device.clone().autodiff();
                device.seed(5);
                let mut config = Gemma3Config::from_file(&fixture().join("config.json")).unwrap();
                config.text_config.attn_logit_softcapping = softcap;
                let model = Gemma3ForConditionalGeneration::new(&config, device);
                let lora = LoraConfig {
                    dropout: 0.2,
                    ..LoraConfig::chexreason()
                };
                let model = with_moved_adapters(apply_lora(model, &lora, 5, device), device);
                let model = model.with_dtype(dtype).to_device(&ad).train();
                let (_, prompts, pixels) = small_model(device);
                let features = model
                    .encode_images(Tensor::from_data(pixels.into_data(), &ad))
                    .unwrap();
                let completions: [&[u32]; 2] = [&[40, 41, 42, 1], &[43, 1]];
                let rows: Vec<ScoringRow> = prompts
                    .iter()
                    .zip(completions)
                    .map(|(p, completion)| ScoringRow {
                        prompt: &p.ids,
                        image_block: p.image_block.as_ref(),
                        completion,
                    })
                    .collect();
                ad.seed(17);
                let images = ImageInputs {
                    features: &features,
                    image_of_row: &[0, 1],
                };
                let (scores, graph) = with_fused_training(fused, || {
                    score_for_training(&model, &rows, Some(images), 0.7, checkpointing, &ad)
                });
                let on_libtorch = graph.layers_on_libtorch_autograd();
                assert_eq!(on_libtorch, libtorch && fused, "{choice} {dtype:?}");
                let loss = scores.logprobs.sum().neg() + scores.entropies.sum();
                gradient_values(&model, &graph.gradients(loss, &model))
            };
            let burn = gradients(ModelDtype::F32, false, false);
            let scale = burn.iter().fold(0f32, |m, g| m.max(g.abs()));
            assert!(scale > 0.0, "{choice}: every gradient is zero");
            for checkpointing in [true, false] {
                let fused = gradients(ModelDtype::F32, checkpointing, true);
                assert_eq!(burn.len(), fused.len(), "{choice}");
                let worst = burn
                    .iter()
                    .zip(&fused)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                    / scale;
                println!(
                    "{choice} f32 soft-cap {softcap:?} checkpointing {checkpointing}: \
                     max |Δ| {worst:.2e}"
                );
                assert!(
                    worst <= 1e-5,
                    "{choice} {softcap:?} {checkpointing}: {worst}"
                );
            }
            if !device.supports_dtype(FloatDType::BF16) {
                continue;
            }
            let norm = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
            let error = |half: &[f32]| {
                let difference: Vec<f32> = burn.iter().zip(half).map(|(a, b)| a - b).collect();
                norm(&difference) / norm(&burn)
            };
            let burn_bf16 = error(&gradients(ModelDtype::Bf16, false, false));
            for checkpointing in [true, false] {
                let fused = error(&gradients(ModelDtype::Bf16, checkpointing, true));
                println!(
                    "{choice} bf16 soft-cap {softcap:?} checkpointing {checkpointing}: relative \
                     error against f32 {fused:.4}, burn's {burn_bf16:.4}"
                );
                assert!(
                    fused <= 2.0 * burn_bf16 + 0.005 && fused < 0.1,
                    "{choice} {softcap:?} {checkpointing}: {fused} against {burn_bf16}"
                );
            }
        }
    });
}

/// Gradients of the adapters on a model in `dtype`, flattened in layer order.
fn adapter_gradients(device: &Device, dtype: ModelDtype) -> Vec<f32> {
    let device = device.clone().autodiff();
    let (model, prompts, pixels) = small_model(&device);
    let lora = LoraConfig {
        dropout: 0.0,
        ..LoraConfig::chexreason()
    };
    let mut model = apply_lora(model, &lora, 0, &device).with_dtype(dtype);
    let features = model.encode_images(pixels).unwrap();
    let completion = [40u32, 41, 42];
    let rows: Vec<ScoringRow> = prompts
        .iter()
        .map(|p| ScoringRow {
            prompt: &p.ids,
            image_block: p.image_block.as_ref(),
            completion: &completion,
        })
        .collect();
    let scores = score_completions(
        &model,
        &rows,
        Some(ImageInputs {
            features: &features,
            image_of_row: &[0, 1],
        }),
        1.0,
        &device,
    );
    let grads = GradientsParams::from_grads(scores.logprobs.sum().neg().backward(), &model);
    let mut out = Vec::new();
    for_each_linear(&mut model, &mut |_, linear| {
        if let Some(lora) = &linear.lora {
            for param in [&lora.a, &lora.b] {
                let grad = grads
                    .get::<2>(param.id)
                    .expect("every adapter has a gradient");
                assert_eq!(grad.dtype(), DType::F32, "adapters train in f32");
                out.extend(
                    grad.into_data()
                        .convert::<f32>()
                        .try_to_vec::<f32>()
                        .unwrap(),
                );
            }
        }
        Ok(())
    })
    .unwrap();
    out
}

/// LoRA over a bf16 base: the adapters' gradients (f32) point where the f32 model's do.
#[test]
fn bf16_base_gives_the_adapters_f32_gradients_close_to_f32s() {
    let _serial = serial();
    on_every_test_device(|choice, device| {
        if !device.supports_dtype(FloatDType::BF16) {
            return;
        }
        let full = adapter_gradients(device, ModelDtype::F32);
        let half = adapter_gradients(device, ModelDtype::Bf16);
        let dot: f64 = full.iter().zip(&half).map(|(a, b)| f64::from(a * b)).sum();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
        let cosine = dot / (norm(&full) * norm(&half));
        let relative = norm(
            &full
                .iter()
                .zip(&half)
                .map(|(a, b)| a - b)
                .collect::<Vec<_>>(),
        ) / norm(&full);
        println!(
            "{choice}: bf16 vs f32 adapter gradients, cosine {cosine:.5}, relative error {relative:.4}"
        );
        assert!(half.iter().all(|g| g.is_finite()));
        assert!(
            cosine > 0.99 && relative < 0.1,
            "{choice}: cosine {cosine}, error {relative}"
        );
        assert!(relative > 0.0, "{choice}: the bf16 model computed in f32");
    });
}

#[test]
fn lora_trains_only_the_adapters() {
    let _serial = serial();
    on_every_test_device(|_, device| {
        let device = device.clone().autodiff();
        let (model, prompts, pixels) = small_model(&device);
        let lora = LoraConfig {
            dropout: 0.0,
            ..LoraConfig::chexreason()
        };
        let model = apply_lora(model, &lora, 0, &device);
        let layers = model.config.text_config.num_hidden_layers;
        let features = model.encode_images(pixels).unwrap();
        let completion = [40u32, 41, 42];
        let rows: Vec<ScoringRow> = prompts
            .iter()
            .map(|p| ScoringRow {
                prompt: &p.ids,
                image_block: p.image_block.as_ref(),
                completion: &completion,
            })
            .collect();
        let scores = score_completions(
            &model,
            &rows,
            Some(ImageInputs {
                features: &features,
                image_of_row: &[0, 1],
            }),
            1.0,
            &device,
        );
        let loss = scores.logprobs.sum().neg();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        assert_eq!(
            grads.len(),
            layers * 7 * 2,
            "A and B of seven projections per layer, nothing else"
        );
        // r = 16: q, o (64→64), k, v (64→32), gate, up (64→128), down (128→64).
        let per_layer = 16 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128));
        assert_eq!(adapter_parameter_count(&model), layers * per_layer);
    });
}

#[test]
fn own_checkpoints_round_trip_and_bad_ones_name_the_key() {
    // Building a model draws its initial weights from the shared generators.
    let _serial = serial();
    on_every_test_device(|_, device| {
        let model = from_pretrained(&fixture(), device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(&model, dir.path()).unwrap();
        let again = from_pretrained(dir.path(), device).unwrap();
        let a = model.model.language_model.layers[1]
            .self_attn
            .q_proj
            .weight
            .val();
        let b = again.model.language_model.layers[1]
            .self_attn
            .q_proj
            .weight
            .val();
        assert_eq!(a.into_data(), b.into_data());
        assert_eq!(model.num_params(), again.num_params());

        let weights = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&weights).unwrap();
        let rewrite = |skip: &str, reshape: Option<&str>| {
            let mut kept = Vec::new();
            for name in file.names() {
                if name == skip {
                    continue;
                }
                let view = file.tensor(name).unwrap();
                let mut shape = view.shape().to_vec();
                if Some(name) == reshape {
                    shape.reverse();
                }
                kept.push((name.to_string(), view.data().to_vec(), shape));
            }
            let views: Vec<_> = kept
                .iter()
                .map(|(n, d, s)| {
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                            .unwrap(),
                    )
                })
                .collect();
            let bad = tempfile::tempdir().unwrap();
            std::fs::copy(
                dir.path().join("config.json"),
                bad.path().join("config.json"),
            )
            .unwrap();
            std::fs::write(
                bad.path().join("model.safetensors"),
                safetensors::serialize(views, None).unwrap(),
            )
            .unwrap();
            bad
        };
        let key = "model.language_model.layers.2.mlp.up_proj.weight";
        let missing = rewrite(key, None);
        match from_pretrained(missing.path(), device) {
            Err(ModelError::MissingTensor { key: k, .. }) => assert_eq!(k, key),
            other => panic!("expected a missing-tensor error, got {other:?}"),
        }
        let misshaped = rewrite("", Some(key));
        let err = from_pretrained(misshaped.path(), device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("up_proj") && err.contains("shape"), "{err}");

        let truncated = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join("config.json"),
            truncated.path().join("config.json"),
        )
        .unwrap();
        std::fs::write(
            truncated.path().join("model.safetensors"),
            &weights[..weights.len() / 2],
        )
        .unwrap();
        let err = from_pretrained(truncated.path(), device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("truncated"),
            "{err}"
        );

        let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let bad_config = tempfile::tempdir().unwrap();
        std::fs::write(
            bad_config.path().join("config.json"),
            config.replace("\"gelu_pytorch_tanh\"", "\"silu\""),
        )
        .unwrap();
        let err = from_pretrained(bad_config.path(), device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hidden_activation") && err.contains("silu"),
            "{err}"
        );
    });
}

#[test]
fn a_seed_gives_the_same_model_and_adapters_on_every_backend() {
    let _serial = serial();
    let config = Gemma3Config::from_file(&fixture().join("config.json")).unwrap();
    let lora = LoraConfig::chexreason();
    // The first layer's query projection and its adapter's A, as the host sees them.
    let draw = |device: &Device| {
        let model = Gemma3ForConditionalGeneration::seeded(&config, 7, device);
        let model = apply_lora(model, &lora, 7, device);
        let q = &model.model.language_model.layers[0].self_attn.q_proj;
        let a = q.lora.as_ref().expect("q_proj is a LoRA target").a.val();
        (
            q.weight.val().into_data().try_to_vec::<f32>().unwrap(),
            a.into_data().try_to_vec::<f32>().unwrap(),
        )
    };
    let reference = draw(&chex_model::DeviceChoice::Cpu.device().unwrap());
    on_every_test_device(|choice, device| {
        assert_eq!(draw(device), reference, "{choice} drew other weights");
    });
    let other_seed = {
        let model = Gemma3ForConditionalGeneration::seeded(&config, 8, &Device::flex());
        model.model.language_model.layers[0]
            .self_attn
            .q_proj
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert_ne!(other_seed, reference.0, "another seed, other weights");
}

#[test]
fn a_seeded_model_cast_as_it_is_drawn_equals_the_f32_model_cast_afterwards() {
    let _serial = serial();
    let config = Gemma3Config::from_file(&fixture().join("config.json")).unwrap();
    // Every parameter's dtype and values, as the host sees them, in module order.
    struct Parameters(Vec<(DType, Vec<f32>)>);
    impl ModuleVisitor for Parameters {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let dtype = value.dtype();
            let data = value.cast(FloatDType::F32).into_data();
            self.0.push((dtype, data.try_to_vec::<f32>().unwrap()));
        }
    }
    let parameters = |model: Gemma3ForConditionalGeneration| {
        let mut all = Parameters(Vec::new());
        model.visit(&mut all);
        all.0
    };
    on_every_test_device(|choice, device| {
        let dtype = match ModelDtype::Bf16.ensure_supported(device) {
            Ok(()) => ModelDtype::Bf16,
            Err(_) => ModelDtype::F32,
        };
        let cast_after =
            Gemma3ForConditionalGeneration::seeded(&config, 7, device).with_dtype(dtype);
        let cast_while_drawn = Gemma3ForConditionalGeneration::seeded_in(&config, 7, dtype, device);
        assert_eq!(cast_while_drawn.dtype(), dtype, "{choice}");
        assert!(
            parameters(cast_while_drawn) == parameters(cast_after),
            "{choice}: casting as the weights are drawn gave other weights"
        );
    });
}

/// Every gradient `grads` holds for `model`'s parameters, in module order.
fn gradient_values(model: &Gemma3ForConditionalGeneration, grads: &GradientsParams) -> Vec<f32> {
    struct Collect<'a>(&'a GradientsParams, Vec<f32>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.0.get::<D>(param.id) {
                self.1.extend(grad.into_data().iter::<f32>());
            }
        }
    }
    let mut collect = Collect(grads, Vec::new());
    model.visit(&mut collect);
    collect.1
}

#[test]
fn checkpointing_changes_no_gradient_even_under_lora_dropout() {
    // The generators are per process: a test drawing at the same time would take the numbers
    // a rerun layer must draw again.
    let _serial = serial();
    on_every_test_device(|choice, device| {
        let config = Gemma3Config::preset("tiny").unwrap();
        let lora = LoraConfig {
            dropout: 0.3,
            ..LoraConfig::chexreason()
        };
        let ad = device.clone().autodiff();
        let base = Gemma3ForConditionalGeneration::seeded(&config, 3, device);
        let model = apply_lora(base.clone(), &lora, 3, device)
            .to_device(&ad)
            .train();
        // Full fine-tuning: the tied embedding trains, so each block of the head has gradients
        // of its own.
        let full = base.to_device(&ad).train();
        let rows = [
            ScoringRow {
                prompt: &[2, 30, 31, 32],
                image_block: None,
                completion: &[40, 41, 42, 1],
            },
            ScoringRow {
                prompt: &[2, 33],
                image_block: None,
                completion: &[43, 1],
            },
        ];
        // `entropy`: whether the loss weighs the entropies in (else the head's backward pass
        // takes the log-probabilities' gradient alone); `budget`: logits per block of the head
        // (64: a position a range, the vocabulary in 32 blocks).
        let run_on = |model: &Gemma3ForConditionalGeneration,
                      checkpointing: bool,
                      seed: u64,
                      entropy: bool,
                      budget: usize| {
            ad.seed(seed);
            let (scores, graph) =
                score_for_training_in_blocks(model, &rows, None, 0.7, checkpointing, budget, &ad);
            let mut loss = scores.logprobs.sum().neg();
            if entropy {
                loss = loss + scores.entropies.sum();
            }
            gradient_values(model, &graph.gradients(loss, model))
        };
        let run = |checkpointing: bool, seed: u64, entropy: bool, budget: usize| {
            run_on(&model, checkpointing, seed, entropy, budget)
        };
        let agree = |whole: &[f32], other: &[f32], what: &str| {
            assert_eq!(whole.len(), other.len(), "{choice} {what}");
            let scale = whole.iter().fold(0f32, |m, g| m.max(g.abs()));
            for (i, (a, b)) in whole.iter().zip(other).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * scale.max(1.0),
                    "{choice} {what}: gradient {i} is {a} without checkpointing, {b} with"
                );
            }
        };
        // Gradients of B are zero at initialisation, and A's vanish with them; through the
        // entropies the loss still reaches them.
        for entropy in [true, false] {
            let whole = run(false, 11, entropy, BLOCK_ELEMENTS);
            assert!(
                whole.iter().any(|g| *g != 0.0),
                "{choice}: every gradient is zero"
            );
            for (checkpointing, budget) in [(true, BLOCK_ELEMENTS), (true, 64), (false, 64)] {
                let what = format!(
                    "entropy {entropy}, checkpointing {checkpointing}, {budget} logits a block"
                );
                agree(&whole, &run(checkpointing, 11, entropy, budget), &what);
            }
            let full_whole = run_on(&full, false, 11, entropy, BLOCK_ELEMENTS);
            assert!(
                full_whole.len() > whole.len() && full_whole.iter().any(|g| *g != 0.0),
                "{choice}: full fine-tuning took no gradients"
            );
            let what = format!("full fine-tuning, entropy {entropy}, 64 logits a block");
            agree(&full_whole, &run_on(&full, true, 11, entropy, 64), &what);
            // Dropout did draw: another seed, other masks, other gradients.
            assert_ne!(
                run(false, 12, entropy, BLOCK_ELEMENTS),
                whole,
                "{choice}: dropout drew nothing"
            );
        }
    });
}

/// A frozen vision tower meeting autodiff pixels (a trainer's scoring pass) runs outside
/// autodiff, where the backend's fused attention applies, and gives what the plain device
/// gives, as an autodiff tensor that records nothing; a tower that trains stays under autodiff
/// and gets its gradients.
#[test]
fn a_frozen_vision_tower_encodes_outside_autodiff_and_a_trained_one_inside() {
    let _serial = serial();
    on_every_test_device(|choice, device| {
        let (model, _, pixels) = small_model(device);
        let plain = model.encode_images(pixels.clone()).unwrap();
        let ad = device.clone().autodiff();
        let on_ad = |m: Gemma3ForConditionalGeneration| m.to_device(&ad).train();
        let ad_pixels = Tensor::<4>::from_data(pixels.into_data(), &ad);

        let mut frozen = model.clone();
        frozen.model.vision_tower = frozen.model.vision_tower.freeze();
        let frozen = on_ad(frozen);
        assert!(frozen.model.vision_tower.is_frozen(), "{choice}");
        let features = frozen.encode_images(ad_pixels.clone()).unwrap();
        assert!(features.is_autodiff(), "{choice}");
        let diff: f32 = (features.inner() - plain.clone()).abs().max().into_scalar();
        assert!(diff < 1e-4, "{choice}: frozen tower differs by {diff}");

        let trained = on_ad(model);
        assert!(!trained.model.vision_tower.is_frozen(), "{choice}");
        let features = trained.encode_images(ad_pixels).unwrap();
        let diff: f32 = (features.clone().inner() - plain).abs().max().into_scalar();
        assert!(diff < 1e-4, "{choice}: trained tower differs by {diff}");
        let grads = features.sum().backward();
        let weight = trained
            .model
            .vision_tower
            .embeddings
            .patch_embedding
            .weight
            .val();
        assert!(
            weight.grad(&grads).is_some(),
            "{choice}: no gradient reached the tower"
        );
    });
}
