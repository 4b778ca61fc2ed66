//! Generation and scoring speed of the tiny and small presets, shaped like a GRPO rollout:
//! 8 prompts × 4 samples = batch 32, prompts of 24 text tokens around 16 image tokens, 128 new
//! tokens at temperature 0.8 and top-p 0.95 (the shape `../shared/peer/hf_generate_baseline.py`
//! measures for Hugging Face transformers). Run: `cargo bench --bench generation`; set
//! `CHEX_BENCH_DEVICE` (`cpu`, `ndarray`, `tch-cpu`, `tch-cuda:0`, …) to measure another backend.
//!
//! `generate_call_gemma3_vocab` measures what one `generate` call costs before its first decode
//! step at MedGemma-4B's vocabulary and width (262,208 × 2,560, the tied head included) with a
//! single decoder layer: the per-call work that scales with the embedding, which GRPO pays at
//! every step (`CHEX_BENCH_VOCAB=0` skips it; it holds 2.7 GB).
//!
//! `score_head_gemma3_vocab` measures a LoRA training scoring pass, forward and gradients, of
//! GRPO's 16 rows × 128 completion tokens at MedGemma-4B's vocabulary with the tiny preset's
//! width and one decoder layer: the output head's cost (`chex_grpo::model::head`), whose
//! `[192, 262,208]` matrix is read once per block plan's range of positions and pass
//! (`CHEX_BENCH_VOCAB=0` skips it too).
//!
//! `decode_step_34_layers` times one decode step of 32 rows (no sampling) through MedGemma-4B's
//! 34 decoder layers at the tiny preset's widths, with and without the fused libtorch step
//! (`chex_grpo::model::fused::decoder`): at these widths the arithmetic is negligible, so the
//! figure is the host's cost of issuing a 4B decode step, which is what bounds it on a GPU.
//! It runs where the device is a libtorch one (`CHEX_BENCH_DEVICE=tch-cpu`).

use std::time::Duration;

use burn::tensor::{Device, Distribution, Tensor};
use chex_grpo::bench::image_prompts;
use chex_grpo::model::checkpointing::score_for_training;
use chex_grpo::model::generation::{GenerationConfig, generate};
use chex_grpo::model::lora::{LoraConfig, apply_lora};
use chex_grpo::model::prompt::left_pad;
use chex_grpo::model::sampling::SamplingConfig;
use chex_grpo::model::scoring::{ScoringRow, score_completions};
use chex_grpo::model::vlm::{ImageInputs, token_tensor};
use chex_grpo::model::{
    Gemma3Config, Gemma3ForConditionalGeneration, ModelDtype, burn, select_device,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PROMPTS: usize = 8;
const SAMPLES: usize = 4;
const NEW_TOKENS: usize = 128;

/// The device `CHEX_BENCH_DEVICE` names (flex by default), seeded.
fn bench_device() -> Device {
    // burn's own default prefers libtorch over flex when both are compiled; name the device.
    let spec = std::env::var("CHEX_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = select_device(&spec).unwrap_or_else(|e| panic!("CHEX_BENCH_DEVICE: {e}"));
    device.seed(0);
    device
}

/// One image per prompt, in the SigLIP input range.
fn random_pixels(config: &Gemma3Config, device: &Device) -> Tensor<4> {
    let side = config.vision_config.image_size;
    Tensor::<4>::random(
        [PROMPTS, 3, side, side],
        Distribution::Uniform(-1.0, 1.0),
        device,
    )
}

/// `generate` of `PROMPTS × SAMPLES` rows, `new_tokens` each, as the benchmark group `group`.
fn bench_generate(
    c: &mut Criterion,
    group: &str,
    config: &Gemma3Config,
    new_tokens: usize,
    device: &Device,
) {
    let model = Gemma3ForConditionalGeneration::new(config, device);
    let prompts = image_prompts(config, PROMPTS, 24);
    let pixels = random_pixels(config, device);
    let generation = GenerationConfig {
        max_new_tokens: new_tokens,
        samples_per_prompt: SAMPLES,
        sampling: SamplingConfig::chexreason(),
        stop_tokens: Vec::new(),
        seed: 0,
        use_cache: true,
    };
    let mut group = c.benchmark_group(group);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(
        (PROMPTS * SAMPLES * new_tokens) as u64,
    ));
    group.bench_function(format!("batch32_new{new_tokens}"), |b| {
        b.iter(|| generate(&model, &prompts, Some(pixels.clone()), &generation, device).unwrap())
    });
    group.finish();
}

fn bench_preset(c: &mut Criterion, preset: &str) {
    let device = bench_device();
    let config = Gemma3Config::preset(preset).unwrap();
    bench_generate(
        c,
        &format!("generate_{preset}"),
        &config,
        NEW_TOKENS,
        &device,
    );

    // One forward + backward of the scoring pass the GRPO loss needs, on the same batch.
    let ad = device.autodiff();
    let model = Gemma3ForConditionalGeneration::new(&config, &ad);
    let prompts = image_prompts(&config, PROMPTS, 24);
    let pixels = random_pixels(&config, &ad);
    let completion: Vec<u32> = (0..NEW_TOKENS as u32).map(|i| 30 + i).collect();
    let rows: Vec<ScoringRow> = (0..PROMPTS * SAMPLES)
        .map(|r| ScoringRow {
            prompt: &prompts[r / SAMPLES].ids,
            image_block: prompts[r / SAMPLES].image_block.as_ref(),
            completion: &completion,
        })
        .collect();
    let image_of_row: Vec<usize> = (0..PROMPTS * SAMPLES).map(|r| r / SAMPLES).collect();
    let mut group = c.benchmark_group(format!("score_{preset}"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(
        (PROMPTS * SAMPLES * NEW_TOKENS) as u64,
    ));
    group.bench_function("forward_backward_batch32_len128", |b| {
        b.iter(|| {
            let features = model.encode_images(pixels.clone()).unwrap();
            let scores = score_completions(
                &model,
                &rows,
                Some(ImageInputs {
                    features: &features,
                    image_of_row: &image_of_row,
                }),
                0.8,
                &ad,
            );
            scores.logprobs.sum().backward()
        })
    });
    group.finish();
}

/// One `generate` call with a single new token at Gemma 3's vocabulary and width.
fn bench_call_at_gemma3_vocab(c: &mut Criterion) {
    let device = bench_device();
    let gemma = Gemma3Config::preset("medgemma-4b").unwrap();
    let mut config = Gemma3Config::preset("tiny").unwrap();
    config.text_config.vocab_size = gemma.text_config.vocab_size;
    config.text_config.hidden_size = gemma.text_config.hidden_size;
    config.text_config.num_hidden_layers = 1;
    config.text_config.layer_types = None;
    config.validate().unwrap();
    bench_generate(c, "generate_call_gemma3_vocab", &config, 1, &device);
}

/// A LoRA training scoring pass of 16 rows × 128 tokens at Gemma 3's vocabulary, tiny widths.
fn bench_score_head_at_gemma3_vocab(c: &mut Criterion) {
    use burn::module::Module;
    let device = bench_device();
    let mut config = Gemma3Config::preset("tiny").unwrap();
    config.text_config.vocab_size = Gemma3Config::preset("medgemma-4b")
        .unwrap()
        .text_config
        .vocab_size;
    config.text_config.num_hidden_layers = 1;
    config.text_config.layer_types = None;
    config.validate().unwrap();
    let ad = device.clone().autodiff();
    let model = Gemma3ForConditionalGeneration::new(&config, &device);
    let model = apply_lora(model, &LoraConfig::chexreason(), 0, &device)
        .to_device(&ad)
        .train();
    let prompt: Vec<u32> = (0..24).map(|i| 20 + i).collect();
    let completion: Vec<u32> = (0..NEW_TOKENS as u32).map(|i| 300 + 1_000 * i).collect();
    let rows: Vec<ScoringRow> = (0..16)
        .map(|_| ScoringRow {
            prompt: &prompt,
            image_block: None,
            completion: &completion,
        })
        .collect();
    let mut group = c.benchmark_group("score_head_gemma3_vocab");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements((rows.len() * NEW_TOKENS) as u64));
    group.bench_function("rows16_len128", |b| {
        b.iter(|| {
            let (scores, graph) = score_for_training(&model, &rows, None, 1.0, true, &ad);
            graph.gradients(scores.logprobs.sum(), &model)
        })
    });
    group.finish();
}

/// One decode step of 32 rows through 34 layers of the tiny preset's width, fused and not.
fn bench_decode_step_host_cost(c: &mut Criterion) {
    let device = bench_device();
    let mut config = Gemma3Config::preset("tiny").unwrap();
    config.text_config.num_hidden_layers = 34;
    config.text_config.layer_types = None;
    config.validate().unwrap();
    let rows = PROMPTS * SAMPLES;
    let prompt: Vec<u32> = (0..8).map(|i| 20 + i).collect();
    let (ids, width, layout) = left_pad(&vec![prompt.as_slice(); rows], &vec![None; rows], 0);
    let mut group = c.benchmark_group("decode_step_34_layers");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    for dtype in [ModelDtype::F32, ModelDtype::Bf16] {
        if dtype.ensure_supported(&device).is_err() {
            continue;
        }
        let model = Gemma3ForConditionalGeneration::new(&config, &device).with_dtype(dtype);
        for fused in [true, false] {
            let name = format!("{dtype:?}_{}", if fused { "fused" } else { "burn" });
            group.bench_function(name.to_lowercase(), |b| {
                // A cache holds a bounded number of steps: each batch of them starts a new one,
                // prefilled outside the timed span.
                b.iter_custom(|iterations| {
                    let mut timed = Duration::ZERO;
                    let mut left = iterations as usize;
                    while left > 0 {
                        let steps = left.min(64);
                        let mut cache = model.new_cache(rows, width + steps, &device);
                        cache.set_fused_decoding(fused);
                        let tokens = token_tensor(&ids, rows, width, &device);
                        model.forward_hidden(tokens, &layout, None, Some(&mut cache));
                        let next = token_tensor(&vec![30; rows], rows, 1, &device);
                        let started = std::time::Instant::now();
                        for _ in 0..steps {
                            let hidden =
                                model.forward_hidden(next.clone(), &layout, None, Some(&mut cache));
                            // Wait for the step (a GPU runs it asynchronously).
                            let _ = hidden.into_data();
                        }
                        timed += started.elapsed();
                        left -= steps;
                    }
                    timed
                })
            });
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    if std::env::var("CHEX_BENCH_DEVICE").is_ok_and(|d| d.starts_with("tch")) {
        bench_decode_step_host_cost(c);
    }
    if std::env::var("CHEX_BENCH_VOCAB")
        .map(|v| v != "0")
        .unwrap_or(true)
    {
        bench_call_at_gemma3_vocab(c);
        bench_score_head_at_gemma3_vocab(c);
    }
    bench_preset(c, "tiny");
    if std::env::var("CHEX_BENCH_SMALL")
        .map(|v| v != "0")
        .unwrap_or(true)
    {
        bench_preset(c, "small");
    }
}

criterion_group!(generation, benches);
criterion_main!(generation);
