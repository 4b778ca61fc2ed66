//! `chex sweep`: one study configuration over a grid of settings × seeds.

use std::path::PathBuf;

use chex_grpo::study::StudyConfig;
use chex_grpo::sweep::{GridAxis, SweepPlan, run_sweep};
use clap::Args;

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// `chex sweep`.
#[derive(Args)]
pub struct SweepArgs {
    /// The study configuration every run starts from, e.g. configs/tiny-cpu.toml.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// A setting for every run (repeatable), as `chex run --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// A setting to vary, e.g. `data.synthetic.cue=0,0.9` (repeatable; the cells are every
    /// combination).
    #[arg(long, value_name = "KEY=V1,V2,…")]
    grid: Vec<GridAxis>,
    /// Runs per cell, seeded from --first-seed upwards.
    #[arg(long, default_value_t = 3, conflicts_with = "seed_list")]
    seeds: usize,
    /// The first seed (default: the configuration's).
    #[arg(long)]
    first_seed: Option<u64>,
    /// The seeds, listed (instead of --seeds).
    #[arg(long, value_delimiter = ',')]
    seed_list: Vec<u64>,
    /// The sweep's folder; running again with the same plan continues where it stopped.
    #[arg(long, default_value = "outputs/sweep")]
    out: PathBuf,
}

pub fn run(args: SweepArgs) -> CliResult {
    let seeds = if args.seed_list.is_empty() {
        if args.seeds == 0 || args.seeds > 1000 {
            return Err(format!("--seeds must lie in 1..=1000, got {}", args.seeds).into());
        }
        let first = match args.first_seed {
            Some(seed) => seed,
            None => StudyConfig::from_file(&args.config, &args.overrides)?.seed,
        };
        (0..args.seeds as u64).map(|i| first + i).collect()
    } else {
        args.seed_list
    };
    let plan = SweepPlan {
        config: args.config,
        overrides: args.overrides,
        grid: args.grid,
        seeds,
        out: args.out,
    };
    let summary = run_sweep(&plan)?;
    println!();
    for (c, cell) in summary.cells.iter().enumerate() {
        println!("{}: {}", cell.name, summary.verdict(c));
    }
    println!("\nsweep: {}", plan.out.join("sweep.md").display());
    Ok(())
}
