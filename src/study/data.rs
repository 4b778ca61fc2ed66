//! The study's data: the training site's balanced SFT / RL / validation draws and the test
//! sets, each as examples with the truth in its own label space.

use chex_data::labels::CHEXPERT_LABELS;
use chex_data::synth::{planned_images, write_synthetic_sites};
use chex_data::{
    BalancedSamplerConfig, Dataset, Draw, ImageCache, ImageSpec, LoadOptions, NihToChexpert,
    OnError, UncertaintyPolicy, ViewFilter, balanced_draws, patient_split,
};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

use super::config::{DataSection, StudyConfig, TestRole, TestSetConfig};
use crate::error::{Error, Result};
use crate::eval::truth_matrix;
use crate::progress::progress_bar;
use crate::training::Example;
use crate::training::examples::{examples_from, read_sft_jsonl};

/// One test set, ready to score.
pub struct TestSet {
    /// What the configuration said about it.
    pub config: TestSetConfig,
    /// The labels it is scored on (its own label space, all CheXpert names).
    pub labels: Vec<String>,
    pub examples: Vec<Example>,
    /// `truth[image][label]` over `labels`.
    pub truth: Vec<Vec<bool>>,
}

impl TestSet {
    /// In distribution or cross-site.
    pub fn role(&self) -> TestRole {
        self.config.role
    }
}

/// Everything the stages read.
pub struct StudyData {
    /// The pretraining draw (empty when the stage is off).
    pub pretrain: Vec<Example>,
    pub sft: Vec<Example>,
    pub rl: Vec<Example>,
    pub validation: Vec<Example>,
    pub tests: Vec<TestSet>,
    /// The draws (indices into the training site and the labels short of their quota).
    pub draws: Vec<Draw>,
    /// One line per dataset loaded, for the console and the report.
    pub summary: Vec<String>,
}

const POLICY: UncertaintyPolicy = UncertaintyPolicy::PositiveOnly;

fn options(view: ViewFilter, data: &DataSection) -> LoadOptions {
    LoadOptions {
        view_filter: view,
        check_images_exist: true,
        allow_absolute_paths: data.allow_absolute_paths,
        on_error: OnError::FailFast,
    }
}

fn in_chexpert_space(dataset: Dataset, map_nih: bool) -> Result<Dataset> {
    Ok(if map_nih {
        dataset.nih_to_chexpert(&NihToChexpert::default())?
    } else {
        dataset
    })
}

/// At most `limit` indices of `indices`, drawn with `seed` and kept in order.
fn limited(indices: Vec<usize>, limit: usize, seed: u64) -> Vec<usize> {
    if limit == 0 || indices.len() <= limit {
        return indices;
    }
    let mut chosen: Vec<usize> = sample(&mut ChaCha8Rng::seed_from_u64(seed), indices.len(), limit)
        .into_iter()
        .map(|i| indices[i])
        .collect();
    chosen.sort_unstable();
    chosen
}

/// `dataset` without the images that cannot be decoded, and the reason for each left out.
fn without_undecodable(dataset: Dataset, cache: &ImageCache) -> (Dataset, Vec<String>) {
    let paths: Vec<_> = dataset.samples.iter().map(|s| s.image.clone()).collect();
    let mut failures = Vec::new();
    let keep: Vec<usize> = cache
        .get_many(&paths)
        .into_iter()
        .enumerate()
        .filter_map(|(i, decoded)| match decoded {
            Ok(_) => Some(i),
            Err(e) => {
                failures.push(e.to_string());
                None
            }
        })
        .collect();
    (dataset.subset(&keep), failures)
}

/// Write the synthetic sites when configured, load every site, draw and decode.
pub fn prepare_data(config: &StudyConfig, image_size: u32) -> Result<StudyData> {
    let data = &config.data;
    if let Some(synthetic) = &data.synthetic {
        let synth = synthetic.synth_config(config.seed)?;
        let bar = progress_bar(planned_images(&synth), "synthesising sites");
        write_synthetic_sites(&synthetic.dir, &synth, &|| bar.inc(1))?;
        bar.finish_and_clear();
    }
    let mut summary = Vec::new();

    // Every view is loaded so that held-out patients can be tested on a view the draws skip.
    let mut all_views = data.train.source.load(&options(ViewFilter::All, data))?;
    if let Some(split) = data.train.split {
        all_views = all_views.official_split(split);
    }
    let train = in_chexpert_space(all_views, data.train.nih_to_chexpert)?;
    summary.push(format!("training site: {}", train.report.summary()));
    let (pool, holdout) = if data.train.holdout_fraction > 0.0 {
        let f = data.train.holdout_fraction;
        let mut parts = patient_split(&train, &[1.0 - f, f], config.seed)?;
        let holdout = parts.pop().unwrap_or_default();
        (parts.pop().unwrap_or_default(), holdout)
    } else {
        ((0..train.len()).collect(), Vec::new())
    };
    let pool: Vec<usize> = pool
        .into_iter()
        .filter(|&i| data.train.view.keeps(&train.samples[i].view))
        .collect();
    let sizes = [data.sft_size, data.rl_size, data.validation_size];
    let wanted: usize = sizes.iter().sum();
    if wanted > pool.len() {
        return Err(Error::Draws(format!(
            "the draws need {wanted} images but the training site offers {} after the view \
             filter and hold-out; lower data.sft_size / rl_size / validation_size",
            pool.len()
        )));
    }
    let sampler = BalancedSamplerConfig {
        seed: config.seed,
        policy: POLICY,
        ..Default::default()
    };
    let draws = balanced_draws(&train, &pool, &sizes, &sampler).map_err(|e| {
        let patients: std::collections::BTreeSet<&str> = pool
            .iter()
            .map(|&i| train.samples[i].patient_id.as_str())
            .collect();
        Error::Draws(format!(
            "the training site's pool ({} images of {} patients) cannot fill patient-disjoint \
             draws of {sizes:?} images ({e}); lower data.sft_size / rl_size / validation_size",
            pool.len(),
            patients.len()
        ))
    })?;
    let cache = ImageCache::new(ImageSpec::siglip(image_size));
    let bar = progress_bar(wanted, "decoding draws");
    let mut decoded = Vec::new();
    for draw in &draws {
        decoded.push(examples_from(&train, &draw.indices, &cache)?);
        bar.inc(draw.indices.len() as u64);
    }
    bar.finish_and_clear();
    let validation = decoded.pop().unwrap_or_default();
    let rl = decoded.pop().unwrap_or_default();
    let mut sft = decoded.pop().unwrap_or_default();
    if let Some(traces) = &data.sft_traces {
        sft = read_sft_jsonl(traces, &cache, data.allow_absolute_paths)?;
        summary.push(format!(
            "SFT examples: {} teacher traces from {}",
            sft.len(),
            traces.display()
        ));
    }

    let pretrain = if config.pretrains() {
        let section = &config.pretrain;
        let site = section.source.load(&options(section.view, data))?;
        let all: Vec<usize> = (0..site.len()).collect();
        if all.len() < section.size {
            return Err(Error::Draws(format!(
                "pretrain.size asks for {} images but the pretraining site offers {}",
                section.size,
                all.len()
            )));
        }
        // Its own stream of the seed, so turning pretraining on changes no other draw.
        let chosen = limited(all, section.size, config.seed ^ 0x9e37_79b9_7f4a_7c15);
        summary.push(format!(
            "pretraining site: {} of its images; {}",
            chosen.len(),
            site.report.summary()
        ));
        examples_from(&site, &chosen, &cache)?
    } else {
        Vec::new()
    };

    let mut tests = Vec::new();
    for (t, test) in data.tests.iter().enumerate() {
        let (dataset, indices) = match &test.source {
            Some(source) => {
                let mut load_options = options(test.view, data);
                if test.skip_unreadable {
                    load_options.on_error = OnError::SkipAndReport;
                }
                let mut loaded = source.load(&load_options)?;
                if let Some(split) = test.split {
                    loaded = loaded.official_split(split);
                }
                let dataset = in_chexpert_space(loaded, test.nih_to_chexpert)?;
                let all = (0..dataset.len()).collect();
                (dataset, all)
            }
            None => {
                let kept = holdout
                    .iter()
                    .copied()
                    .filter(|&i| test.view.keeps(&train.samples[i].view))
                    .collect();
                (train.clone(), kept)
            }
        };
        let dataset = match &test.labels {
            Some(labels) => {
                let names: Vec<&str> = labels.iter().map(String::as_str).collect();
                dataset.restrict_labels(&names)?
            }
            None => dataset,
        };
        let labels = dataset.label_space.labels().to_vec();
        if let Some(unknown) = labels
            .iter()
            .find(|l| !CHEXPERT_LABELS.contains(&l.as_str()))
        {
            return Err(Error::TestSet {
                test: test.name.clone(),
                message: format!(
                    "label `{unknown}` is not a CheXpert finding; set nih_to_chexpert = true \
                     for NIH-layout data"
                ),
            });
        }
        let indices = limited(indices, test.limit, config.seed.wrapping_add(t as u64));
        if indices.is_empty() {
            return Err(Error::TestSet {
                test: test.name.clone(),
                message: "has no images".into(),
            });
        }
        let mut subset = dataset.subset(&indices);
        let mut undecodable = Vec::new();
        if test.skip_unreadable {
            (subset, undecodable) = without_undecodable(subset, &cache);
            if subset.is_empty() {
                return Err(Error::TestSet {
                    test: test.name.clone(),
                    message: "has no readable images".into(),
                });
            }
        }
        let mut line = format!(
            "test set {}: {} of {} images; {}",
            test.name,
            subset.len(),
            dataset.len(),
            dataset.report.summary()
        );
        if test.skip_unreadable {
            line.push_str(&format!(
                "; {} images left out as undecodable",
                undecodable.len()
            ));
            if let Some(first) = undecodable.first() {
                line.push_str(&format!(" (first: {first})"));
            }
        }
        summary.push(line);
        let all: Vec<usize> = (0..subset.len()).collect();
        let examples = examples_from(&subset, &all, &cache)?;
        tests.push(TestSet {
            config: test.clone(),
            truth: truth_matrix(&subset, POLICY),
            labels,
            examples,
        });
    }
    Ok(StudyData {
        pretrain,
        sft,
        rl,
        validation,
        tests,
        draws,
        summary,
    })
}
