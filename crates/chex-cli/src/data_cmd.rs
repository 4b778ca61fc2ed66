//! `chex data synth | stats | check`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chex_grpo::DataSource;
use chex_grpo::data::synth::SynthConfig;
use chex_grpo::data::{
    Dataset, GenericCsvSpec, ImageSpec, LoadOptions, NihToChexpert, OnError, UncertaintyPolicy,
    ViewFilter, prepare_image,
};
use chex_grpo::progress::progress_bar;
use clap::{Args, Subcommand};
use rayon::prelude::*;

type CliResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write the synthetic benchmark (site A in CheXpert's layout, site B in NIH's, site C for
    /// pretraining).
    Synth(SynthArgs),
    /// Print per-label counts, views and patients of a dataset.
    Stats(StatsArgs),
    /// Decode every image of a dataset and report every unreadable row or image.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct SynthArgs {
    /// Output folder (reused when it already holds the same config).
    #[arg(long, default_value = "data/synthetic")]
    out: PathBuf,
    /// Seed for every random choice.
    #[arg(long, default_value_t = SynthConfig::default().seed)]
    seed: u64,
    /// Patients at site A (CheXpert layout).
    #[arg(long)]
    site_a_patients: Option<usize>,
    /// Patients at site B (NIH layout).
    #[arg(long)]
    site_b_patients: Option<usize>,
    /// P(support devices | edema) at site A; 0 switches the spurious cue off.
    #[arg(long)]
    spurious_probability: Option<f64>,
    /// A few dozen images per site, for a quick look.
    #[arg(long)]
    miniature: bool,
}

#[derive(Args)]
pub struct SourceArgs {
    /// NIH ChestX-ray14 root (holds Data_Entry_2017.csv).
    #[arg(long, group = "source")]
    nih_root: Option<PathBuf>,
    /// CheXpert CSV (train.csv or valid.csv).
    #[arg(long, group = "source")]
    chexpert_csv: Option<PathBuf>,
    /// MIMIC-CXR-JPG root (holds the mimic-cxr-2.0.0-*.csv(.gz) files and files/).
    #[arg(long, group = "source")]
    mimic_root: Option<PathBuf>,
    /// A generic CSV; name its columns with --path-column and --label-columns.
    #[arg(long, group = "source")]
    csv: Option<PathBuf>,
    /// Generic CSV: the image path column.
    #[arg(long, default_value = "Path")]
    path_column: String,
    /// Generic CSV: comma-separated label columns holding CheXpert values (1.0, 0.0, -1.0,
    /// blank).
    #[arg(long, value_delimiter = ',', conflicts_with = "label_column")]
    label_columns: Vec<String>,
    /// Generic CSV: one categorical label column (`No finding`, `COVID-19`, …), read through
    /// --label-map.
    #[arg(long, requires = "label_map")]
    label_column: Option<String>,
    /// Generic CSV: how categorical values become labels, e.g.
    /// "No finding=No Finding,COVID-19=Pneumonia"; `value=` means none of our findings.
    /// Rows with other values are left out and listed.
    #[arg(long, value_name = "VALUE=LABEL,...", value_parser = parse_map)]
    label_map: Option<BTreeMap<String, String>>,
    /// Generic CSV: the patient id column.
    #[arg(long)]
    patient_column: Option<String>,
    /// Generic CSV: the view position column (AP, PA, LATERAL, …).
    #[arg(long)]
    view_column: Option<String>,
    /// Generic CSV: the view column's own spellings, e.g. "AP Supine=AP,L=LATERAL".
    #[arg(long, value_name = "VALUE=VIEW,...", value_parser = parse_map, requires = "view_column")]
    view_map: Option<BTreeMap<String, String>>,
    /// Generic CSV: the folder image paths are relative to (default: the CSV's folder).
    #[arg(long, value_name = "DIR")]
    image_root: Option<PathBuf>,
    /// Views to keep: all, frontal, ap-pa, ap, pa.
    #[arg(long, default_value = "all")]
    view: ViewFilter,
    /// Skip bad rows and missing images, and report them, instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Read image paths that are absolute or climb out of the dataset's folder.
    #[arg(long)]
    allow_absolute_paths: bool,
}

/// Reads `a=b,c=d` into a map; a pair without `=` or a key given twice is refused.
fn parse_map(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for pair in text.split(',') {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not VALUE=LABEL"))?;
        if map
            .insert(key.trim().to_string(), value.trim().to_string())
            .is_some()
        {
            return Err(format!("`{}` is mapped twice", key.trim()));
        }
    }
    Ok(map)
}

impl SourceArgs {
    fn source(&self) -> Result<DataSource, String> {
        if let Some(root) = &self.nih_root {
            Ok(DataSource::Nih { root: root.clone() })
        } else if let Some(csv) = &self.chexpert_csv {
            Ok(DataSource::Chexpert { csv: csv.clone() })
        } else if let Some(root) = &self.mimic_root {
            Ok(DataSource::Mimic { root: root.clone() })
        } else if let Some(csv) = &self.csv {
            if self.label_columns.is_empty() && self.label_column.is_none() {
                return Err(
                    "--csv needs --label-columns (CheXpert values) or --label-column with \
                     --label-map (categorical values)"
                        .into(),
                );
            }
            let spec = GenericCsvSpec {
                path_column: self.path_column.clone(),
                label_columns: self.label_columns.clone(),
                label_column: self.label_column.clone(),
                label_map: self.label_map.clone().unwrap_or_default(),
                patient_column: self.patient_column.clone(),
                view_column: self.view_column.clone(),
                view_map: self.view_map.clone().unwrap_or_default(),
                image_root: self.image_root.clone(),
            };
            spec.validate().map_err(|e| e.to_string())?;
            Ok(DataSource::Csv {
                csv: csv.clone(),
                spec,
            })
        } else {
            Err("name a dataset with --nih-root, --chexpert-csv, --mimic-root or --csv".into())
        }
    }

    fn load(&self, check_images_exist: bool) -> Result<Dataset, Box<dyn std::error::Error>> {
        let options = LoadOptions {
            on_error: if self.skip_bad {
                OnError::SkipAndReport
            } else {
                OnError::FailFast
            },
            view_filter: self.view,
            check_images_exist,
            allow_absolute_paths: self.allow_absolute_paths,
        };
        if self.csv.is_none()
            && (self.label_column.is_some()
                || self.view_column.is_some()
                || self.image_root.is_some()
                || !self.label_columns.is_empty())
        {
            return Err(
                "--label-column(s), --view-column and --image-root describe a --csv \
                        dataset; the named formats have fixed layouts"
                    .into(),
            );
        }
        let data = self.source()?.load(&options)?;
        println!("{}: {}", data.source, data.report.summary());
        for problem in &data.report.skipped {
            println!("  skipped: {problem}");
        }
        if data.is_empty() && data.report.rows_read > 0 {
            return Err(format!(
                "kept none of the {} rows read (see the summary above)",
                data.report.rows_read
            )
            .into());
        }
        Ok(data)
    }
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// How uncertain labels count: positive-only, u-zeros, u-ones, u-ignore.
    #[arg(long, default_value = "positive-only")]
    policy: UncertaintyPolicy,
    /// Also show an NIH dataset in CheXpert's label space (ChexReason's mapping).
    #[arg(long)]
    as_chexpert: bool,
    /// Print the statistics as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Side length images are decoded and resized to (8 to 4096).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=4096))]
    size: u32,
}

pub fn run(command: DataCommand) -> CliResult {
    match command {
        DataCommand::Synth(args) => synth(args),
        DataCommand::Stats(args) => stats(args),
        DataCommand::Check(args) => check(args),
    }
}

fn synth(args: SynthArgs) -> CliResult {
    let mut config = if args.miniature {
        SynthConfig::miniature(args.seed)
    } else {
        SynthConfig {
            seed: args.seed,
            ..SynthConfig::default()
        }
    };
    if let Some(n) = args.site_a_patients {
        config.site_a.patients = n;
    }
    if let Some(n) = args.site_b_patients {
        config.site_b.patients = n;
    }
    if let Some(p) = args.spurious_probability {
        config
            .set_cue_probability(p)
            .map_err(|e| format!("--spurious-probability: {e}"))?;
    }
    let bar = progress_bar(
        chex_grpo::data::synth::planned_images(&config),
        "synthesising",
    );
    let summary = chex_grpo::data::write_synthetic_sites(&args.out, &config, &|| bar.inc(1))?;
    bar.finish_and_clear();
    println!(
        "{} site A ({} images, CheXpert layout) at {}, site B ({} images, NIH layout) at {} \
         and site C ({} images, the pretraining site, CheXpert layout) at {}",
        if summary.reused { "reused" } else { "wrote" },
        summary.site_a_images,
        summary.site_a_dir.display(),
        summary.site_b_images,
        summary.site_b_dir.display(),
        summary.site_c_images,
        summary.site_c_dir.display()
    );
    Ok(())
}

fn stats(args: StatsArgs) -> CliResult {
    // Counts of images that are not there would mislead, so existence is checked here too.
    let data = args.source.load(true)?;
    print_stats(&data, args.policy, args.json)?;
    if args.as_chexpert {
        let mapped = data.nih_to_chexpert(&NihToChexpert::default())?;
        println!();
        print_stats(&mapped, args.policy, args.json)?;
    }
    Ok(())
}

fn print_stats(data: &Dataset, policy: UncertaintyPolicy, json: bool) -> CliResult {
    let positives = data.positive_counts(policy);
    let observations = data.observation_counts();
    let mut views: std::collections::BTreeMap<String, usize> = Default::default();
    for s in &data.samples {
        let key = format!(
            "{:?} {}",
            s.view.projection,
            s.view.position.as_deref().unwrap_or("-")
        );
        *views.entry(key).or_default() += 1;
    }
    if json {
        let labels: Vec<_> = data
            .label_space
            .labels()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                serde_json::json!({
                    "label": l, "annotated": data.annotated[i], "positive": positives[i],
                    "observed_positive": observations[i][0], "negative": observations[i][1],
                    "uncertain": observations[i][2], "blank": observations[i][3],
                })
            })
            .collect();
        let out = serde_json::json!({
            "source": data.source, "label_space": data.label_space.name, "images": data.len(),
            "patients": data.patient_count(), "views": views, "labels": labels,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} images, {} patients, label space `{}`",
        data.len(),
        data.patient_count(),
        data.label_space.name
    );
    println!(
        "views: {}",
        views
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{:<28} {:>9} {:>7} {:>9} {:>9} {:>7}",
        "label", "positive", "1.0", "0.0", "-1.0", "blank"
    );
    for (i, label) in data.label_space.labels().iter().enumerate() {
        if !data.annotated[i] {
            println!("{label:<28} {:>9}", "not annotated");
            continue;
        }
        let [p, n, u, b] = observations[i];
        println!(
            "{label:<28} {:>9} {p:>7} {n:>9} {u:>9} {b:>7}",
            positives[i]
        );
    }
    Ok(())
}

fn check(args: CheckArgs) -> CliResult {
    let data = args.source.load(true)?;
    let spec = ImageSpec::siglip(args.size);
    let bar = progress_bar(data.len(), "decoding");
    // Each image is decoded and dropped: a check holds at most one image per thread.
    let failures: Vec<String> = data
        .samples
        .par_iter()
        .filter_map(|s| {
            let result = prepare_image(&s.image, &spec);
            bar.inc(1);
            result.err().map(|e| e.to_string())
        })
        .collect();
    bar.finish_and_clear();
    println!(
        "decoded {} of {} images at {}×{}",
        data.len() - failures.len(),
        data.len(),
        args.size,
        args.size
    );
    for failure in &failures {
        println!("  unreadable: {failure}");
    }
    let bad_rows = data.report.skipped.len();
    if failures.is_empty() && bad_rows == 0 {
        println!("ok");
        Ok(())
    } else {
        Err(format!("{} unreadable images, {bad_rows} bad rows", failures.len()).into())
    }
}
