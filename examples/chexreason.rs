//! The ChexReason study end to end on the built-in two-site benchmark.
//!
//! `cargo run --release --example chexreason` writes the synthetic sites (or reuses them),
//! draws ChexReason's balanced SFT / RL / validation sets from site A, pretrains the tiny model
//! on label-only answers at site C and evaluates it (the base), trains SFT, evaluates, trains GRPO from the SFT checkpoint, evaluates — each
//! checkpoint on site A's held-out patients (in distribution) and on site B (cross-site, NIH
//! vocabulary mapped to CheXpert, ChexReason's nine shared labels) — and writes
//! `outputs/chexreason/report.md` with its figures. Under ten minutes on two CPU cores.
//!
//! The settings are `configs/tiny-cpu.toml` (compiled in); `--config FILE` reads another and
//! `--set key=value` changes any value.

use std::path::PathBuf;

use chex_grpo::study::{StudyConfig, run_study};
use clap::Parser;

/// Run the ChexReason study on the synthetic two-site benchmark.
#[derive(Parser)]
struct Args {
    /// A study configuration; by default configs/tiny-cpu.toml as compiled in.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override any configuration value, e.g. `--set grpo.steps=10` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue an interrupted run from its output folder.
    #[arg(long)]
    resume: bool,
}

const TINY_CPU: &str = include_str!("../configs/tiny-cpu.toml");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => StudyConfig::from_file(path, &args.overrides)?,
        None => StudyConfig::from_toml(TINY_CPU, "configs/tiny-cpu.toml", &args.overrides)?,
    };
    if let Some(out) = &args.out {
        config.out = out.clone();
    }
    println!(
        "ChexReason study `{}` → {} (model {}, {} SFT / {} RL images, {} GRPO steps)",
        config.name,
        config.out.display(),
        config.model.preset.as_deref().unwrap_or("pretrained"),
        config.data.sft_size,
        config.data.rl_size,
        config.grpo.steps
    );
    let report = run_study(&config, args.resume)?;
    for (title, table) in &report.tables {
        println!("\n## {title}\n\n{table}");
    }
    println!("{}\n\nreport: {}", report.verdict, report.path.display());
    Ok(())
}
