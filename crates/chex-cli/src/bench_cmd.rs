//! `chex bench`: the throughput harness, one JSON line per figure.

use chex_grpo::bench::{BenchConfig, BenchShape, Figure, run_bench};
use chex_grpo::model::ModelDtype;
use chex_grpo::model::sampling::SamplingConfig;
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// Model preset: tiny, small or medgemma-4b (random weights of that shape).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Device: cpu, ndarray, tch-cpu, tch-cuda:N or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Figures to measure, comma-separated: rollout, score, grpo-step, trl-cpu-step, sft-step.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rollout,score,grpo-step,trl-cpu-step,sft-step"
    )]
    figures: Vec<Figure>,
    /// Timed repetitions of each figure after one warm-up (the median is printed).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    repeats: u64,
    /// New tokens per completion (GRPO's max_completion_length in the step figures).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=4096))]
    new_tokens: u64,
    /// Seed of the weights, inputs and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Gradient checkpointing in the scoring and GRPO figures: true or false (default: on
    /// for GPUs, as in training).
    #[arg(long)]
    gradient_checkpointing: Option<bool>,
    /// Precision of the weights: bf16 or f32 (default: bf16 on GPUs, f32 on CPUs; f16 is
    /// refused for Gemma 3).
    #[arg(long)]
    dtype: Option<ModelDtype>,
    /// Rollouts choose the most likely token, as evaluation decodes, instead of ChexReason's
    /// sampling (temperature 0.8, top-p 0.95).
    #[arg(long)]
    greedy: bool,
    /// Profile one more scoring pass with PyTorch's profiler and write DIR/score-trace.json
    /// (Chrome trace) and DIR/score-ops.tsv; the scoring line then lists the longest GPU
    /// kernels. Needs a libtorch device and a build with `--features profiler`.
    #[arg(long, value_name = "DIR")]
    profile: Option<std::path::PathBuf>,
    /// Keep only the first N layers of each tower: the preset's widths, vocabulary and lengths
    /// where all its layers would not fit or run, e.g. to profile MedGemma-4B's per-layer and
    /// head costs on a CPU (`scripts/traffic-census.py`).
    #[arg(long, value_name = "N")]
    layers: Option<usize>,
}

pub fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let shape = BenchShape {
        repeats: args.repeats as usize,
        new_tokens: args.new_tokens as usize,
        sampling: if args.greedy {
            SamplingConfig::greedy()
        } else {
            SamplingConfig::chexreason()
        },
        ..BenchShape::peer()
    };
    let config = BenchConfig {
        preset: args.preset,
        device: args.device,
        figures: args.figures,
        shape,
        seed: args.seed,
        gradient_checkpointing: args.gradient_checkpointing,
        dtype: args.dtype,
        profile: args.profile,
        layers: args.layers,
    };
    let mut failed = None;
    run_bench(
        &config,
        &mut |measurement| match serde_json::to_string(measurement) {
            Ok(line) => println!("{line}"),
            Err(e) => failed = Some(e),
        },
    )?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
