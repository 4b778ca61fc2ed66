//! The throughput harness behind `chex bench`: rollout generation, LoRA scoring forward and
//! backward, and whole GRPO steps, at the shapes the Python peers measure
//! (`../shared/peer/hf_gpu_baseline.py`, `trl_grpo_baseline.py`), on any preset and device.
//! Each figure is one [`Measurement`], printed as a JSON line beside the peers' lines.
//!
//! Weights are the preset's random initialisation: speed and memory do not depend on their
//! values, and no download is needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chex_data::PreparedImage;
use chex_model::burn::tensor::{Device, Distribution, Tensor};
use chex_model::checkpointing::score_for_training;
use chex_model::generation::{GenerationConfig, generate};
use chex_model::lora::LoraConfig;
use chex_model::profiler::{OpTime, profile};
use chex_model::prompt::EncodedPrompt;
use chex_model::sampling::SamplingConfig;
use chex_model::scoring::ScoringRow;
use chex_model::vlm::ImageInputs;
use chex_model::{
    DeviceChoice, Gemma3Config, Gemma3ForConditionalGeneration, ModelDtype, select_device,
};
use chex_objective::LossType;
use chex_rewards::RewardRegistry;
use serde::Serialize;

use crate::corpus::preset_tokenizer;
use crate::error::{Error, Result};
use crate::prompts::PromptVariant;
use crate::training::log::read_jsonl;
use crate::training::records::{GrpoStepRecord, SftLogRecord};
use crate::training::{
    Example, GrpoConfig, Policy, SftConfig, checkpointing_on, device_of, train_grpo_with,
    train_sft, trainable_model,
};

/// One figure the harness can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Figure {
    /// Sampled generation: `rollout_prompts × samples` rows, `new_tokens` each, no early stop.
    Rollout,
    /// LoRA r16 scoring forward + backward of `score_prompts × samples` rows × `new_tokens`.
    Score,
    /// A whole GRPO step at ChexReason's settings (4 prompts × G 4, LoRA r16, β 0.15, dr_grpo).
    GrpoStep,
    /// A GRPO step at the shape of TRL's CPU baseline: 2 prompts × 4, full fine-tuning.
    TrlCpuStep,
    /// A whole SFT step at ChexReason's settings: effective batch 8 (2 micro-batches of 4),
    /// LoRA r16, completions of `new_tokens` tokens.
    SftStep,
}

impl Figure {
    /// Every figure, in the order they are measured.
    pub const ALL: [Figure; 5] = [
        Self::Rollout,
        Self::Score,
        Self::GrpoStep,
        Self::TrlCpuStep,
        Self::SftStep,
    ];
}

impl std::str::FromStr for Figure {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rollout" => Ok(Self::Rollout),
            "score" => Ok(Self::Score),
            "grpo-step" => Ok(Self::GrpoStep),
            "trl-cpu-step" => Ok(Self::TrlCpuStep),
            "sft-step" => Ok(Self::SftStep),
            other => Err(Error::setting(
                "figure",
                format!(
                    "unknown figure `{other}` (rollout, score, grpo-step, trl-cpu-step, sft-step)"
                ),
            )),
        }
    }
}

/// The sizes every figure uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchShape {
    /// Prompts of a rollout (each with `samples` completions).
    pub rollout_prompts: usize,
    /// Completions per prompt in the rollout and scoring figures.
    pub samples: usize,
    /// Text tokens around each prompt's image block.
    pub text_tokens: usize,
    /// New tokens per completion (rollout and scoring) and GRPO's `max_completion_length`.
    pub new_tokens: usize,
    /// Prompts scored (each × `samples` rows).
    pub score_prompts: usize,
    /// Timed repetitions of each figure after one untimed warm-up; the median is reported.
    pub repeats: usize,
    /// How rollouts choose tokens: ChexReason's sampling, or greedy as evaluation decodes.
    pub sampling: SamplingConfig,
}

impl BenchShape {
    /// The peers' shapes: 8 prompts × 4 samples × 128 new tokens, 24 text tokens, 2 prompts
    /// scored (8 rows), 3 repetitions.
    pub fn peer() -> Self {
        Self {
            rollout_prompts: 8,
            samples: 4,
            text_tokens: 24,
            new_tokens: 128,
            score_prompts: 2,
            repeats: 3,
            sampling: SamplingConfig::chexreason(),
        }
    }
}

/// What to measure, where.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Model preset (`tiny`, `small`, `medgemma-4b`).
    pub preset: String,
    /// Device (`cpu`, `tch-cpu`, `tch-cuda:0`, …).
    pub device: String,
    pub figures: Vec<Figure>,
    pub shape: BenchShape,
    /// Seed of the weights, the inputs and the sampling.
    pub seed: u64,
    /// Gradient checkpointing in the scoring and GRPO figures (`None`: the trainers' default,
    /// on for GPUs).
    pub gradient_checkpointing: Option<bool>,
    /// Precision of the weights (`None`: bf16 on GPUs, f32 on CPUs, as in a study).
    pub dtype: Option<ModelDtype>,
    /// Where to write a profile of one more scoring pass (PyTorch's profiler, libtorch devices,
    /// a build with the `profiler` feature): `score-trace.json` (Chrome trace) and
    /// `score-ops.tsv` (every operator and kernel with its calls and time).
    pub profile: Option<PathBuf>,
    /// Keep only the first this many layers of each tower (`None`: all): a model's widths,
    /// vocabulary and sequence lengths on a machine that cannot hold or run all of its layers,
    /// so its per-layer and head costs can be profiled there.
    pub layers: Option<usize>,
}

/// One measured figure, as `chex bench` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    pub figure: Figure,
    pub preset: String,
    pub device: String,
    /// Precision of the matrix-product weights (`bf16` or `f32`; see `chex_model::precision`).
    pub dtype: ModelDtype,
    /// Whether backward passes recomputed activations (scoring and GRPO figures).
    pub gradient_checkpointing: bool,
    /// Rows (sequences) in the batch.
    pub rows: usize,
    /// Completion tokens per row (at most, for GRPO steps).
    pub new_tokens: usize,
    /// Median seconds of one repetition (a step, for GRPO figures).
    pub seconds: f64,
    /// Completion tokens generated or scored per second (for GRPO steps: sampled tokens).
    pub tokens_per_s: f64,
    /// Peak memory while the figure ran, in GiB, when it can be read.
    pub peak_memory_gib: Option<f64>,
    /// What the peak is: `host peak RSS` or `nvidia-smi used`.
    pub memory: &'static str,
    pub repeats: usize,
    /// For scoring: the median time the host took to issue the forward and backward passes,
    /// before waiting for the device. Close to `seconds`, the device waited on the host (the
    /// pass is bound by how many operations it issues); well under it, the host waited on the
    /// device. On a CPU backend the two are the same work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_seconds: Option<f64>,
    /// For the LoRA training figures (scoring, GRPO and SFT steps) on libtorch: whether their
    /// decoder layers ran through libtorch's autograd (`chex_model::fused::autograd`;
    /// `CHEX_FUSED_TRAINING=0` turns it off to compare).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fused_training: Option<bool>,
    /// For rollouts on libtorch: whether decode steps took the fused path
    /// (`chex_model::fused::decoder`; `CHEX_FUSED_DECODE=0` turns it off to compare).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fused_decode: Option<bool>,
    /// For rollouts on a libtorch GPU: how many decode steps replayed a captured CUDA graph
    /// (`chex_model::fused::graph`, with the `cuda-graphs` feature; `CHEX_CUDA_GRAPHS=0` turns
    /// it off to compare).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_replays: Option<usize>,
    /// For rollouts: whether tokens were chosen greedily (else with ChexReason's sampling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greedy: Option<bool>,
    /// For scoring on a GPU: one more repetition with the device synchronised between its
    /// phases, so the figure's time splits into what each phase costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase_seconds: Option<ScorePhases>,
    /// The layers kept in each tower, when `--layers` cut the preset short.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// For scoring with `--profile`: the longest GPU kernels of one more pass (on a CPU
    /// backend, host operators, whose times nest), longest first; the whole list is in the
    /// profile's `score-ops.tsv`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<PassProfile>,
}

/// What the profiler saw of one scoring pass (see [`Measurement::profile`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassProfile {
    /// Seconds the GPU spent in kernels and copies (0 on a CPU backend).
    pub gpu_busy_seconds: f64,
    /// The longest entries, names cut to 120 characters.
    pub top: Vec<OpTime>,
}

/// Where a scoring pass's time goes (see [`Measurement::phase_seconds`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScorePhases {
    /// The vision tower on the prompts' images.
    pub encode: f64,
    /// The decoder, the head and the log-softmax over the completions, recording for backward.
    pub forward: f64,
    /// The backward pass to the adapters' gradients (with checkpointing, the rerun layers too).
    pub backward: f64,
}

/// Measure every figure of `config`, handing each to `emit` as soon as it is done.
pub fn run_bench(config: &BenchConfig, emit: &mut dyn FnMut(&Measurement)) -> Result<()> {
    if config.shape.repeats == 0
        || config.shape.new_tokens == 0
        || config.shape.samples == 0
        || config.shape.rollout_prompts == 0
        || config.shape.score_prompts == 0
    {
        return Err(Error::setting(
            "bench",
            "repeats, new tokens, samples and prompts must be positive",
        ));
    }
    let choice: DeviceChoice = config.device.parse()?;
    if config.profile.is_some() {
        if !matches!(choice, DeviceChoice::TchCpu | DeviceChoice::TchCuda(_)) {
            return Err(Error::setting(
                "profile",
                format!(
                    "PyTorch's profiler sees libtorch devices only (tch-cpu, tch-cuda:N), not `{}`",
                    config.device
                ),
            ));
        }
        if !chex_model::profiler::AVAILABLE {
            return Err(Error::setting("profile", chex_model::profiler::MISSING));
        }
        if !config.figures.contains(&Figure::Score) {
            return Err(Error::setting(
                "profile",
                "profiles the scoring figure: add `score` to --figures",
            ));
        }
    }
    let device = select_device(&config.device)?;
    let dtype = config
        .dtype
        .unwrap_or_else(|| ModelDtype::default_for(choice));
    dtype.ensure_supported(&device)?;
    device.seed(config.seed);
    let model_config = bench_model_config(config)?;
    for &figure in &config.figures {
        let probe = MemoryProbe::start(choice);
        let replays_before = chex_model::fused::graph_replays();
        let plain = ScoringTimes::default();
        let (timing, scoring) = match figure {
            Figure::Rollout => (
                rollout_figure(&model_config, config, dtype, &device)?,
                plain,
            ),
            Figure::Score => score_figure(&model_config, config, dtype, &device)?,
            Figure::GrpoStep | Figure::TrlCpuStep => (
                grpo_step_figure(&model_config, config, figure, dtype, &device)?,
                plain,
            ),
            Figure::SftStep => (
                sft_step_figure(&model_config, config, dtype, &device)?,
                plain,
            ),
        };
        let (rows, new_tokens, seconds, tokens) = timing;
        let (peak_memory_gib, memory) = probe.finish();
        let libtorch = matches!(choice, DeviceChoice::TchCpu | DeviceChoice::TchCuda(_));
        let checkpointing = figure != Figure::Rollout
            && config
                .gradient_checkpointing
                .unwrap_or_else(|| chex_model::device::is_accelerator(&device));
        emit(&Measurement {
            figure,
            preset: config.preset.clone(),
            layers: config.layers,
            device: config.device.clone(),
            dtype,
            gradient_checkpointing: checkpointing,
            rows,
            new_tokens,
            seconds,
            tokens_per_s: tokens / seconds,
            peak_memory_gib,
            memory,
            repeats: config.shape.repeats,
            host_seconds: scoring.host,
            fused_training: (libtorch
                && matches!(figure, Figure::Score | Figure::GrpoStep | Figure::SftStep))
            .then(chex_model::checkpointing::fused_training),
            fused_decode: (libtorch && figure == Figure::Rollout)
                .then(chex_model::text::fused_decoding),
            graph_replays: (matches!(choice, DeviceChoice::TchCuda(_))
                && figure == Figure::Rollout)
                .then(|| chex_model::fused::graph_replays() - replays_before),
            greedy: (figure == Figure::Rollout).then(|| config.shape.sampling.is_greedy()),
            phase_seconds: scoring.phases,
            profile: scoring.profile,
        });
    }
    Ok(())
}

/// The median of timed runs of `work` after one untimed warm-up; `work` returns the tokens
/// it handled, averaged over the timed runs.
fn timed(repeats: usize, mut work: impl FnMut() -> Result<usize>) -> Result<(f64, f64)> {
    work()?;
    let mut seconds = Vec::with_capacity(repeats);
    let mut tokens = 0usize;
    for _ in 0..repeats {
        let started = Instant::now();
        tokens += work()?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    Ok((seconds[seconds.len() / 2], tokens as f64 / repeats as f64))
}

/// `prompts` prompts of `text` tokens with the image block after the fourth, as the peer builds
/// them (also what `benches/generation.rs` feeds).
pub fn image_prompts(config: &Gemma3Config, prompts: usize, text: usize) -> Vec<EncodedPrompt> {
    let mm = config.mm_tokens_per_image;
    let vocab = config.text_config.vocab_size as u32;
    let lead = text.min(4);
    (0..prompts)
        .map(|p| {
            let words: Vec<u32> = (0..text)
                .map(|i| (20 + ((p * 31 + i * 7) % 1000) as u32) % vocab)
                .collect();
            let mut ids = words[..lead].to_vec();
            ids.extend(std::iter::repeat_n(config.image_token_index, mm));
            ids.extend_from_slice(&words[lead..]);
            EncodedPrompt {
                ids,
                image_block: Some(lead..lead + mm),
            }
        })
        .collect()
}

fn random_pixels(config: &Gemma3Config, images: usize, device: &Device) -> Tensor<4> {
    let side = config.vision_config.image_size;
    Tensor::<4>::random(
        [images, 3, side, side],
        Distribution::Uniform(-1.0, 1.0),
        device,
    )
}

fn rollout_figure(
    model_config: &Gemma3Config,
    config: &BenchConfig,
    dtype: ModelDtype,
    device: &Device,
) -> Result<(usize, usize, f64, f64)> {
    let shape = &config.shape;
    let model = bench_model(model_config, config, dtype, device);
    let prompts = image_prompts(model_config, shape.rollout_prompts, shape.text_tokens);
    let pixels = random_pixels(model_config, shape.rollout_prompts, device);
    let generation = GenerationConfig {
        max_new_tokens: shape.new_tokens,
        samples_per_prompt: shape.samples,
        sampling: shape.sampling,
        stop_tokens: Vec::new(),
        seed: config.seed,
        use_cache: true,
    };
    let (seconds, tokens) = timed(shape.repeats, || {
        let completions = generate(&model, &prompts, Some(pixels.clone()), &generation, device)?;
        Ok(completions.iter().map(|c| c.tokens.len()).sum())
    })?;
    Ok((
        shape.rollout_prompts * shape.samples,
        shape.new_tokens,
        seconds,
        tokens,
    ))
}

fn score_figure(
    model_config: &Gemma3Config,
    config: &BenchConfig,
    dtype: ModelDtype,
    device: &Device,
) -> Result<((usize, usize, f64, f64), ScoringTimes)> {
    let shape = &config.shape;
    let model = bench_model(model_config, config, dtype, device);
    let model = trainable_model(
        model,
        true,
        Some(&LoraConfig::chexreason()),
        config.seed,
        device,
    );
    let ad = device_of(&model);
    let checkpointing = checkpointing_on(config.gradient_checkpointing, device);
    let prompts = image_prompts(model_config, shape.score_prompts, shape.text_tokens);
    let pixels = random_pixels(model_config, shape.score_prompts, &ad);
    let vocab = model_config.text_config.vocab_size as u32;
    let completion: Vec<u32> = (0..shape.new_tokens as u32)
        .map(|i| (30 + i) % vocab)
        .collect();
    let rows: Vec<ScoringRow> = (0..shape.score_prompts * shape.samples)
        .map(|r| ScoringRow {
            prompt: &prompts[r / shape.samples].ids,
            image_block: prompts[r / shape.samples].image_block.as_ref(),
            completion: &completion,
        })
        .collect();
    let image_of_row: Vec<usize> = (0..rows.len()).map(|r| r / shape.samples).collect();
    let sync = || {
        ad.sync()
            .map_err(|e| Error::setting("bench", format!("device: {e:?}")))
    };
    // One pass, with `mark` called after each phase.
    let pass = |mark: &mut dyn FnMut() -> Result<()>| -> Result<usize> {
        let features = model.encode_images(pixels.clone())?;
        mark()?;
        let (scores, graph) = score_for_training(
            &model,
            &rows,
            Some(ImageInputs {
                features: &features,
                image_of_row: &image_of_row,
            }),
            SamplingConfig::chexreason().temperature,
            checkpointing,
            &ad,
        );
        let loss = scores.logprobs.sum();
        mark()?;
        let gradients = graph.gradients(loss, &model);
        mark()?;
        drop(gradients);
        Ok(rows.len() * completion.len())
    };
    let mut issued = Vec::with_capacity(shape.repeats + 1);
    let (seconds, tokens) = timed(shape.repeats, || {
        let started = Instant::now();
        let tokens = pass(&mut || Ok(()))?;
        issued.push(started.elapsed().as_secs_f64());
        // An asynchronous device may still be running the backward pass.
        sync()?;
        Ok(tokens)
    })?;
    // The first entry is the warm-up's.
    let mut issued = issued.split_off(1);
    issued.sort_by(f64::total_cmp);
    let host_seconds = issued.get(issued.len() / 2).copied();
    // On a CPU backend each phase already finishes before the next begins, and the figure's
    // time is the sum; on a GPU one more pass, synchronised after each phase, splits it.
    let phases = if chex_model::device::is_accelerator(device) {
        let mut marks = Vec::with_capacity(3);
        let mut last = Instant::now();
        pass(&mut || {
            sync()?;
            marks.push(last.elapsed().as_secs_f64());
            last = Instant::now();
            Ok(())
        })?;
        match marks[..] {
            [encode, forward, backward] => Some(ScorePhases {
                encode,
                forward,
                backward,
            }),
            _ => None,
        }
    } else {
        None
    };
    let profile = match &config.profile {
        Some(dir) => Some(profiled_pass(dir, device, || {
            pass(&mut || Ok(()))?;
            sync()
        })?),
        None => None,
    };
    Ok((
        (rows.len(), shape.new_tokens, seconds, tokens),
        ScoringTimes {
            host: host_seconds,
            phases,
            profile,
        },
    ))
}

/// Run `pass` once under PyTorch's profiler, writing `score-trace.json` and `score-ops.tsv`
/// under `dir`, and return the longest entries: GPU kernels on a GPU, host operators otherwise.
fn profiled_pass(
    dir: &Path,
    device: &Device,
    pass: impl FnOnce() -> Result<()>,
) -> Result<PassProfile> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let gpu = chex_model::device::is_accelerator(device);
    let (done, times) = profile(gpu, Some(&dir.join("score-trace.json")), pass)?;
    done?;
    let mut table = String::from("device\tname\tcalls\tseconds\n");
    for t in &times {
        table += &format!("{}\t{}\t{}\t{:.9}\n", t.device, t.name, t.calls, t.seconds);
    }
    let ops = dir.join("score-ops.tsv");
    chex_data::write_atomic(&ops, table.as_bytes()).map_err(|e| Error::io(&ops, e))?;
    let wanted = if gpu { "cuda" } else { "cpu" };
    let gpu_busy_seconds = times
        .iter()
        .filter(|t| t.device == "cuda")
        .fold(0.0, |busy, t| busy + t.seconds);
    let top = times
        .into_iter()
        .filter(|t| t.device == wanted)
        .take(15)
        .map(|mut t| {
            if let Some((cut, _)) = t.name.char_indices().nth(120) {
                t.name.truncate(cut);
            }
            t
        })
        .collect();
    Ok(PassProfile {
        gpu_busy_seconds,
        top,
    })
}

/// The scoring figure's extra times (see [`Measurement::host_seconds`] and
/// [`Measurement::phase_seconds`]); none for the other figures.
#[derive(Default)]
struct ScoringTimes {
    host: Option<f64>,
    phases: Option<ScorePhases>,
    profile: Option<PassProfile>,
}

/// The GRPO settings of a step figure: ChexReason's (LoRA r16, β 0.15, dr_grpo, 4 prompts ×
/// G 4), or TRL's CPU baseline's (2 prompts × 4, every weight trained, learning rate 1e-5).
pub fn step_config(figure: Figure, new_tokens: usize, seed: u64) -> GrpoConfig {
    let mut config = GrpoConfig::chexreason();
    config.max_completion_length = new_tokens;
    config.seed = seed;
    config.loss.loss_type = LossType::DrGrpo;
    config.loss.beta = 0.15;
    if figure == Figure::TrlCpuStep {
        config.lora = None;
        config.prompts_per_step = 2;
        config.group_size = 4;
    }
    config
}

fn grpo_step_figure(
    model_config: &Gemma3Config,
    config: &BenchConfig,
    figure: Figure,
    dtype: ModelDtype,
    device: &Device,
) -> Result<(usize, usize, f64, f64)> {
    let shape = &config.shape;
    let mut grpo = step_config(figure, shape.new_tokens, config.seed);
    grpo.gradient_checkpointing = config.gradient_checkpointing;
    let registry = RewardRegistry::builtin();
    grpo.validate(&registry)?;
    let policy = bench_policy(model_config, config, dtype, device)?;
    let pool = example_pool(model_config, 16);
    // The trainer itself, so the figure is what a training step costs: one warm-up step, then
    // the timed ones (its own per-step wall time, rollout and update, before any saving);
    // nothing validated or sampled on the way.
    grpo.steps = shape.repeats + 1;
    grpo.eval_every = 0;
    grpo.sample_every = 0;
    let out = tempfile::tempdir().map_err(|e| Error::io(&std::env::temp_dir(), e))?;
    train_grpo_with(
        policy,
        &pool,
        &[],
        &grpo,
        &registry,
        out.path(),
        false,
        device,
    )?;
    let log = out.path().join("grpo_log.jsonl");
    let records: Vec<GrpoStepRecord> = read_jsonl(&log)?;
    let rows = grpo.prompts_per_step * grpo.group_size;
    let timed = records.get(1..).unwrap_or_default();
    let median = median_step_time(timed.iter().map(|r| r.step_time).collect(), &log)?;
    let tokens = timed
        .iter()
        .map(|r| r.completions_mean_length * rows as f64)
        .sum::<f64>()
        / timed.len() as f64;
    Ok((rows, shape.new_tokens, median, tokens))
}

/// The preset's configuration, cut to `config.layers` layers per tower when asked (refused
/// when zero; a tower with fewer layers keeps them all).
fn bench_model_config(config: &BenchConfig) -> Result<Gemma3Config, Error> {
    let mut model_config = Gemma3Config::preset(&config.preset)?;
    if let Some(layers) = config.layers {
        if layers == 0 {
            return Err(Error::setting("layers", "must be at least 1"));
        }
        let text = &mut model_config.text_config.num_hidden_layers;
        *text = (*text).min(layers);
        let vision = &mut model_config.vision_config.num_hidden_layers;
        *vision = (*vision).min(layers);
        model_config.validate()?;
    }
    Ok(model_config)
}

/// The preset's random weights in `dtype`, drawn on the device: speed and memory do not depend
/// on the values, and the host's single generator would take about a minute per figure at 4B.
fn bench_model(
    model_config: &Gemma3Config,
    config: &BenchConfig,
    dtype: ModelDtype,
    device: &Device,
) -> Gemma3ForConditionalGeneration {
    Gemma3ForConditionalGeneration::drawn_on(model_config, config.seed, dtype, device)
}

/// [`bench_model`] with the preset's tokenizer, asked in the structured-steps style.
fn bench_policy(
    model_config: &Gemma3Config,
    config: &BenchConfig,
    dtype: ModelDtype,
    device: &Device,
) -> Result<Policy> {
    let model = bench_model(model_config, config, dtype, device);
    let tokenizer = preset_tokenizer(model_config)?;
    Policy::new(model, tokenizer, PromptVariant::StructuredSteps)
}

/// The median of the timed steps' wall times read from `log`.
fn median_step_time(mut seconds: Vec<f64>, log: &Path) -> Result<f64> {
    seconds.sort_by(f64::total_cmp);
    seconds
        .get(seconds.len() / 2)
        .copied()
        .ok_or_else(|| Error::setting("bench", format!("{} holds no timed step", log.display())))
}

/// `count` labelled examples with fixed synthetic images of the model's size.
fn example_pool(model_config: &Gemma3Config, count: usize) -> Vec<Example> {
    let side = model_config.vision_config.image_size as u32;
    (0..count)
        .map(|i| Example {
            path: format!("bench-{i}.png").into(),
            image: Arc::new(PreparedImage {
                size: side,
                pixels: (0..side * side)
                    .map(|p| ((p as usize * 7 + i * 13) % 255) as f32 / 127.5 - 1.0)
                    .collect(),
            }),
            labels: vec![chex_data::CHEXPERT_LABELS[1 + i % 13].to_string()],
            reasoning: None,
        })
        .collect()
}

/// A teacher trace of at least `tokens` answer tokens under `policy`'s tokenizer.
fn trace_of_length(policy: &Policy, tokens: usize) -> Result<String> {
    const WORDS: [&str; 10] = [
        "The",
        "cardiac",
        "silhouette",
        "is",
        "enlarged;",
        "there",
        "is",
        "blunting",
        "of",
        "the",
    ];
    let mut text = String::from("<think>");
    let mut words = WORDS.iter().cycle();
    while policy.answer_ids(&format!("{text}</think>"))?.len() < tokens {
        text.push(' ');
        text.push_str(words.next().copied().unwrap_or("the"));
    }
    Ok(format!("{text}</think>"))
}

/// The SFT trainer itself for one warm-up and `repeats` timed steps at ChexReason's settings
/// (LoRA r16, effective batch 8 in micro-batches of 4), each completion `new_tokens` long.
fn sft_step_figure(
    model_config: &Gemma3Config,
    config: &BenchConfig,
    dtype: ModelDtype,
    device: &Device,
) -> Result<(usize, usize, f64, f64)> {
    let shape = &config.shape;
    let mut sft = SftConfig::chexreason();
    sft.epochs = 1;
    sft.seed = config.seed;
    sft.gradient_checkpointing = config.gradient_checkpointing;
    // One held-out example: the epoch is the timed steps and one small validation pass.
    sft.validation_fraction = 0.01;
    let policy = bench_policy(model_config, config, dtype, device)?;
    let trace = trace_of_length(&policy, shape.new_tokens)?;
    let completion = policy.answer_ids(&trace)?.len();
    let steps = shape.repeats + 1;
    let pool: Vec<Example> = example_pool(model_config, steps * sft.effective_batch + 1)
        .into_iter()
        .map(|e| Example {
            reasoning: Some(trace.clone()),
            ..e
        })
        .collect();
    let out = tempfile::tempdir().map_err(|e| Error::io(&std::env::temp_dir(), e))?;
    train_sft(policy, &pool, &sft, out.path(), false, device)?;
    let log = out.path().join("sft_log.jsonl");
    let records: Vec<SftLogRecord> = read_jsonl(&log)?;
    let seconds = records
        .iter()
        .filter_map(|r| match r {
            SftLogRecord::Step(step) => Some(step.step_time),
            SftLogRecord::Epoch(_) => None,
        })
        .skip(1)
        .collect();
    let median = median_step_time(seconds, &log)?;
    let rows = sft.effective_batch;
    Ok((rows, completion, median, (rows * completion) as f64))
}

/// Peak memory while a figure runs: the host's peak resident set on CPU backends (reset when
/// the figure starts), the GPU's used memory polled through `nvidia-smi` on CUDA ones.
struct MemoryProbe {
    kind: MemoryKind,
}

enum MemoryKind {
    Host,
    Gpu {
        stop: std::sync::mpsc::Sender<()>,
        poller: std::thread::JoinHandle<Option<f64>>,
    },
}

impl MemoryProbe {
    fn start(device: DeviceChoice) -> Self {
        let kind = match device {
            DeviceChoice::TchCuda(index) | DeviceChoice::Cuda(index) => {
                let (stop, stopped) = std::sync::mpsc::channel::<()>();
                let poller = std::thread::spawn(move || {
                    let mut peak: Option<f64> = None;
                    loop {
                        if let Some(mib) = gpu_used_mib(index) {
                            peak = Some(peak.map_or(mib, |p: f64| p.max(mib)));
                        }
                        if stopped
                            .recv_timeout(std::time::Duration::from_millis(100))
                            .is_ok()
                        {
                            return peak.map(|mib| mib / 1024.0);
                        }
                    }
                });
                MemoryKind::Gpu { stop, poller }
            }
            _ => {
                // Writing 5 resets the peak resident set (Linux ≥ 4.0); elsewhere the peak
                // is the process's so far.
                let _ = std::fs::write("/proc/self/clear_refs", "5");
                MemoryKind::Host
            }
        };
        Self { kind }
    }

    fn finish(self) -> (Option<f64>, &'static str) {
        match self.kind {
            MemoryKind::Host => (host_peak_gib(), "host peak RSS"),
            MemoryKind::Gpu { stop, poller } => {
                let _ = stop.send(());
                (poller.join().ok().flatten(), "nvidia-smi used")
            }
        }
    }
}

fn host_peak_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

fn gpu_used_mib(index: usize) -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.used",
            "--format=csv,noheader,nounits",
            &format!("--id={index}"),
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_measures_the_tiny_preset() {
        let config = BenchConfig {
            preset: "tiny".into(),
            device: "cpu".into(),
            figures: Figure::ALL.to_vec(),
            shape: BenchShape {
                rollout_prompts: 2,
                samples: 2,
                text_tokens: 6,
                new_tokens: 4,
                score_prompts: 1,
                repeats: 1,
                sampling: SamplingConfig::chexreason(),
            },
            seed: 1,
            gradient_checkpointing: Some(true),
            dtype: None,
            profile: None,
            layers: None,
        };
        let mut seen = Vec::new();
        run_bench(&config, &mut |m| seen.push(m.clone())).unwrap();
        assert_eq!(
            seen.iter().map(|m| m.figure).collect::<Vec<_>>(),
            Figure::ALL
        );
        let rollout = &seen[0];
        assert_eq!((rollout.rows, rollout.new_tokens), (4, 4));
        // No stop tokens: every row generates all its tokens.
        assert!((rollout.tokens_per_s * rollout.seconds - 16.0).abs() < 1e-6);
        assert_eq!(rollout.greedy, Some(false));
        // The GPU-only fields stay out of a CPU run's lines.
        assert!(rollout.graph_replays.is_none() && seen[1].phase_seconds.is_none());
        assert_eq!((seen[2].rows, seen[3].rows, seen[4].rows), (16, 8, 8));
        // The SFT step: 8 completions of at least the asked length, every token counted.
        let sft = &seen[4];
        assert!(sft.new_tokens >= 4, "{sft:?}");
        assert!((sft.tokens_per_s * sft.seconds - 8.0 * sft.new_tokens as f64).abs() < 1e-6);
        assert!(!seen[0].gradient_checkpointing && seen[1].gradient_checkpointing);
        for m in &seen {
            assert!(m.seconds > 0.0 && m.tokens_per_s > 0.0, "{m:?}");
            if cfg!(target_os = "linux") {
                assert!(m.peak_memory_gib.is_some_and(|g| g > 0.0), "{m:?}");
            }
            let line = serde_json::to_string(m).unwrap();
            assert!(line.contains("\"figure\":\""), "{line}");
            assert!(
                line.contains("\"dtype\":\"f32\""),
                "the CPU default: {line}"
            );
        }

        // bf16 where asked, refused where the backend has none.
        let bf16 = BenchConfig {
            figures: vec![Figure::Rollout, Figure::Score],
            dtype: Some(ModelDtype::Bf16),
            ..config
        };
        let mut seen = Vec::new();
        run_bench(&bf16, &mut |m| seen.push(m.clone())).unwrap();
        assert!(
            seen.iter()
                .all(|m| m.dtype == ModelDtype::Bf16 && m.tokens_per_s > 0.0)
        );
        if cfg!(feature = "ndarray") {
            let refused = BenchConfig {
                device: "ndarray".into(),
                ..bf16
            };
            let err = run_bench(&refused, &mut |_| {}).unwrap_err().to_string();
            assert!(err.contains("model.dtype") && err.contains("f32"), "{err}");
        }
    }

    /// The scoring figure alone on flex, at a few tokens, without checkpointing.
    fn small_scoring(preset: &str) -> BenchConfig {
        BenchConfig {
            preset: preset.into(),
            device: "cpu".into(),
            figures: vec![Figure::Score],
            shape: BenchShape {
                new_tokens: 4,
                score_prompts: 1,
                samples: 2,
                repeats: 1,
                ..BenchShape::peer()
            },
            seed: 1,
            gradient_checkpointing: Some(false),
            dtype: None,
            profile: None,
            layers: None,
        }
    }

    /// `--layers` keeps a preset's widths with fewer layers, says so in every line, and zero is
    /// refused before any work.
    #[test]
    fn layers_cut_a_preset_short_and_say_so() {
        let config = BenchConfig {
            layers: Some(1),
            ..small_scoring("small")
        };
        let cut = bench_model_config(&config).unwrap();
        let full = Gemma3Config::preset("small").unwrap();
        assert_eq!(
            (
                cut.text_config.num_hidden_layers,
                cut.vision_config.num_hidden_layers
            ),
            (1, 1)
        );
        assert_eq!(cut.text_config.hidden_size, full.text_config.hidden_size);
        assert_eq!(cut.text_config.vocab_size, full.text_config.vocab_size);
        let many = bench_model_config(&BenchConfig {
            layers: Some(100),
            ..config.clone()
        })
        .unwrap();
        assert_eq!(
            many.text_config.num_hidden_layers,
            full.text_config.num_hidden_layers
        );
        let mut seen = Vec::new();
        run_bench(&config, &mut |m| seen.push(m.clone())).unwrap();
        let line = serde_json::to_string(&seen[0]).unwrap();
        assert!(line.contains("\"layers\":1"), "{line}");
        let err = run_bench(
            &BenchConfig {
                layers: Some(0),
                ..config
            },
            &mut |_| panic!("measured with no layers"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("layers"), "{err}");
    }

    /// `--profile` is refused before any work where PyTorch's profiler sees nothing, and with
    /// the `profiler` feature on tch-cpu writes the scoring pass's operators and trace.
    #[test]
    fn a_profile_is_refused_off_libtorch_and_written_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = BenchConfig {
            profile: Some(dir.path().join("profile")),
            ..small_scoring("tiny")
        };
        let err = run_bench(&config, &mut |_| panic!("measured on flex"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("libtorch devices only"), "{err}");
        let err = run_bench(
            &BenchConfig {
                figures: vec![Figure::Rollout],
                device: "tch-cpu".into(),
                ..config.clone()
            },
            &mut |_| panic!("measured without the scoring figure or the profiler"),
        )
        .unwrap_err()
        .to_string();
        if !cfg!(feature = "profiler") {
            assert!(err.contains("--features profiler"), "{err}");
            return;
        }
        assert!(err.contains("add `score`"), "{err}");
        let on_libtorch = BenchConfig {
            device: "tch-cpu".into(),
            ..config
        };
        let mut seen = Vec::new();
        run_bench(&on_libtorch, &mut |m| seen.push(m.clone())).unwrap();
        let profile = seen[0].profile.as_ref().expect("a profile");
        assert_eq!(profile.gpu_busy_seconds, 0.0);
        assert!(
            profile.top.iter().any(|t| t.name.contains("mm")),
            "no matrix product among {:?}",
            profile.top
        );
        let ops = std::fs::read_to_string(dir.path().join("profile/score-ops.tsv")).unwrap();
        assert!(ops.lines().count() > 10, "{ops}");
        // Operators carry their inputs' shapes and types (what scripts/traffic-census.py reads).
        let trace = std::fs::read_to_string(dir.path().join("profile/score-trace.json")).unwrap();
        assert!(trace.contains("\"Input Dims\"") && trace.contains("\"Input type\""));
    }
}
