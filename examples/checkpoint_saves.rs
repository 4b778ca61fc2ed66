//! How long a training checkpoint takes to save, the first time in a stage and after, for a
//! LoRA model: the frozen base goes to `frozen.bpk` at the first save and is linked into every
//! later one (`chex_grpo::training::checkpoint::FrozenWeights`), while the adapters and their
//! optimizer state are written each time.
//!
//! `cargo run --release --example checkpoint_saves -- --layers 2` saves a MedGemma-4B-width
//! model (its 262,208-token embedding, `--layers` decoder and vision layers) in bf16 with
//! LoRA r16 three times into a temporary folder on flex, and prints one JSON line per save:
//! seconds, and the sizes of `model.bpk` and `frozen.bpk`.

use std::time::Instant;

use chex_grpo::model::burn::optim::AdamWConfig;
use chex_grpo::model::burn::tensor::Device;
use chex_grpo::model::lora::LoraConfig;
use chex_grpo::model::{Gemma3Config, Gemma3ForConditionalGeneration, ModelDtype};
use chex_grpo::training::checkpoint::{FrozenWeights, TrainingState, save_checkpoint};
use chex_grpo::training::trainable_model;
use clap::Parser;

/// Time three saves of one LoRA model.
#[derive(Parser, Debug)]
struct Args {
    /// Model preset whose widths and vocabulary to use.
    #[arg(long, default_value = "medgemma-4b")]
    preset: String,
    /// Decoder layers, and vision layers, to keep.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Precision of the frozen weights: bf16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: ModelDtype,
    /// Saves to time.
    #[arg(long, default_value_t = 3)]
    saves: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut config = Gemma3Config::preset(&args.preset)?;
    config.text_config.num_hidden_layers = args.layers;
    config.text_config.layer_types = None;
    config.vision_config.num_hidden_layers = args.layers;
    config.validate()?;
    let device = Device::flex();
    let model = Gemma3ForConditionalGeneration::drawn_on(&config, 0, args.dtype, &device);
    let lora = LoraConfig::chexreason();
    let model = trainable_model(model, true, Some(&lora), 0, &device);
    let optimizer = AdamWConfig::new().init();
    let out = tempfile::tempdir()?;
    let mut state = TrainingState::start("grpo", 0);
    let mut frozen = FrozenWeights::default();
    for save in 1..=args.saves {
        state.step = save;
        let started = Instant::now();
        let path = save_checkpoint(
            out.path(),
            "grpo-last",
            &model,
            &optimizer,
            &state,
            Some(&lora),
            &mut frozen,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let size = |name: &str| std::fs::metadata(path.join(name)).map(|m| m.len()).ok();
        println!(
            "{}",
            serde_json::json!({
                "save": save,
                "seconds": seconds,
                "model_bpk_bytes": size("model.bpk"),
                "frozen_bpk_bytes": size("frozen.bpk"),
            })
        );
    }
    Ok(())
}
