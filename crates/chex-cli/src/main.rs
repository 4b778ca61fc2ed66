//! `chex`: the chex-grpo command line.

mod bench_cmd;
mod data_cmd;
mod model_cmd;
mod study_cmd;
mod sweep_cmd;

use clap::{Parser, Subcommand};

/// Train and evaluate chest X-ray vision-language models with SFT and GRPO.
#[derive(Parser)]
#[command(name = "chex", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write, inspect and check datasets.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Inspect model presets and checkpoints.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Run the whole study: pretrain (when on), evaluate the base model, SFT, evaluate, GRPO,
    /// evaluate, report.
    Run(study_cmd::RunArgs),
    /// Supervised fine-tuning on the SFT draw (writes checkpoints/sft-best and sft-last), after
    /// the pretrain stage when that is on.
    Sft(study_cmd::StageArgs),
    /// GRPO from the SFT checkpoint on the RL draw (writes checkpoints/grpo-best and grpo-last).
    Grpo(study_cmd::StageArgs),
    /// Score one checkpoint on every test set (writes predictions/ and metrics/).
    Eval(study_cmd::EvalArgs),
    /// Answer images with one checkpoint and show the parsed labels.
    Generate(study_cmd::GenerateArgs),
    /// Rebuild report.md and the figures from an output folder.
    Report(study_cmd::ReportArgs),
    /// Run the study over a grid of settings × seeds and summarise with intervals over seeds.
    Sweep(sweep_cmd::SweepArgs),
    /// Measure rollout, LoRA scoring and GRPO-step throughput and peak memory (JSON lines).
    Bench(bench_cmd::BenchArgs),
    /// Show the compiled backends and check that a device runs a computation.
    Device {
        /// Device to check: cpu, ndarray, tch-cpu, tch-cuda:N or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(command) => data_cmd::run(command),
        Command::Model(command) => model_cmd::run(command),
        Command::Run(args) => study_cmd::run(args),
        Command::Sft(args) => study_cmd::sft(args),
        Command::Grpo(args) => study_cmd::grpo(args),
        Command::Eval(args) => study_cmd::eval(args),
        Command::Generate(args) => study_cmd::generate_answers(args),
        Command::Report(args) => study_cmd::report(args),
        Command::Sweep(args) => sweep_cmd::run(args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Device { device } => check_device(&device),
    };
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn check_device(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    use chex_grpo::model::{compiled_backends, select_device};
    println!("compiled backends: {}", compiled_backends().join(", "));
    let device = select_device(spec)?;
    let x = burn_free_check(&device);
    println!("{spec}: ok ({x})");
    Ok(())
}

fn burn_free_check(device: &chex_grpo::model::burn::tensor::Device) -> String {
    use chex_grpo::model::burn::tensor::Tensor;
    let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], device);
    let sum = x.clone().matmul(x).sum().into_scalar::<f32>();
    format!("[[1,2],[3,4]]² sums to {sum}")
}
