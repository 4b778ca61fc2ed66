//! Reference baselines for the two-site benchmark, without any VLM.
//!
//! `cargo run --release --example baselines` writes the synthetic sites (or reuses them),
//! draws ChexReason's balanced SFT / RL / validation sets from site A, and scores two
//! baselines in distribution (site A's held-out patients) and cross-site (site B, NIH
//! vocabulary mapped to CheXpert, ChexReason's nine shared labels): chance at the SFT draw's
//! prevalence, and per-label logistic regression on pooled pixels. They tell how much of a
//! VLM's score a trivial reader already gets.

use std::path::{Path, PathBuf};

use chex_grpo::baseline::{
    PixelLogistic, PixelLogisticConfig, PrevalenceBaseline, pooled_features,
};
use chex_grpo::data::synth::SynthConfig;
use chex_grpo::data::{
    BalancedSamplerConfig, CHEXREASON_NIH_EVAL_LABELS, Dataset, ImageCache, ImageSpec, LoadOptions,
    NihToChexpert, UncertaintyPolicy, ViewFilter, balanced_draws, load_chexpert, load_nih,
    write_synthetic_sites,
};
use chex_grpo::eval::{project_predictions, truth_matrix};
use chex_grpo::metrics::{
    BootstrapConfig, EvalInput, Evaluation, ZeroDivision, evaluate, markdown_f1_table,
    paired_bootstrap, per_label_csv, summary_csv,
};
use chex_grpo::progress::progress_bar as bar;
use clap::Parser;

/// Run the ChexReason study on the synthetic two-site benchmark.
#[derive(Parser)]
struct Args {
    /// Where the synthetic sites are written (reused when unchanged).
    #[arg(long, default_value = "data/synthetic")]
    data: PathBuf,
    /// Output folder for metrics and the report.
    #[arg(long, default_value = "outputs/baselines")]
    out: PathBuf,
    /// Seed for data, draws, baselines and bootstrap.
    #[arg(long, default_value_t = 20260101)]
    seed: u64,
    /// SFT, RL and validation draw sizes (ChexReason: 2000, 1000, and a held-out 10%).
    #[arg(long, value_delimiter = ',', default_value = "1000,500,200")]
    draws: Vec<usize>,
    /// A miniature benchmark (a few dozen images) for smoke tests.
    #[arg(long)]
    miniature: bool,
    /// Bootstrap resamples for the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn features(data: &Dataset, cache: &ImageCache) -> Result<Vec<Vec<f32>>> {
    let progress = bar(data.len(), "decoding");
    let paths: Vec<PathBuf> = data.samples.iter().map(|s| s.image.clone()).collect();
    let size = cache.spec().size as usize;
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(256) {
        for image in cache.get_many(chunk) {
            out.push(pooled_features(&image?.pixels, size, 16));
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let policy = UncertaintyPolicy::PositiveOnly;
    let config = if args.miniature {
        SynthConfig::miniature(args.seed)
    } else {
        SynthConfig {
            seed: args.seed,
            ..SynthConfig::default()
        }
    };

    // 1. The two sites.
    let progress = bar(
        chex_grpo::data::synth::planned_images(&config),
        "synthesising",
    );
    let sites = write_synthetic_sites(&args.data, &config, &|| progress.inc(1))?;
    progress.finish_and_clear();
    println!(
        "site A: {} images ({}), site B: {} images ({})",
        sites.site_a_images,
        sites.site_a_dir.display(),
        sites.site_b_images,
        sites.site_b_dir.display()
    );

    let frontal = LoadOptions {
        view_filter: ViewFilter::Frontal,
        check_images_exist: true,
        ..Default::default()
    };
    let site_a_train = load_chexpert(&sites.site_a_dir.join("train.csv"), &frontal)?;
    let site_a_test = load_chexpert(&sites.site_a_dir.join("valid.csv"), &frontal)?;
    let site_b = load_nih(&sites.site_b_dir, &frontal)?
        .nih_to_chexpert(&NihToChexpert::default())?
        .restrict_labels(&CHEXREASON_NIH_EVAL_LABELS)?;
    for (name, d) in [
        ("site A train", &site_a_train),
        ("site A test", &site_a_test),
        ("site B", &site_b),
    ] {
        println!("{name}: {}", d.report.summary());
    }

    // 2. ChexReason's balanced, patient-disjoint draws.
    let sizes = if args.miniature {
        vec![16, 8, 6]
    } else {
        args.draws.clone()
    };
    let pool: Vec<usize> = (0..site_a_train.len()).collect();
    let sampler = BalancedSamplerConfig {
        seed: args.seed,
        policy,
        ..Default::default()
    };
    let draws = balanced_draws(&site_a_train, &pool, &sizes, &sampler)?;
    for (name, draw) in ["SFT", "RL", "validation"].iter().zip(&draws) {
        let short: Vec<String> = draw
            .shortfalls
            .iter()
            .map(|(l, want, got)| format!("{l} {got}/{want}"))
            .collect();
        println!(
            "{name} draw: {} images; labels short of 5%: {}",
            draw.indices.len(),
            if short.is_empty() {
                "none".into()
            } else {
                short.join(", ")
            }
        );
    }
    let (sft, val) = (
        site_a_train.subset(&draws[0].indices),
        site_a_train.subset(&draws[2].indices),
    );

    // 3. Reference baselines, scored in distribution and cross-site.
    let cache = ImageCache::new(ImageSpec::siglip(64));
    let (x_sft, x_val, x_a, x_b) = (
        features(&sft, &cache)?,
        features(&val, &cache)?,
        features(&site_a_test, &cache)?,
        features(&site_b, &cache)?,
    );
    let (y_sft, y_val) = (truth_matrix(&sft, policy), truth_matrix(&val, policy));
    let prevalence = PrevalenceBaseline::fit(&y_sft, args.seed);
    let logistic = PixelLogistic::fit(
        &x_sft,
        &y_sft,
        &x_val,
        &y_val,
        &PixelLogisticConfig::default(),
    );
    let labels = site_a_train.label_space.labels().to_vec();
    let bootstrap = BootstrapConfig {
        resamples: args.bootstrap,
        seed: args.seed,
        ..Default::default()
    };

    let mut sections = Vec::new();
    std::fs::create_dir_all(args.out.join("metrics"))?;
    for (site, test, x) in [("site-a", &site_a_test, &x_a), ("site-b", &site_b, &x_b)] {
        let truth = truth_matrix(test, policy);
        let site_labels = test.label_space.labels().to_vec();
        let checkpoints = [
            ("Prevalence", prevalence.predict(test.len())),
            ("Pixel logistic", logistic.predict(x)),
        ];
        let mut projected = Vec::new();
        let mut evaluations: Vec<(&str, Evaluation)> = Vec::new();
        for (name, predicted) in &checkpoints {
            let p = project_predictions(&labels, &site_labels, predicted)?;
            let input = EvalInput {
                labels: &site_labels,
                truth: &truth,
                predicted: &p,
                parsed: None,
            };
            evaluations.push((name, evaluate(input, ZeroDivision::Zero, Some(&bootstrap))?));
            projected.push(p);
        }
        let columns: Vec<(&str, &Evaluation)> = evaluations.iter().map(|(n, e)| (*n, e)).collect();
        let (macro_diff, _) = paired_bootstrap(
            &truth,
            &projected[0],
            &projected[1],
            ZeroDivision::Zero,
            &bootstrap,
        )?;
        write(
            &args.out.join("metrics").join(format!("{site}.json")),
            &serde_json::to_string_pretty(&evaluations)?,
        )?;
        write(
            &args
                .out
                .join("metrics")
                .join(format!("{site}-per-label.csv")),
            &per_label_csv(&columns)?,
        )?;
        write(
            &args.out.join("metrics").join(format!("{site}-summary.csv")),
            &summary_csv(&columns),
        )?;
        let title = if site == "site-a" {
            "Site A held-out patients (in distribution)"
        } else {
            "Site B (cross-site, ChexReason's NIH label subset)"
        };
        sections.push(format!(
            "## {title}\n\n{} images, macro-F1 with 95% bootstrap intervals ({} resamples).\n\n{}\nPixel logistic − prevalence, macro-F1: {:+.3} [{:+.3}, {:+.3}] (paired bootstrap, p = {:.3}).\n",
            test.len(),
            args.bootstrap,
            markdown_f1_table(&columns)?,
            macro_diff.delta,
            macro_diff.interval.low,
            macro_diff.interval.high,
            macro_diff.p_value
        ));
    }
    write(
        &args.out.join("draws.json"),
        &serde_json::to_string_pretty(&draws)?,
    )?;
    let report = format!(
        "# Reference baselines — synthetic two-site benchmark\n\nSeed {}. Reference baselines (no VLM): chance at the SFT draw's prevalence, and per-label logistic regression on 16×16 pooled pixels trained on the SFT draw ({} images) with thresholds tuned on the validation draw ({} images).\n\n{}",
        args.seed,
        draws[0].indices.len(),
        draws[2].indices.len(),
        sections.join("\n")
    );
    let report_path = args.out.join("report.md");
    write(&report_path, &report)?;
    println!("\n{report}\nreport: {}", report_path.display());
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    Ok(chex_grpo::data::write_atomic(path, text.as_bytes())?)
}
