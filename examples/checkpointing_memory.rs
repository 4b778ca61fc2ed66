//! How much memory a training scoring pass keeps for its backward pass, with and without
//! gradient checkpointing, at a preset's widths and vocabulary but only a few decoder layers,
//! so that MedGemma-4B's shapes fit a CPU.
//!
//! `cargo run --release --example checkpointing_memory -- --preset medgemma-4b --layers 1
//! --rows 16` scores 16 text rows of 128 completion tokens on flex in f32, with LoRA r16
//! adapters, once with checkpointing and once without (each in a fresh process, so one pass's
//! freed memory does not hide the other's), and prints what the forward pass left resident
//! and the peak over forward and backward, in GiB above what the model itself takes (Linux
//! only: read from `/proc/self/status`).

use std::process::Command;

use chex_grpo::model::burn::module::Module;
use chex_grpo::model::burn::tensor::Device;
use chex_grpo::model::checkpointing::score_for_training;
use chex_grpo::model::lora::LoraConfig;
use chex_grpo::model::scoring::ScoringRow;
use chex_grpo::model::{Gemma3Config, Gemma3ForConditionalGeneration, ModelDtype};
use chex_grpo::training::trainable_model;
use clap::Parser;

/// Measure one scoring pass's kept and peak memory.
#[derive(Parser, Debug)]
struct Args {
    /// Model preset whose widths and vocabulary to use.
    #[arg(long, default_value = "medgemma-4b")]
    preset: String,
    /// Decoder layers to keep (the vision tower is not run).
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Rows scored at once.
    #[arg(long, default_value_t = 16)]
    rows: usize,
    /// Completion tokens per row.
    #[arg(long, default_value_t = 128)]
    completion: usize,
    /// Measure one setting in this process (what the parent runs twice).
    #[arg(long)]
    checkpointing: Option<bool>,
}

/// A `/proc/self/status` figure, in GiB.
fn status_gib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

fn measure(args: &Args, checkpointing: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Gemma3Config::preset(&args.preset)?;
    config.text_config.num_hidden_layers = args.layers;
    config.text_config.layer_types = None;
    let device = Device::flex();
    let model = Gemma3ForConditionalGeneration::drawn_on(&config, 0, ModelDtype::F32, &device);
    let model = trainable_model(model, true, Some(&LoraConfig::chexreason()), 0, &device);
    let ad = model.devices().remove(0);
    let vocab = config.text_config.vocab_size as u32;
    let prompt: Vec<u32> = vec![2, 30, 31, 32];
    let completion: Vec<u32> = (0..args.completion as u32)
        .map(|i| (40 + i) % vocab)
        .collect();
    let rows: Vec<ScoringRow> = (0..args.rows)
        .map(|_| ScoringRow {
            prompt: &prompt,
            image_block: None,
            completion: &completion,
        })
        .collect();
    let base = status_gib("VmRSS:").ok_or("no /proc/self/status")?;
    // Writing 5 resets the peak resident set to the current one.
    std::fs::write("/proc/self/clear_refs", "5")?;
    let (scores, graph) = score_for_training(&model, &rows, None, 1.0, checkpointing, &ad);
    let loss = scores.logprobs.sum().neg();
    let value = loss.clone().into_scalar::<f32>();
    let kept = status_gib("VmRSS:").ok_or("no VmRSS")? - base;
    let gradients = graph.gradients(loss, &model);
    let peak = status_gib("VmHWM:").ok_or("no VmHWM")? - base;
    println!(
        "{} layer(s), {} rows × {} tokens, vocabulary {vocab}, checkpointing {checkpointing}: \
         kept after the forward pass {kept:.2} GiB, peak {peak:.2} GiB (loss {value:.3}, {} \
         gradients)",
        args.layers,
        args.rows,
        args.completion,
        gradients.len()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(checkpointing) = args.checkpointing {
        return measure(&args, checkpointing);
    }
    let program = std::env::current_exe()?;
    for checkpointing in [true, false] {
        let status = Command::new(&program)
            .args(["--preset", &args.preset])
            .args(["--layers", &args.layers.to_string()])
            .args(["--rows", &args.rows.to_string()])
            .args(["--completion", &args.completion.to_string()])
            .args(["--checkpointing", &checkpointing.to_string()])
            .status()?;
        if !status.success() {
            return Err(
                format!("the measurement with checkpointing {checkpointing} failed").into(),
            );
        }
    }
    Ok(())
}
