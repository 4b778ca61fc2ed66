//! Whether a checkpoint reads the synthetic training site's spurious cue as its cause: on a
//! synthetic test site, how often the cause (Edema) is predicted on films that show the cue
//! (support devices) but not the cause, against films that show neither. The sites' truth
//! (`truth.json`, written by the generator) knows which films carry devices even where the
//! label file cannot say so (NIH's vocabulary has no Support Devices), so this scores the
//! shortcut exactly where it can hurt a cross-site reader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chex_data::synth::{Finding, SynthRecord};
use serde::{Deserialize, Serialize};

use super::config::StudyConfig;
use super::evaluate::{predictions_path, read_predictions};
use crate::DataSource;
use crate::error::{Error, Result};

/// How often one label is predicted on a group of films.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PredictionRate {
    /// Films in the group.
    pub films: usize,
    /// Of those, films the label was predicted on.
    pub predicted: usize,
}

impl PredictionRate {
    /// `predicted / films` (NaN for an empty group).
    pub fn rate(&self) -> f64 {
        if self.films == 0 {
            f64::NAN
        } else {
            self.predicted as f64 / self.films as f64
        }
    }
}

/// One checkpoint's reliance on the cue on one test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CueReliance {
    pub checkpoint: String,
    pub test: String,
    /// The cause's CheXpert label (`Edema`).
    pub cause: String,
    /// The cue's CheXpert label (`Support Devices`).
    pub cue: String,
    /// The cause predicted on films with the cue and without the cause (false positives).
    pub with_cue: PredictionRate,
    /// The cause predicted on films with neither (false positives).
    pub without_cue: PredictionRate,
}

impl CueReliance {
    /// The false-positive rate the cue adds: 0 for a reader that ignores it.
    pub fn gap(&self) -> f64 {
        self.with_cue.rate() - self.without_cue.rate()
    }
}

/// The folder whose `truth.json` describes a synthetic source's images, if the source is one
/// of the configured synthetic sites.
fn site_root(source: &DataSource, synthetic_dir: &Path) -> Option<PathBuf> {
    let root = match source {
        // `<dir>/site-a/CheXpert-v1.0-small/valid.csv`
        DataSource::Chexpert { csv } => csv.parent()?.parent()?.to_path_buf(),
        DataSource::Nih { root } => root.clone(),
        _ => return None,
    };
    (root.starts_with(synthetic_dir) && root.join("truth.json").exists()).then_some(root)
}

/// The cue's two labels as the configuration draws them (site A's cue).
fn cue_labels(config: &StudyConfig) -> Result<Option<(Finding, Finding)>> {
    let Some(synthetic) = &config.data.synthetic else {
        return Ok(None);
    };
    let synth = synthetic.synth_config(config.seed)?;
    Ok(synth.site_a.spurious.map(|s| (s.cause, s.cue)))
}

/// The cue reliance of `checkpoint` on every synthetic test set whose predictions exist and
/// whose labels include the cause.
pub fn cue_reliance(
    config: &StudyConfig,
    out: &Path,
    checkpoint: &str,
) -> Result<Vec<CueReliance>> {
    let (Some((cause, cue)), Some(synthetic)) = (cue_labels(config)?, &config.data.synthetic)
    else {
        return Ok(Vec::new());
    };
    let (Some(cause_label), Some(cue_label)) = (cause.chexpert_label(), cue.chexpert_label())
    else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for test in &config.data.tests {
        let Some(root) = test
            .source
            .as_ref()
            .and_then(|s| site_root(s, &synthetic.dir))
        else {
            continue;
        };
        if test
            .labels
            .as_ref()
            .is_some_and(|l| !l.iter().any(|x| x == cause_label))
        {
            continue;
        }
        let predictions_file = predictions_path(out, checkpoint, &test.name);
        if !predictions_file.exists() {
            continue;
        }
        let truth_file = root.join("truth.json");
        let text = std::fs::read_to_string(&truth_file).map_err(|e| Error::io(&truth_file, e))?;
        let records: Vec<SynthRecord> =
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: truth_file.clone(),
                source,
            })?;
        // Keyed by the path inside the site: the loaders may have made the images' paths
        // absolute, so a prediction is matched by its trailing components.
        let truth: HashMap<PathBuf, &SynthRecord> = records
            .iter()
            .map(|r| (PathBuf::from(&r.image), r))
            .collect();
        let lookup = |image: &Path| {
            let parts: Vec<_> = image.components().collect();
            (1..=parts.len()).find_map(|k| {
                let tail: PathBuf = parts[parts.len() - k..].iter().collect();
                truth.get(&tail).copied()
            })
        };
        let mut with_cue = PredictionRate {
            films: 0,
            predicted: 0,
        };
        let mut without_cue = with_cue;
        for prediction in read_predictions(&predictions_file)? {
            let record = lookup(&prediction.image).ok_or_else(|| Error::Predictions {
                path: predictions_file.clone(),
                message: format!(
                    "image `{}` is not in {}; evaluate again after writing the sites",
                    prediction.image.display(),
                    truth_file.display()
                ),
            })?;
            if record.findings.contains(&cause) {
                continue;
            }
            let group = if record.findings.contains(&cue) {
                &mut with_cue
            } else {
                &mut without_cue
            };
            group.films += 1;
            group.predicted += usize::from(prediction.predicted.iter().any(|l| l == cause_label));
        }
        found.push(CueReliance {
            checkpoint: checkpoint.to_string(),
            test: test.name.clone(),
            cause: cause_label.to_string(),
            cue: cue_label.to_string(),
            with_cue,
            without_cue,
        });
    }
    Ok(found)
}
