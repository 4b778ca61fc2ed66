//! The study's configuration: one TOML file (see `configs/`) layered over built-in defaults
//! (ChexReason's settings), then `section.key=value` overrides from the command line. The
//! resolved configuration is saved next to the outputs, so a run can be repeated exactly.

use std::path::{Path, PathBuf};

use chex_data::synth::{SiteKnobs, SynthConfig};
use chex_data::{OfficialSplit, ViewFilter};
use serde::{Deserialize, Serialize};

use crate::DataSource;
use crate::prompts::PromptVariant;
use chex_model::{DeviceChoice, ModelDtype};
use chex_rewards::RewardRegistry;

use crate::error::{Error, Result};
use crate::training::{GrpoConfig, SftConfig};

/// Everything one study run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// A short name, printed in the report's title.
    pub name: String,
    /// Seed of data synthesis, draws, model initialisation, evaluation subsets and bootstrap.
    pub seed: u64,
    /// Backend and device: `cpu`, `ndarray`, `tch-cpu`, `tch-cuda:0`, `cuda:0`.
    pub device: String,
    /// The output folder: config, logs, checkpoints, predictions, metrics, report.
    pub out: PathBuf,
    pub model: ModelSection,
    pub data: DataSection,
    /// The optional first stage: label-only answers on a third site, so the base can read.
    #[serde(default)]
    pub pretrain: PretrainSection,
    pub sft: SftConfig,
    pub grpo: GrpoConfig,
    pub eval: EvalSection,
    #[serde(default)]
    pub logging: LoggingSection,
}

/// What the training stages write besides their JSONL logs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// TensorBoard event files (`tensorboard/{pretrain,sft,grpo}/`) kept in step with the
    /// JSONL logs while the stages run: `tensorboard --logdir <out>/tensorboard`.
    pub tensorboard: bool,
}

/// Which model to train.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A built-in preset (`tiny`, `small`, `medgemma-4b`) initialised at random, with a BPE
    /// tokenizer trained on the project's corpus.
    pub preset: Option<String>,
    /// A Hugging Face checkpoint folder (`config.json`, safetensors, `tokenizer.json`); wins
    /// over `preset`.
    pub pretrained: Option<PathBuf>,
    /// How the model is asked and how it answers.
    pub prompt: PromptVariant,
    /// Precision of the weights that feed matrix products, `"bf16"` or `"f32"` (norms, softmax,
    /// losses, adapters and optimizer state stay f32); unset: bf16 on GPUs, f32 on CPUs.
    /// `"f16"` is refused (Gemma 3 overflows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<ModelDtype>,
}

/// Where the images come from and how they are drawn.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Write (or reuse) the built-in synthetic two-site benchmark before loading.
    pub synthetic: Option<SyntheticSection>,
    /// The training site: SFT, RL and validation draws come from it.
    pub train: TrainSite,
    /// Teacher-written SFT data (JSONL lines `{"image", "labels", "reasoning"}`) used instead of
    /// the SFT draw; without it SFT learns the prompt style's templated reasoning.
    #[serde(default)]
    pub sft_traces: Option<PathBuf>,
    /// Read image paths that are absolute or climb out of their dataset's folder (off: a
    /// label file from elsewhere cannot make the study read any file it names).
    #[serde(default)]
    pub allow_absolute_paths: bool,
    /// Draw sizes from the training site (ChexReason: 2,000 SFT and 1,000 RL).
    pub sft_size: usize,
    pub rl_size: usize,
    pub validation_size: usize,
    /// The test sets every checkpoint is scored on.
    pub tests: Vec<TestSetConfig>,
}

/// The synthetic benchmark's folder, size and the sites' knobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSection {
    pub dir: PathBuf,
    /// A few dozen images per site (tests and quick looks).
    pub miniature: bool,
    /// Site A's spurious cue, P(Support Devices | Edema); 0 switches it off.
    #[serde(default = "default_cue")]
    pub cue: f64,
    /// Changes to site A's (training site's) settings.
    #[serde(default)]
    pub site_a: SiteKnobs,
    /// Changes to site B's (the cross-site test site's) settings.
    #[serde(default)]
    pub site_b: SiteKnobs,
    /// Changes to site C's (the pretraining site's) settings.
    #[serde(default)]
    pub site_c: SiteKnobs,
}

fn default_cue() -> f64 {
    0.9
}

impl SyntheticSection {
    /// The sites this section asks for, drawn with `seed`.
    pub fn synth_config(&self, seed: u64) -> Result<SynthConfig> {
        let mut synth = if self.miniature {
            SynthConfig::miniature(seed)
        } else {
            SynthConfig {
                seed,
                ..SynthConfig::default()
            }
        };
        let failed = |key: &str, e: chex_data::DataError| Error::setting(key, e.to_string());
        synth
            .set_cue_probability(self.cue)
            .map_err(|e| failed("data.synthetic.cue", e))?;
        for (knobs, site, key) in [
            (&self.site_a, &mut synth.site_a, "data.synthetic.site_a"),
            (&self.site_b, &mut synth.site_b, "data.synthetic.site_b"),
            (&self.site_c, &mut synth.site_c, "data.synthetic.site_c"),
        ] {
            knobs.apply(site, key).map_err(|e| failed(key, e))?;
        }
        Ok(synth)
    }
}

/// The optional pretraining stage: the untrained preset learns label-only answers on a third
/// site with its own style and no spurious cue, the stand-in for a pretrained model's broad
/// exposure, so that the base checkpoint can read images.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainSection {
    pub enabled: bool,
    /// Images drawn (with the seed) from `source`.
    pub size: usize,
    /// The pretraining site (default: synthetic site C's `train.csv`).
    pub source: DataSource,
    pub view: ViewFilter,
    /// How it trains (the SFT trainer's settings, on label-only answers).
    pub training: SftConfig,
}

impl Default for PretrainSection {
    fn default() -> Self {
        Self {
            enabled: false,
            size: 1200,
            source: DataSource::Chexpert {
                csv: PathBuf::from("data/synthetic/site-c/CheXpert-v1.0-small/train.csv"),
            },
            view: ViewFilter::Frontal,
            training: SftConfig {
                lora: None,
                learning_rate: 2e-3,
                epochs: 2,
                micro_batch: 4,
                effective_batch: 8,
                freeze_vision: false,
                ..SftConfig::chexreason()
            },
        }
    }
}

/// The training site.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSite {
    pub source: DataSource,
    /// Views the draws may use.
    pub view: ViewFilter,
    /// Keep only this official split (e.g. `train`); unset keeps every row.
    #[serde(default)]
    pub split: Option<OfficialSplit>,
    /// Read NIH findings in CheXpert's vocabulary (for an NIH-layout training site).
    pub nih_to_chexpert: bool,
    /// Patients held out of the draws for a test set with `holdout = true` (0 holds out none).
    pub holdout_fraction: f64,
}

/// Whether a test set is in distribution or another site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestRole {
    InDistribution,
    CrossSite,
}

/// One test set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSetConfig {
    /// File-name stem of its metrics and predictions, e.g. `site-a`.
    pub name: String,
    /// Heading in the report.
    pub title: String,
    pub role: TestRole,
    /// Its own source; without one, the training site's held-out patients (`holdout`).
    #[serde(default)]
    pub source: Option<DataSource>,
    #[serde(default)]
    pub view: ViewFilter,
    /// Keep only this official split of the source (e.g. `test` for NIH's `test_list.txt`).
    #[serde(default)]
    pub split: Option<OfficialSplit>,
    #[serde(default)]
    pub nih_to_chexpert: bool,
    /// Score only these labels (e.g. ChexReason's nine labels shared with NIH).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// At most this many images, drawn with the seed (0 keeps all).
    #[serde(default)]
    pub limit: usize,
    /// Leave out rows whose image is missing or cannot be decoded (and bad rows), counting
    /// them in the report, instead of stopping at the first; for a foreign site's folder.
    #[serde(default)]
    pub skip_unreadable: bool,
}

/// How checkpoints are scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Longest greedy answer.
    pub max_new_tokens: usize,
    /// Images per generation batch.
    pub batch: usize,
    /// Bootstrap resamples for the 95% intervals and the paired differences.
    pub bootstrap_resamples: usize,
    /// Reasoning traces shown per checkpoint in the report.
    pub traces: usize,
}

impl Default for StudyConfig {
    /// ChexReason's settings on the synthetic benchmark with the small preset.
    fn default() -> Self {
        let synthetic = PathBuf::from("data/synthetic");
        Self {
            name: "chexreason".into(),
            seed: 20260101,
            device: "cpu".into(),
            out: "outputs/chexreason-paper".into(),
            model: ModelSection {
                preset: Some("small".into()),
                pretrained: None,
                prompt: PromptVariant::StructuredSteps,
                dtype: None,
            },
            data: DataSection {
                train: TrainSite {
                    source: DataSource::Chexpert {
                        csv: synthetic.join("site-a/CheXpert-v1.0-small/train.csv"),
                    },
                    view: ViewFilter::Frontal,
                    split: None,
                    nih_to_chexpert: false,
                    holdout_fraction: 0.0,
                },
                sft_traces: None,
                allow_absolute_paths: false,
                synthetic: Some(SyntheticSection {
                    dir: synthetic.clone(),
                    miniature: false,
                    cue: default_cue(),
                    site_a: SiteKnobs::default(),
                    site_b: SiteKnobs::default(),
                    site_c: SiteKnobs::default(),
                }),
                sft_size: 2000,
                rl_size: 1000,
                validation_size: 200,
                tests: vec![
                    TestSetConfig {
                        name: "site-a".into(),
                        title: "Site A held-out patients (in distribution)".into(),
                        role: TestRole::InDistribution,
                        source: Some(DataSource::Chexpert {
                            csv: synthetic.join("site-a/CheXpert-v1.0-small/valid.csv"),
                        }),
                        view: ViewFilter::Frontal,
                        split: None,
                        nih_to_chexpert: false,
                        labels: None,
                        limit: 0,
                        skip_unreadable: false,
                    },
                    TestSetConfig {
                        name: "site-b".into(),
                        title: "Site B (cross-site: NIH layout mapped to CheXpert, ChexReason's \
                                nine shared labels)"
                            .into(),
                        role: TestRole::CrossSite,
                        source: Some(DataSource::Nih {
                            root: synthetic.join("site-b"),
                        }),
                        view: ViewFilter::Frontal,
                        split: None,
                        nih_to_chexpert: true,
                        labels: Some(
                            chex_data::CHEXREASON_NIH_EVAL_LABELS
                                .iter()
                                .map(|s| s.to_string())
                                .collect(),
                        ),
                        limit: 0,
                        skip_unreadable: false,
                    },
                ],
            },
            pretrain: PretrainSection::default(),
            sft: SftConfig::chexreason(),
            grpo: GrpoConfig::chexreason(),
            eval: EvalSection {
                max_new_tokens: 512,
                batch: 16,
                bootstrap_resamples: 1000,
                traces: 3,
            },
            logging: LoggingSection::default(),
        }
    }
}

fn config_error(origin: &str, message: impl std::fmt::Display) -> Error {
    Error::Config {
        origin: origin.to_string(),
        message: message.to_string(),
    }
}

/// Edit distance between two keys (insertions, deletions, substitutions).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown variant") with the
/// nearest known name added as a suggestion.
fn with_suggestion(message: &str) -> String {
    let quoted = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let Some(rest) = message
        .split_once("unknown field ")
        .or_else(|| message.split_once("unknown variant "))
        .map(|(_, r)| r)
    else {
        return message.to_string();
    };
    let names = quoted(rest);
    let Some((unknown, known)) = names.split_first() else {
        return message.to_string();
    };
    let nearest = known
        .iter()
        .map(|k| (edit_distance(unknown, k), k))
        .min_by_key(|(d, _)| *d);
    match nearest {
        Some((distance, name)) if distance <= (unknown.chars().count() / 3).max(2) => {
            format!("{} — did you mean `{name}`?", message.trim_end())
        }
        // Not a sibling: perhaps a key of a nested section (`grpo.temperature` for
        // `grpo.sampling.temperature`).
        _ => match nearest_nested_key(unknown) {
            Some(path) => format!("{} — did you mean `{path}`?", message.trim_end()),
            None => message.to_string(),
        },
    }
}

/// The dotted path of the known setting whose last part is nearest to `unknown`.
fn nearest_nested_key(unknown: &str) -> Option<String> {
    fn walk(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(table) = value {
            for (key, child) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                walk(child, &path, out);
                out.push(path);
            }
        }
    }
    let defaults = toml::Value::try_from(StudyConfig::default()).ok()?;
    let mut paths = Vec::new();
    walk(&defaults, "", &mut paths);
    let (distance, path) = paths
        .into_iter()
        .map(|p| {
            let leaf = p.rsplit('.').next().unwrap_or(&p).to_string();
            (edit_distance(unknown, &leaf), p)
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.len().cmp(&b.1.len())))?;
    (distance <= (unknown.chars().count() / 3).max(2)).then_some(path)
}

/// Overlay `top` onto `base`: tables merge key by key, anything else is replaced; the string
/// `"none"` removes a key (how a file turns off an optional section such as `sft.lora`).
fn merge(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(b), toml::Value::Table(t)) => {
            for (key, value) in t {
                if value.as_str() == Some("none") {
                    b.remove(&key);
                } else if let Some(existing) = b.get_mut(&key) {
                    merge(existing, value);
                } else {
                    b.insert(key, value);
                }
            }
        }
        (b, t) => *b = t,
    }
}

/// Write `"none"` for each key the defaults have and `value` lacks (an optional section turned
/// off), so the saved file reads back to the same configuration.
fn mark_absent(defaults: &toml::Value, value: &mut toml::Value) {
    if let (toml::Value::Table(d), toml::Value::Table(v)) = (defaults, value) {
        for (key, default) in d {
            match v.get_mut(key) {
                Some(inner) => mark_absent(default, inner),
                None => {
                    v.insert(key.clone(), toml::Value::String("none".into()));
                }
            }
        }
    }
}

/// Turn `a.b.c=value` into a nested table; the value is read as TOML (numbers, booleans,
/// arrays) and otherwise taken as a string.
fn override_table(assignment: &str) -> Result<toml::Value> {
    let (path, raw) = assignment.split_once('=').ok_or_else(|| {
        config_error(
            "--set",
            format!("override `{assignment}` should look like `section.key=value`"),
        )
    })?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut value = value;
    for key in path.trim().rsplit('.') {
        if key.is_empty() {
            return Err(config_error(
                "--set",
                format!("override `{assignment}` has an empty key"),
            ));
        }
        let mut table = toml::Table::new();
        table.insert(key.to_string(), value);
        value = toml::Value::Table(table);
    }
    Ok(value)
}

impl StudyConfig {
    /// Parse a configuration text over the defaults, then apply `overrides`, then validate
    /// (rewards against the built-in ones); `origin` names the text in errors. An unknown key
    /// is refused.
    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        Self::from_toml_with(text, origin, overrides, &RewardRegistry::builtin())
    }

    /// [`StudyConfig::from_toml`] with the rewards of `registry`.
    pub fn from_toml_with(
        text: &str,
        origin: &str,
        overrides: &[String],
        registry: &RewardRegistry,
    ) -> Result<Self> {
        let mut value =
            toml::Value::try_from(Self::default()).map_err(|e| config_error("defaults", e))?;
        let file: toml::Table = toml::from_str(text).map_err(|e| config_error(origin, e))?;
        merge(&mut value, toml::Value::Table(file));
        for assignment in overrides {
            merge(&mut value, override_table(assignment)?);
        }
        let config: Self = value
            .try_into()
            .map_err(|e: toml::de::Error| config_error(origin, with_suggestion(&e.to_string())))?;
        config
            .validate_with(registry)
            .map_err(|e| config_error(origin, e))?;
        Ok(config)
    }

    /// Read a configuration file (see [`StudyConfig::from_toml`]).
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        Self::from_file_with(path, overrides, &RewardRegistry::builtin())
    }

    /// [`StudyConfig::from_file`] with the rewards of `registry`.
    pub fn from_file_with(
        path: &Path,
        overrides: &[String],
        registry: &RewardRegistry,
    ) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_with(&text, &path.display().to_string(), overrides, registry)
    }

    /// The resolved configuration as TOML (what `config.toml` in the output folder holds).
    pub fn to_toml(&self) -> Result<String> {
        let failed = |e: String| config_error("writing the config", e);
        let mut value = toml::Value::try_from(self).map_err(|e| failed(e.to_string()))?;
        let defaults = toml::Value::try_from(Self::default()).map_err(|e| failed(e.to_string()))?;
        mark_absent(&defaults, &mut value);
        toml::to_string_pretty(&value).map_err(|e| failed(e.to_string()))
    }

    /// Point every NIH source at `root` (the `--nih-root` flag).
    pub fn set_nih_root(&mut self, root: &Path) {
        for source in self.sources_mut() {
            if let DataSource::Nih { root: r } = source {
                *r = root.to_path_buf();
            }
        }
    }

    /// Whether the pretrain stage runs: it is on and the model is a preset (a pretrained
    /// checkpoint already is what the stage stands in for, so it is skipped and the report
    /// says so).
    pub fn pretrains(&self) -> bool {
        self.pretrain.enabled && self.model.pretrained.is_none()
    }

    /// Every source and its key, the pretraining site's included.
    fn sources_mut(&mut self) -> impl Iterator<Item = &mut DataSource> {
        std::iter::once(&mut self.data.train.source)
            .chain(std::iter::once(&mut self.pretrain.source))
            .chain(self.data.tests.iter_mut().filter_map(|t| t.source.as_mut()))
    }

    /// Write the synthetic sites into `dir` instead, pointing every source that lay under the
    /// old folder at the same place under the new one (how a sweep shares one set of sites
    /// between the runs that draw the same sites).
    pub fn move_synthetic(&mut self, dir: &Path) {
        let Some(synthetic) = self.data.synthetic.as_mut() else {
            return;
        };
        let old = std::mem::replace(&mut synthetic.dir, dir.to_path_buf());
        for source in self.sources_mut() {
            for path in source.paths_mut() {
                if let Ok(rest) = path.strip_prefix(&old) {
                    *path = dir.join(rest);
                }
            }
        }
    }

    /// The model's precision on this configuration's device: `model.dtype`, or bf16 on GPUs and
    /// f32 on CPUs.
    pub fn model_dtype(&self) -> Result<ModelDtype> {
        let device: DeviceChoice = self.device.parse()?;
        Ok(self
            .model
            .dtype
            .unwrap_or_else(|| ModelDtype::default_for(device)))
    }

    /// Check the whole configuration — every section's ranges, the rewards against the
    /// built-in ones — before any work starts; the one entry point the CLI, the study and the
    /// trainers share.
    pub fn validate(&self) -> Result<()> {
        self.validate_with(&RewardRegistry::builtin())
    }

    /// [`StudyConfig::validate`] with the rewards of `registry`.
    pub fn validate_with(&self, registry: &RewardRegistry) -> Result<()> {
        let bad = |key: &str, m: String| Err(Error::setting(key, m));
        if self.model.preset.is_none() && self.model.pretrained.is_none() {
            return bad("model", "give `preset` or `pretrained`".into());
        }
        if self.model.dtype == Some(ModelDtype::Bf16)
            && matches!(self.device.parse(), Ok(DeviceChoice::NdArray))
        {
            return bad(
                "model.dtype",
                "burn's ndarray backend has no bf16; use \"f32\" or device cpu or tch-cpu".into(),
            );
        }
        if self.data.tests.is_empty() {
            return bad("data.tests", "at least one test set is needed".into());
        }
        if !(0.0..1.0).contains(&self.data.train.holdout_fraction) {
            return bad(
                "data.train.holdout_fraction",
                format!(
                    "must lie in [0, 1), got {}",
                    self.data.train.holdout_fraction
                ),
            );
        }
        for test in &self.data.tests {
            if test.source.is_none() && self.data.train.holdout_fraction == 0.0 {
                return bad(
                    "data.tests",
                    format!(
                        "test set `{}` has no source and data.train.holdout_fraction is 0",
                        test.name
                    ),
                );
            }
            if test.name.is_empty() || test.name.contains(['/', '\\']) {
                return bad(
                    "data.tests",
                    format!(
                        "test set name `{}` must be a plain file-name stem",
                        test.name
                    ),
                );
            }
        }
        let sources = std::iter::once(("data.train.source".to_string(), &self.data.train.source))
            .chain(self.data.tests.iter().filter_map(|t| {
                t.source
                    .as_ref()
                    .map(|s| (format!("data.tests `{}` source", t.name), s))
            }));
        for (key, source) in sources {
            if let DataSource::Csv { spec, .. } = source
                && let Err(e) = spec.validate()
            {
                return bad(&key, e.to_string());
            }
        }
        if self.data.sft_size == 0 || self.data.rl_size == 0 {
            return bad(
                "data.sft_size",
                "data.sft_size and data.rl_size must be positive".into(),
            );
        }
        if self.eval.bootstrap_resamples == 0 {
            return bad(
                "eval.bootstrap_resamples",
                "must be ≥ 1 (the intervals and paired differences need resamples)".into(),
            );
        }
        if self.eval.batch == 0 || self.eval.max_new_tokens == 0 {
            return bad(
                "eval",
                "eval.batch and eval.max_new_tokens must be positive".into(),
            );
        }
        if let Some(synthetic) = &self.data.synthetic {
            synthetic.synth_config(self.seed)?;
        }
        if self.pretrains() {
            if self.pretrain.size < 2 {
                return bad(
                    "pretrain.size",
                    format!(
                        "must be ≥ 2 (one to train, one to validate), got {}",
                        self.pretrain.size
                    ),
                );
            }
            self.pretrain
                .training
                .validate()
                .map_err(|e| Error::setting("pretrain.training", e.to_string()))?;
        }
        self.sft.validate()?;
        self.grpo.validate(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_merge_over_defaults_and_overrides_win() {
        let text = "name = \"t\"\n[sft]\nepochs = 2\nlora = \"none\"\n[grpo.lora]\nrank = 4\n";
        let config = StudyConfig::from_toml(
            text,
            "t.toml",
            &["grpo.steps=7".into(), "model.preset=tiny".into()],
        )
        .unwrap();
        assert_eq!(config.sft.epochs, 2);
        assert!(config.sft.lora.is_none());
        assert_eq!(config.grpo.lora.as_ref().unwrap().rank, 4);
        assert_eq!(config.grpo.lora.as_ref().unwrap().alpha, 32.0);
        assert_eq!(config.grpo.steps, 7);
        assert_eq!(config.model.preset.as_deref(), Some("tiny"));
        let again = StudyConfig::from_toml(&config.to_toml().unwrap(), "saved", &[]).unwrap();
        assert_eq!(again.to_toml().unwrap(), config.to_toml().unwrap());
    }

    #[test]
    fn bad_values_name_the_file_and_key() {
        let e = StudyConfig::from_toml("[sft]\nepochs = \"many\"\n", "x.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml") && e.contains("epochs"), "{e}");
        let e = StudyConfig::from_toml("", "x.toml", &["grpo.steps".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("grpo.steps"), "{e}");
    }

    #[test]
    fn defaults_are_the_chexreason_file_written_out() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/chexreason.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // Read on its own, not over the defaults: the file must spell out every setting.
        let file: StudyConfig = toml::from_str(&text).unwrap();
        file.validate().unwrap();
        let as_value = |c: &StudyConfig| toml::Value::try_from(c).unwrap();
        assert_eq!(as_value(&file), as_value(&StudyConfig::default()));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_before_any_work() {
        for (text, overrides, needle) in [
            (
                "[sft]\nlearning_rat = 2e-3\n",
                vec![],
                "did you mean `learning_rate`?",
            ),
            (
                "",
                vec!["grpo.loss.loss_type=dr_gpro".to_string()],
                "did you mean `dr_grpo`?",
            ),
            (
                "",
                vec!["grpo.temprature=0.5".to_string()],
                "did you mean `grpo.sampling.temperature`?",
            ),
            (
                "",
                vec!["grpo.sampling.temprature=0.5".to_string()],
                "did you mean `temperature`?",
            ),
            (
                "",
                vec!["grpo.sampling.top_p=1.5".to_string()],
                "grpo.sampling.top_p",
            ),
            (
                "",
                vec!["grpo.sampling.temperature=0".to_string()],
                "grpo.sampling.temperature",
            ),
            (
                "",
                vec!["grpo.prompts_per_step=0".to_string()],
                "grpo.prompts_per_step",
            ),
            (
                "",
                vec!["grpo.max_completion_length=0".to_string()],
                "grpo.max_completion_length",
            ),
            (
                "",
                vec!["sft.effective_batch=0".to_string()],
                "sft.effective_batch",
            ),
            ("", vec!["foo.bar=1".to_string()], "foo"),
            (
                "",
                vec!["grpo.loss.max_completion_length=9".to_string()],
                "max_completion_length",
            ),
            (
                "",
                vec!["grpo.max_new_tokens=9".to_string()],
                "max_new_tokens",
            ),
            (
                "",
                vec!["sft.learning_rate=-1".to_string()],
                "sft.learning_rate",
            ),
            (
                "",
                vec!["grpo.learning_rate=nan".to_string()],
                "grpo.learning_rate",
            ),
            ("", vec!["grpo.group_size=1".to_string()], "grpo.group_size"),
            (
                "",
                vec!["grpo.loss.top_entropy_quantile=0".to_string()],
                "top_entropy_quantile",
            ),
            (
                "[[grpo.rewards]]\nname = \"hardd\"\n",
                vec![],
                "unknown reward `hardd`",
            ),
            (
                "[model]\ndtype = \"f16\"\n",
                vec![],
                "exceed f16's largest value",
            ),
            (
                "",
                vec!["model.dtype=fp8".to_string()],
                "unknown dtype `fp8`",
            ),
            (
                "device = \"ndarray\"\n[model]\ndtype = \"bf16\"\n",
                vec![],
                "model.dtype",
            ),
        ] {
            let e = StudyConfig::from_toml(text, "x.toml", &overrides)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.contains("x.toml") || e.contains("--set"), "{e}");
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn dtype_defaults_to_bf16_on_gpus_and_f32_on_cpus_and_round_trips() {
        let on = |device: &str, set: &[&str]| {
            let mut overrides = vec![format!("device={device}")];
            overrides.extend(set.iter().map(|s| s.to_string()));
            StudyConfig::from_toml("", "x.toml", &overrides).unwrap()
        };
        assert_eq!(on("cpu", &[]).model_dtype().unwrap(), ModelDtype::F32);
        assert_eq!(on("tch-cpu", &[]).model_dtype().unwrap(), ModelDtype::F32);
        assert_eq!(on("cuda:0", &[]).model_dtype().unwrap(), ModelDtype::Bf16);
        assert_eq!(
            on("tch-cuda:1", &[]).model_dtype().unwrap(),
            ModelDtype::Bf16
        );
        let chosen = on("cuda:0", &["model.dtype=f32"]);
        assert_eq!(chosen.model_dtype().unwrap(), ModelDtype::F32);
        let saved = chosen.to_toml().unwrap();
        assert!(saved.contains("dtype = \"f32\""), "{saved}");
        let back = StudyConfig::from_toml(&saved, "saved", &[]).unwrap();
        assert_eq!(back.model.dtype, Some(ModelDtype::F32));
    }

    #[test]
    fn rewards_are_listed_with_weights() {
        let text = "[[grpo.rewards]]\nname = \"nuanced\"\nweight = 0.01\n[[grpo.rewards]]\nname = \"format\"\n";
        let config = StudyConfig::from_toml(text, "x.toml", &[]).unwrap();
        assert_eq!(
            config.grpo.rewards,
            vec![
                chex_rewards::WeightedReward::new("nuanced", 0.01),
                chex_rewards::WeightedReward::new("format", 1.0)
            ]
        );
    }
}
