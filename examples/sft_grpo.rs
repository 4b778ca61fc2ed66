//! SFT then GRPO with the tiny preset on the synthetic site A, evaluating macro-F1 of the
//! untrained, SFT and GRPO policies on held-out site-A images.
//!
//! `cargo run --release --example sft_grpo` (a few minutes on two cores). Logs go to
//! `outputs/sft_grpo/{sft_log,grpo_log}.jsonl`.

use std::path::PathBuf;

use chex_grpo::corpus::preset_tokenizer;
use chex_grpo::data::synth::SynthConfig;
use chex_grpo::data::{
    ImageCache, ImageSpec, LoadOptions, ViewFilter, load_chexpert, write_synthetic_sites,
};
use chex_grpo::evaluation::{AnswerSettings, answer_images, chexpert_scores};
use chex_grpo::model::{Gemma3Config, Gemma3ForConditionalGeneration, select_device};
use chex_grpo::prompts::PromptVariant;
use chex_grpo::rewards::RewardContext;
use chex_grpo::training::examples::examples_from;
use chex_grpo::training::{GrpoConfig, Policy, SftConfig, train_grpo, train_sft};
use clap::Parser;

/// SFT then GRPO on the synthetic benchmark.
#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "data/synthetic")]
    data: PathBuf,
    #[arg(long, default_value = "outputs/sft_grpo")]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// SFT examples.
    #[arg(long, default_value_t = 400)]
    sft: usize,
    /// SFT epochs.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// GRPO steps.
    #[arg(long, default_value_t = 30)]
    grpo_steps: usize,
    /// GRPO learning rate.
    #[arg(long, default_value_t = 5e-4)]
    grpo_lr: f64,
    /// Held-out evaluation images.
    #[arg(long, default_value_t = 96)]
    eval: usize,
    /// Resume from the checkpoints in `--out`.
    #[arg(long)]
    resume: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = select_device(&args.device)?;
    device.seed(0);
    let sites = write_synthetic_sites(&args.data, &SynthConfig::default(), &|| {})?;
    let options = LoadOptions {
        view_filter: ViewFilter::Frontal,
        ..Default::default()
    };
    let train = load_chexpert(&sites.site_a_dir.join("train.csv"), &options)?;
    let test = load_chexpert(&sites.site_a_dir.join("valid.csv"), &options)?;
    let config = Gemma3Config::preset("tiny")?;
    let cache = ImageCache::new(ImageSpec::siglip(config.vision_config.image_size as u32));
    let sft_idx: Vec<usize> = (0..args.sft.min(train.len())).collect();
    let rl_idx: Vec<usize> = (args.sft..(args.sft + 400).min(train.len())).collect();
    let eval_idx: Vec<usize> = (0..args.eval.min(test.len())).collect();
    let sft_examples = examples_from(&train, &sft_idx, &cache)?;
    let rl_examples = examples_from(&train, &rl_idx, &cache)?;
    let eval_examples = examples_from(&test, &eval_idx, &cache)?;
    let tokenizer = preset_tokenizer(&config)?;
    let model = Gemma3ForConditionalGeneration::new(&config, &device);
    let policy = Policy::new(model, tokenizer, PromptVariant::StructuredSteps)?;
    let context = RewardContext::default();
    let report = |name: &str, policy: &Policy| -> Result<f64, Box<dyn std::error::Error>> {
        let images: Vec<_> = eval_examples.iter().map(|e| e.image.as_ref()).collect();
        let truths: Vec<_> = eval_examples
            .iter()
            .map(|e| e.truth(&context.vocabulary))
            .collect();
        let settings = AnswerSettings::greedy(128, 32);
        let answers = answer_images(policy, &images, &truths, &settings, &context, &device)?;
        let e = chexpert_scores(&answers)?;
        println!(
            "{name}: macro-F1 {:.3}, micro-F1 {:.3} on {} held-out images",
            e.macro_f1,
            e.micro_f1,
            eval_examples.len()
        );
        if let Some(a) = answers.first() {
            println!("  e.g. {}", a.text.replace('\n', " | "));
        }
        Ok(e.macro_f1)
    };
    report("untrained", &policy)?;
    let sft = SftConfig {
        epochs: args.epochs,
        learning_rate: 2e-3,
        lora: None,
        ..SftConfig::chexreason()
    };
    let outcome = train_sft(policy, &sft_examples, &sft, &args.out, args.resume, &device)?;
    println!(
        "SFT validation loss per epoch: {:?}",
        outcome.validation_losses
    );
    report("SFT", &outcome.policy)?;
    let grpo = GrpoConfig {
        steps: args.grpo_steps,
        learning_rate: args.grpo_lr,
        max_completion_length: 128,
        eval_every: 0,
        lora: Some(chex_grpo::model::lora::LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            ..chex_grpo::model::lora::LoraConfig::chexreason()
        }),
        ..GrpoConfig::chexreason()
    };
    let rl = train_grpo(
        outcome.policy,
        &rl_examples,
        &[],
        &grpo,
        &args.out,
        args.resume,
        &device,
    )?;
    let r = &rl.rewards;
    let third = (r.len() / 3).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    println!(
        "GRPO mean reward: first third {:.3}, last third {:.3}",
        mean(&r[..third]),
        mean(&r[r.len() - third..])
    );
    report("GRPO", &rl.policy)?;
    Ok(())
}
