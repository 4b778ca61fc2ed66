//! `chex run | sft | grpo | eval | generate | report`: the study's stages over one output folder.

use std::path::PathBuf;

use chex_grpo::data::{ImageCache, ImageSpec, PreparedImage};
use chex_grpo::evaluation::{AnswerSettings, answer_images};
use chex_grpo::model::sampling::SamplingConfig;
use chex_grpo::rewards::{RewardContext, RewardRegistry};
use chex_grpo::study::evaluate::{evaluate_checkpoint, print_scores};
use chex_grpo::study::pipeline::{
    grpo_stage, initial_policy, model_config, open_study, pretrain_stage, sft_stage, study_device,
    tensorboard_mirrors,
};
use chex_grpo::study::{Report, StudyConfig, load_policy, run_study, write_report};
use clap::Args;

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Where the configuration comes from and what the command line changes in it.
#[derive(Args)]
pub struct ConfigArgs {
    /// The study configuration (TOML), e.g. configs/tiny-cpu.toml; unset keys take
    /// ChexReason's defaults.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Override any configuration value, e.g. `--set grpo.steps=20 --set sft.lora=none`
    /// (repeatable; values are read as TOML, otherwise as text).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Output folder (the config's `out`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Backend and device: cpu, ndarray, tch-cpu, tch-cuda:N or cuda:N (the config's `device`).
    #[arg(long)]
    device: Option<String>,
    /// Seed of data, draws, initialisation and bootstrap (the config's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Root of an NIH ChestX-ray14 folder; replaces the root of every NIH source.
    #[arg(long, value_name = "DIR")]
    nih_root: Option<PathBuf>,
    /// Continue from the checkpoints, logs and metrics already in the output folder.
    #[arg(long)]
    resume: bool,
    /// Read image paths that are absolute or climb out of their dataset's folder (the
    /// config's `data.allow_absolute_paths`).
    #[arg(long)]
    allow_absolute_paths: bool,
}

impl ConfigArgs {
    fn resolve(&self) -> Result<StudyConfig, Box<dyn std::error::Error>> {
        let mut config = StudyConfig::from_file(&self.config, &self.overrides)?;
        if let Some(out) = &self.out {
            config.out = out.clone();
        }
        if let Some(device) = &self.device {
            config.device = device.clone();
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if let Some(root) = &self.nih_root {
            config.set_nih_root(root);
        }
        if self.allow_absolute_paths {
            config.data.allow_absolute_paths = true;
        }
        Ok(config)
    }
}

/// `chex run`: the whole study.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// `chex sft` / `chex grpo`: one training stage.
#[derive(Args)]
pub struct StageArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// `chex eval`: score one checkpoint on every test set.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Which checkpoint of the output folder: base, sft or grpo.
    #[arg(long, default_value = "grpo")]
    checkpoint: String,
}

/// `chex generate`: answer a few images with one checkpoint.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Which checkpoint of the output folder: base, sft or grpo.
    #[arg(long, default_value = "grpo")]
    checkpoint: String,
    /// Images to read (PNG or JPEG).
    #[arg(long, required = true, num_args = 1..)]
    image: Vec<PathBuf>,
    /// Sampling temperature (0 is greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Answers per image (1 to 256).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    samples: u64,
    /// Longest answer in tokens, 1 to 32768 (default: the config's eval.max_new_tokens).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=32768))]
    max_new_tokens: Option<u64>,
}

/// `chex report`: rebuild the report from an output folder.
#[derive(Args)]
pub struct ReportArgs {
    /// The run's output folder (with config.toml, metrics/ and predictions/).
    #[arg(long)]
    out: PathBuf,
}

fn print_report(report: &Report) {
    for (title, table) in &report.tables {
        println!("\n## {title}\n\n{table}");
    }
    println!("{}\n", report.verdict);
    println!("report: {}", report.path.display());
}

pub fn run(args: RunArgs) -> CliResult {
    let config = args.config.resolve()?;
    let report = run_study(&config, args.config.resume)?;
    print_report(&report);
    Ok(())
}

pub fn sft(args: StageArgs) -> CliResult {
    let config = args.config.resolve()?;
    let (device, data) = open_study(&config)?;
    let mirrors = tensorboard_mirrors(&config);
    let mut policy = initial_policy(&config, &device)?;
    if config.pretrains() {
        policy = pretrain_stage(policy, &data, &config, args.config.resume, &device)?;
    }
    sft_stage(policy, &data, &config, args.config.resume, &device)?;
    if let Some(mirrors) = mirrors {
        mirrors.finish()?;
    }
    println!(
        "SFT checkpoints: {}",
        config.out.join("checkpoints").display()
    );
    Ok(())
}

pub fn grpo(args: StageArgs) -> CliResult {
    let config = args.config.resolve()?;
    let (device, data) = open_study(&config)?;
    let mirrors = tensorboard_mirrors(&config);
    let policy = load_policy(&config, "sft", &device)?;
    let rewards = RewardRegistry::builtin();
    grpo_stage(
        policy,
        &data,
        &config,
        &rewards,
        args.config.resume,
        &device,
    )?;
    if let Some(mirrors) = mirrors {
        mirrors.finish()?;
    }
    println!(
        "GRPO checkpoints: {}",
        config.out.join("checkpoints").display()
    );
    Ok(())
}

pub fn eval(args: EvalArgs) -> CliResult {
    let config = args.config.resolve()?;
    let (device, data) = open_study(&config)?;
    let policy = load_policy(&config, &args.checkpoint, &device)?;
    let scores = evaluate_checkpoint(&policy, &args.checkpoint, &data.tests, &config, &device)?;
    print_scores(&args.checkpoint, &data.tests, &scores);
    println!("metrics: {}", config.out.join("metrics").display());
    Ok(())
}

pub fn generate_answers(args: GenerateArgs) -> CliResult {
    let config = args.config.resolve()?;
    let device = study_device(&config)?;
    let policy = load_policy(&config, &args.checkpoint, &device)?;
    let size = model_config(&config)?.vision_config.image_size as u32;
    let cache = ImageCache::new(ImageSpec::siglip(size));
    let images = args
        .image
        .iter()
        .map(|p| cache.get(p))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&PreparedImage> = images.iter().map(|i| i.as_ref()).collect();
    let settings = AnswerSettings {
        max_new_tokens: args
            .max_new_tokens
            .map_or(config.eval.max_new_tokens, |n| n as usize),
        batch: config.eval.batch,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: 0,
        },
        samples_per_image: args.samples as usize,
        seed: config.seed,
    };
    let context = RewardContext::default();
    for answer in answer_images(&policy, &refs, &[], &settings, &context, &device)? {
        let labels: Vec<String> = answer
            .prepared
            .extracted
            .labels
            .iter()
            .map(|&i| context.vocabulary.labels()[i].clone())
            .collect();
        println!(
            "{} ({} tokens, {:?}):\n{}\nparsed labels: {}\n",
            args.image[answer.image].display(),
            answer.completion.tokens.len(),
            answer.completion.stop,
            answer.text,
            if answer.prepared.parsed.answer.is_some() {
                labels.join(", ")
            } else {
                "unparseable".into()
            }
        );
    }
    Ok(())
}

pub fn report(args: ReportArgs) -> CliResult {
    print_report(&write_report(&args.out)?);
    Ok(())
}
