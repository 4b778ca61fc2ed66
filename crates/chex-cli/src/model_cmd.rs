//! `chex model …`: inspect model presets and checkpoints.

use std::path::PathBuf;

use chex_grpo::model::Gemma3Config;
use chex_grpo::model::config::PRESETS;
use clap::Subcommand;

/// Inspect model configurations.
#[derive(Subcommand)]
pub enum ModelCommand {
    /// Print the shapes and the parameter count of each part of a preset or a checkpoint.
    Info {
        /// Named preset: tiny, small or medgemma-4b.
        #[arg(long, conflicts_with = "config")]
        preset: Option<String>,
        /// A Hugging Face `config.json` (or a folder holding one).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: ModelCommand) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        ModelCommand::Info {
            preset,
            config,
            json,
        } => {
            let (name, config) = match (preset, config) {
                (_, Some(path)) => {
                    let file = if path.is_dir() {
                        path.join("config.json")
                    } else {
                        path
                    };
                    (file.display().to_string(), Gemma3Config::from_file(&file)?)
                }
                (Some(p), None) => (p.clone(), Gemma3Config::preset(&p)?),
                (None, None) => {
                    return Err(
                        format!("give --preset ({}) or --config", PRESETS.join(", ")).into(),
                    );
                }
            };
            let counts = config.parameter_counts();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"model": name, "parameters": counts, "total": counts.total()})
                );
                return Ok(());
            }
            let v = &config.vision_config;
            let t = &config.text_config;
            let kinds = config.layer_kinds();
            let global = kinds
                .iter()
                .filter(|k| **k == chex_grpo::model::LayerKind::FullAttention)
                .count();
            println!("model {name}");
            println!(
                "  vision   SigLIP {}×{} px, {}-px patches, {} layers × {} wide, {} heads",
                v.image_size,
                v.image_size,
                v.patch_size,
                v.num_hidden_layers,
                v.hidden_size,
                v.num_attention_heads
            );
            println!(
                "  projector {} patches pooled to {} image tokens",
                config.patches_per_side().pow(2),
                config.mm_tokens_per_image
            );
            println!(
                "  decoder  Gemma 3, {} layers ({} global, {} sliding window {}) × {} wide, {} query / {} key-value heads of {}, vocabulary {}",
                t.num_hidden_layers,
                global,
                kinds.len() - global,
                t.sliding_window,
                t.hidden_size,
                t.num_attention_heads,
                t.num_key_value_heads,
                t.head_dim,
                t.vocab_size
            );
            let rows = [
                ("vision encoder", counts.vision),
                ("projector", counts.projector),
                ("token embedding", counts.embedding),
                ("decoder layers", counts.decoder),
                ("untied lm_head", counts.lm_head),
                ("total", counts.total()),
            ];
            println!("  parameters");
            for (part, n) in rows {
                println!("    {part:<16} {n:>15}");
            }
            Ok(())
        }
    }
}
