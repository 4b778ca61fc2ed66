//! Sampled reports for a few chest X-rays from the vision-language model.
//!
//! `cargo run --release --example generate` uses the tiny preset (random weights, its own BPE
//! tokenizer) on images of the synthetic site A; `--checkpoint DIR` loads a Hugging Face folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`) instead, e.g. a MedGemma download or
//! a checkpoint our trainers wrote. Writes `outputs/generate/reports.md`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use chex_grpo::corpus::preset_tokenizer;
use chex_grpo::data::synth::SynthConfig;
use chex_grpo::data::{
    ImageCache, ImageSpec, LoadOptions, UncertaintyPolicy, ViewFilter, load_chexpert,
    write_synthetic_sites,
};
use chex_grpo::inputs::pixel_batch;
use chex_grpo::model::checkpoint::from_pretrained;
use chex_grpo::model::generation::{GenerationConfig, generate};
use chex_grpo::model::prompt::encode_prompt;
use chex_grpo::model::sampling::SamplingConfig;
use chex_grpo::model::{
    ChexTokenizer, Gemma3Config, Gemma3ForConditionalGeneration, select_device,
};
use chex_grpo::prompts::PromptVariant;
use chex_grpo::rewards::{LabelVocabulary, OutputFormat, ParseMode, extract_labels, parse_output};
use clap::Parser;

/// Sample reports for a few images.
#[derive(Parser, Debug)]
struct Args {
    /// Hugging Face checkpoint folder; without it, a random model of `--preset`.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Preset used without a checkpoint (tiny or small).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Backend: cpu, ndarray, tch-cpu, tch-cuda:N or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where the synthetic sites are (written when missing).
    #[arg(long, default_value = "data/synthetic")]
    data: PathBuf,
    /// Images to report on.
    #[arg(long, default_value_t = 4)]
    images: usize,
    /// Completions sampled per image.
    #[arg(long, default_value_t = 2)]
    samples: usize,
    /// Longest completion.
    #[arg(long, default_value_t = 96)]
    max_new_tokens: usize,
    /// Seed of the model initialisation and of sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "outputs/generate")]
    out: PathBuf,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = select_device(&args.device)?;
    device.seed(args.seed);
    let (model, tokenizer) = match &args.checkpoint {
        Some(dir) => (
            from_pretrained(dir, &device)?,
            ChexTokenizer::from_file(&dir.join("tokenizer.json"))?,
        ),
        None => {
            let config = Gemma3Config::preset(&args.preset)?;
            let tokenizer = preset_tokenizer(&config)?;
            (
                Gemma3ForConditionalGeneration::new(&config, &device),
                tokenizer,
            )
        }
    };
    tokenizer.check_against(&model.config)?;

    let sites = write_synthetic_sites(&args.data, &SynthConfig::default(), &|| {})?;
    let options = LoadOptions {
        view_filter: ViewFilter::Frontal,
        ..Default::default()
    };
    let test = load_chexpert(&sites.site_a_dir.join("valid.csv"), &options)?;
    let samples: Vec<_> = test.samples.iter().take(args.images).collect();
    let cache = ImageCache::new(ImageSpec::siglip(
        model.config.vision_config.image_size as u32,
    ));
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.image.clone()).collect();
    let images = cache
        .get_many(&paths)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let pixels = pixel_batch(
        &images.iter().map(|i| i.as_ref()).collect::<Vec<_>>(),
        &device,
    );

    let question = PromptVariant::FreeReasoning.question();
    let prompt = encode_prompt(&tokenizer, &question, model.config.mm_tokens_per_image)?;
    let prompts = vec![prompt; samples.len()];
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        samples_per_prompt: args.samples,
        sampling: SamplingConfig::chexreason(),
        stop_tokens: vec![tokenizer.end_of_turn, tokenizer.eos],
        seed: args.seed,
        use_cache: true,
    };
    let start = Instant::now();
    let completions = generate(&model, &prompts, Some(pixels), &config, &device)?;
    let seconds = start.elapsed().as_secs_f64();
    let tokens: usize = completions.iter().map(|c| c.tokens.len()).sum();

    let vocabulary = LabelVocabulary::chexpert();
    let format = OutputFormat::default();
    let names = test.label_space.labels();
    let mut report = String::new();
    writeln!(report, "# Sampled reports\n")?;
    writeln!(
        report,
        "Model: {} ({} parameters) on `{}`; {} completions, {tokens} tokens in {seconds:.2} s ({:.0} tokens/s).\n",
        args.checkpoint
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("random `{}` preset", args.preset)),
        model.config.parameter_counts().total(),
        args.device,
        completions.len(),
        tokens as f64 / seconds
    )?;
    writeln!(report, "Prompt: {question}\n")?;
    for completion in &completions {
        let sample = samples[completion.prompt];
        let truth: Vec<&str> = sample
            .positive_indices(UncertaintyPolicy::PositiveOnly)
            .into_iter()
            .map(|i| names[i].as_str())
            .collect();
        let text = tokenizer.decode(&completion.tokens, true)?;
        let parsed = parse_output(&text, &format, ParseMode::Lenient);
        let labels = parsed
            .answer
            .as_deref()
            .map(|s| extract_labels(s, &vocabulary))
            .map(|e| {
                e.labels
                    .iter()
                    .map(|&i| vocabulary.labels()[i].clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            });
        writeln!(report, "## {}\n", sample.image.display())?;
        writeln!(
            report,
            "- truth: {}",
            if truth.is_empty() {
                "No Finding".into()
            } else {
                truth.join(", ")
            }
        )?;
        writeln!(
            report,
            "- parsed labels: {}",
            labels.unwrap_or_else(|| "(no solution block)".into())
        )?;
        writeln!(
            report,
            "- stopped: {:?} after {} tokens\n",
            completion.stop,
            completion.tokens.len()
        )?;
        writeln!(report, "```text\n{}\n```\n", text.trim())?;
    }
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("reports.md");
    std::fs::write(&path, report)?;
    println!(
        "{} completions, {tokens} tokens in {seconds:.2} s ({:.0} tokens/s); wrote {}",
        completions.len(),
        tokens as f64 / seconds,
        path.display()
    );
    Ok(())
}
