//! The built-in benchmark: synthetic hospitals. Site A is written in CheXpert's layout and
//! vocabulary, site B in NIH ChestX-ray14's, so the real loaders read both; site C, a third
//! hospital with its own scanner, clean labels and no spurious cue, is what the optional
//! `pretrain` stage learns from. Every finding has a visible sign; the sites differ in
//! acquisition, prevalence, vocabulary and one spurious cue, the way real institutions do.
//! Everything is a function of the seed, and [`SiteKnobs`] change a site's settings.

mod render;

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::labels::CHEXPERT_LABELS;
use crate::loaders::{CHEXPERT_META_COLUMNS, NIH_LABEL_FILE, NIH_TEST_LIST, NIH_TRAIN_VAL_LIST};

/// A finding the generator can draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Finding {
    EnlargedCardiomediastinum,
    Cardiomegaly,
    /// Ground-glass opacity without a more specific finding.
    LungOpacity,
    LungLesion,
    Edema,
    Consolidation,
    Pneumonia,
    Atelectasis,
    Pneumothorax,
    PleuralEffusion,
    PleuralOther,
    Fracture,
    SupportDevices,
    /// Outside CheXpert's vocabulary; labelled only at an NIH-vocabulary site.
    Emphysema,
}

impl Finding {
    /// Every finding, in a fixed order.
    pub const ALL: [Finding; 14] = [
        Finding::EnlargedCardiomediastinum,
        Finding::Cardiomegaly,
        Finding::LungOpacity,
        Finding::LungLesion,
        Finding::Edema,
        Finding::Consolidation,
        Finding::Pneumonia,
        Finding::Atelectasis,
        Finding::Pneumothorax,
        Finding::PleuralEffusion,
        Finding::PleuralOther,
        Finding::Fracture,
        Finding::SupportDevices,
        Finding::Emphysema,
    ];

    /// The CheXpert label this finding is reported as, if CheXpert has one.
    pub fn chexpert_label(self) -> Option<&'static str> {
        Some(match self {
            Finding::EnlargedCardiomediastinum => "Enlarged Cardiomediastinum",
            Finding::Cardiomegaly => "Cardiomegaly",
            Finding::LungOpacity => "Lung Opacity",
            Finding::LungLesion => "Lung Lesion",
            Finding::Edema => "Edema",
            Finding::Consolidation => "Consolidation",
            Finding::Pneumonia => "Pneumonia",
            Finding::Atelectasis => "Atelectasis",
            Finding::Pneumothorax => "Pneumothorax",
            Finding::PleuralEffusion => "Pleural Effusion",
            Finding::PleuralOther => "Pleural Other",
            Finding::Fracture => "Fracture",
            Finding::SupportDevices => "Support Devices",
            Finding::Emphysema => return None,
        })
    }

    /// The NIH label this finding is reported as, if NIH has one. A lung lesion is a `Mass`
    /// when large and a `Nodule` otherwise; ground-glass opacity is `Infiltration`.
    fn nih_label(self, large_lesion: bool) -> Option<&'static str> {
        Some(match self {
            Finding::Cardiomegaly => "Cardiomegaly",
            Finding::LungOpacity => "Infiltration",
            Finding::LungLesion if large_lesion => "Mass",
            Finding::LungLesion => "Nodule",
            Finding::Edema => "Edema",
            Finding::Consolidation => "Consolidation",
            Finding::Pneumonia => "Pneumonia",
            Finding::Atelectasis => "Atelectasis",
            Finding::Pneumothorax => "Pneumothorax",
            Finding::PleuralEffusion => "Effusion",
            Finding::PleuralOther => "Pleural_Thickening",
            Finding::Emphysema => "Emphysema",
            Finding::EnlargedCardiomediastinum | Finding::Fracture | Finding::SupportDevices => {
                return None;
            }
        })
    }
}

/// How a site's scanner and processing render the same anatomy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteStyle {
    /// Multiplies the density before the contrast curve (over-/under-exposure).
    pub exposure: f32,
    /// Contrast curve exponent applied to [0, 1] intensities.
    pub gamma: f32,
    /// Gaussian noise standard deviation, in [0, 1] intensity units.
    pub noise_std: f32,
    /// Gaussian blur sigma in rendering pixels (detector unsharpness).
    pub blur_sigma: f32,
    /// Side length the anatomy is drawn at: the site's effective resolution.
    pub render_size: u32,
    /// Side length of the written file.
    pub file_size: u32,
}

/// A site's spurious cue: `cue` co-occurs with `cause` far more often than elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpuriousCue {
    pub cause: Finding,
    pub cue: Finding,
    /// P(cue | cause); the cue's own prevalence applies otherwise.
    pub probability_with_cause: f64,
}

/// Which label file layout a site is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteLayout {
    /// `CheXpert-v1.0-small/{train,valid}.csv`, JPEG images, CheXpert vocabulary with
    /// uncertain and blank cells.
    Chexpert,
    /// `Data_Entry_2017.csv`, split lists and `images/*.png`, NIH vocabulary.
    Nih,
}

/// One synthetic hospital.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteConfig {
    pub name: String,
    pub layout: SiteLayout,
    /// Number of patients; each has 1 to `max_images_per_patient` images.
    pub patients: usize,
    pub max_images_per_patient: usize,
    /// Fraction of patients in the held-out split (`valid.csv` or `test_list.txt`).
    pub test_fraction: f64,
    pub style: SiteStyle,
    /// Prevalence of each finding, in [`Finding::ALL`] order.
    pub prevalence: Vec<f64>,
    pub spurious: Option<SpuriousCue>,
    /// Fraction of images taken as lateral views (CheXpert layout only).
    pub lateral_fraction: f64,
    /// Probability a present finding is written as uncertain (`-1.0`) in the training file.
    pub uncertain_fraction: f64,
}

/// The three sites and the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    pub seed: u64,
    pub site_a: SiteConfig,
    pub site_b: SiteConfig,
    /// The pretraining site: CheXpert layout, clean labels, no spurious cue.
    pub site_c: SiteConfig,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 20260101,
            site_a: SiteConfig {
                name: "site-a".into(),
                layout: SiteLayout::Chexpert,
                patients: 1800,
                max_images_per_patient: 3,
                test_fraction: 0.15,
                style: SiteStyle {
                    exposure: 1.0,
                    gamma: 1.0,
                    noise_std: 0.02,
                    blur_sigma: 0.6,
                    render_size: 128,
                    file_size: 128,
                },
                // An ICU-heavy academic hospital, as CheXpert and MIMIC are.
                prevalence: vec![
                    0.06, 0.16, 0.10, 0.07, 0.15, 0.08, 0.06, 0.15, 0.09, 0.28, 0.05, 0.05, 0.22,
                    0.0,
                ],
                spurious: Some(SpuriousCue {
                    cause: Finding::Edema,
                    cue: Finding::SupportDevices,
                    probability_with_cause: 0.9,
                }),
                lateral_fraction: 0.12,
                uncertain_fraction: 0.12,
            },
            site_b: SiteConfig {
                name: "site-b".into(),
                layout: SiteLayout::Nih,
                patients: 900,
                max_images_per_patient: 2,
                test_fraction: 0.25,
                // Another scanner: darker, flatter, noisier and softer films. Stronger settings
                // (exposure 0.85, gamma 1.35) left the tiny preset unable to read site B at all
                // (one answer for every film), which hides any cross-site change.
                style: SiteStyle {
                    exposure: 0.95,
                    gamma: 1.15,
                    noise_std: 0.035,
                    blur_sigma: 0.9,
                    render_size: 96,
                    file_size: 128,
                },
                // An outpatient-heavy hospital with a different case mix.
                prevalence: vec![
                    0.03, 0.09, 0.12, 0.09, 0.06, 0.06, 0.05, 0.11, 0.06, 0.14, 0.05, 0.02, 0.08,
                    0.05,
                ],
                spurious: None,
                lateral_fraction: 0.0,
                uncertain_fraction: 0.0,
            },
            site_c: SiteConfig {
                name: "site-c".into(),
                layout: SiteLayout::Chexpert,
                patients: 1000,
                max_images_per_patient: 2,
                test_fraction: 0.1,
                // A third scanner, between the other two: what a pretrained model has seen
                // is neither the training site's nor the test site's acquisition.
                style: SiteStyle {
                    exposure: 1.03,
                    gamma: 0.92,
                    noise_std: 0.028,
                    blur_sigma: 0.75,
                    render_size: 112,
                    file_size: 128,
                },
                // A general hospital; every finding common enough to be learned.
                prevalence: vec![
                    0.06, 0.12, 0.10, 0.08, 0.10, 0.08, 0.06, 0.12, 0.07, 0.18, 0.05, 0.05, 0.12,
                    0.0,
                ],
                spurious: None,
                lateral_fraction: 0.0,
                uncertain_fraction: 0.0,
            },
        }
    }
}

/// Changes to one site's settings (each left out keeps the built-in value): what a study's
/// `[data.synthetic.site_a]` table and a sweep's grid vary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteKnobs {
    pub patients: Option<usize>,
    pub exposure: Option<f32>,
    pub gamma: Option<f32>,
    pub noise_std: Option<f32>,
    pub blur_sigma: Option<f32>,
    pub render_size: Option<u32>,
    /// Prevalence by finding (`edema`, `support_devices`, `Support Devices`: case, spaces and
    /// underscores are ignored).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub prevalence: std::collections::BTreeMap<String, f64>,
}

/// The finding a knob names, ignoring case, spaces and underscores.
pub fn finding_named(name: &str) -> Option<Finding> {
    let plain = |s: &str| {
        s.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let wanted = plain(name);
    Finding::ALL
        .into_iter()
        .find(|f| plain(&format!("{f:?}")) == wanted)
}

impl SiteKnobs {
    /// `site` with these changes, or an error naming the knob (`key` is where it was set).
    pub fn apply(&self, site: &mut SiteConfig, key: &str) -> Result<()> {
        let bad = |m: String| Err(DataError::Config(format!("{key}: {m}")));
        let positive = |name: &str, v: Option<f32>| -> Result<()> {
            match v {
                Some(v) if !(v.is_finite() && v >= 0.0) => Err(DataError::Config(format!(
                    "{key}.{name} must be a finite number ≥ 0, got {v}"
                ))),
                _ => Ok(()),
            }
        };
        positive("exposure", self.exposure)?;
        positive("gamma", self.gamma)?;
        positive("noise_std", self.noise_std)?;
        positive("blur_sigma", self.blur_sigma)?;
        if self.exposure == Some(0.0) || self.gamma == Some(0.0) {
            return bad("exposure and gamma must be > 0".into());
        }
        if let Some(n) = self.patients {
            site.patients = n;
        }
        if let Some(v) = self.exposure {
            site.style.exposure = v;
        }
        if let Some(v) = self.gamma {
            site.style.gamma = v;
        }
        if let Some(v) = self.noise_std {
            site.style.noise_std = v;
        }
        if let Some(v) = self.blur_sigma {
            site.style.blur_sigma = v;
        }
        if let Some(v) = self.render_size {
            site.style.render_size = v;
        }
        for (name, p) in &self.prevalence {
            let Some(finding) = finding_named(name) else {
                let known: Vec<String> = Finding::ALL.iter().map(|f| format!("{f:?}")).collect();
                return bad(format!(
                    "unknown finding `{name}` in prevalence (known: {})",
                    known.join(", ")
                ));
            };
            if !(0.0..=1.0).contains(p) {
                return bad(format!(
                    "prevalence of `{name}` must lie in [0, 1], got {p}"
                ));
            }
            let index = Finding::ALL.iter().position(|f| *f == finding).unwrap_or(0);
            site.prevalence[index] = *p;
        }
        Ok(())
    }
}

impl SynthConfig {
    /// A few dozen images per site, for tests and quick looks.
    pub fn miniature(seed: u64) -> Self {
        let mut config = Self {
            seed,
            ..Self::default()
        };
        config.site_a.patients = 40;
        config.site_b.patients = 30;
        config.site_c.patients = 30;
        config
    }

    /// Set site A's spurious cue strength: P(cue | cause); 0 switches it off.
    pub fn set_cue_probability(&mut self, probability: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&probability) {
            return Err(DataError::Config(format!(
                "the spurious cue's probability must lie in [0, 1], got {probability}"
            )));
        }
        if let Some(cue) = self.site_a.spurious.as_mut() {
            cue.probability_with_cause = probability;
        }
        Ok(())
    }

    /// A short stable name of this configuration (FNV-1a of its JSON), so that folders of
    /// different configurations never collide and equal ones are shared.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }

    fn validate(&self) -> Result<()> {
        let names = [&self.site_a.name, &self.site_b.name, &self.site_c.name];
        if names.iter().any(|n| !crate::paths::is_plain_file_name(n))
            || names[0] == names[1]
            || names[1] == names[2]
            || names[0] == names[2]
        {
            return Err(DataError::Config(
                "synthetic sites need three different plain folder names".into(),
            ));
        }
        for site in [&self.site_a, &self.site_b, &self.site_c] {
            let bad = |m: String| {
                Err(DataError::Config(format!(
                    "synthetic site `{}`: {m}",
                    site.name
                )))
            };
            if site.prevalence.len() != Finding::ALL.len() {
                return bad(format!("prevalence needs {} values", Finding::ALL.len()));
            }
            if site.prevalence.iter().any(|p| !(0.0..=1.0).contains(p)) {
                return bad("prevalences must lie in [0, 1]".into());
            }
            if site.patients == 0 || site.max_images_per_patient == 0 {
                return bad("needs at least one patient and one image per patient".into());
            }
            if site.style.render_size < 32 || site.style.file_size < 32 {
                return bad("render_size and file_size must be at least 32".into());
            }
        }
        Ok(())
    }
}

/// One generated image's truth, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SynthRecord {
    /// Path relative to the site folder.
    pub image: String,
    pub patient: usize,
    pub lateral: bool,
    pub test: bool,
    pub findings: Vec<Finding>,
}

/// What was written where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SynthSummary {
    pub root: PathBuf,
    /// The CheXpert-layout site's dataset folder (`…/site-a/CheXpert-v1.0-small`).
    pub site_a_dir: PathBuf,
    /// The NIH-layout site's root (`…/site-b`).
    pub site_b_dir: PathBuf,
    /// The pretraining site's dataset folder (`…/site-c/CheXpert-v1.0-small`).
    pub site_c_dir: PathBuf,
    pub site_a_images: usize,
    pub site_b_images: usize,
    pub site_c_images: usize,
    /// True when an existing dataset with the same config was reused.
    pub reused: bool,
}

const MANIFEST: &str = "synth.json";

/// Writes both sites under `root`, or reuses what is there when its manifest records the
/// same config. `progress` is called once per image written.
pub fn write_synthetic_sites(
    root: &Path,
    config: &SynthConfig,
    progress: &(dyn Fn() + Sync),
) -> Result<SynthSummary> {
    config.validate()?;
    let site_a_dir = root.join(&config.site_a.name).join("CheXpert-v1.0-small");
    let site_b_dir = root.join(&config.site_b.name);
    let site_c_dir = root.join(&config.site_c.name).join("CheXpert-v1.0-small");
    let manifest_path = root.join(MANIFEST);
    if let Ok(text) = std::fs::read_to_string(&manifest_path)
        && let Ok(previous) = serde_json::from_str::<Manifest>(&text)
        && previous.config == *config
    {
        return Ok(SynthSummary {
            root: root.to_path_buf(),
            site_a_dir,
            site_b_dir,
            site_c_dir,
            site_a_images: previous.site_a_images,
            site_b_images: previous.site_b_images,
            site_c_images: previous.site_c_images,
            reused: true,
        });
    }
    // A partly written dataset must not be mistaken for a finished one.
    let _ = std::fs::remove_file(&manifest_path);
    let a = write_site(root, &config.site_a, config.seed, 0, progress)?;
    let b = write_site(root, &config.site_b, config.seed, 1, progress)?;
    let c = write_site(root, &config.site_c, config.seed, 2, progress)?;
    let manifest = Manifest {
        config: config.clone(),
        site_a_images: a,
        site_b_images: b,
        site_c_images: c,
    };
    let json =
        serde_json::to_string_pretty(&manifest).map_err(|e| DataError::Config(e.to_string()))?;
    write_file(&manifest_path, json.as_bytes())?;
    Ok(SynthSummary {
        root: root.to_path_buf(),
        site_a_dir,
        site_b_dir,
        site_c_dir,
        site_a_images: a,
        site_b_images: b,
        site_c_images: c,
        reused: false,
    })
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    config: SynthConfig,
    site_a_images: usize,
    site_b_images: usize,
    site_c_images: usize,
}

/// Number of images a site config will produce (the patients' image counts are drawn from
/// the seed, so this replays that draw).
pub fn planned_images(config: &SynthConfig) -> usize {
    [
        (&config.site_a, 0u64),
        (&config.site_b, 1),
        (&config.site_c, 2),
    ]
    .iter()
    .map(|(site, index)| plan_site(site, config.seed, *index).len())
    .sum()
}

struct Plan {
    patient: usize,
    study: usize,
    lateral: bool,
    test: bool,
    seed: u64,
}

fn plan_site(site: &SiteConfig, seed: u64, site_index: u64) -> Vec<Plan> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x5173_0000 + site_index));
    let mut plans = Vec::new();
    for patient in 0..site.patients {
        let images = rng.random_range(1..=site.max_images_per_patient);
        let test = rng.random_bool(site.test_fraction.clamp(0.0, 1.0));
        for study in 0..images {
            let lateral = site.layout == SiteLayout::Chexpert
                && rng.random_bool(site.lateral_fraction.clamp(0.0, 1.0));
            plans.push(Plan {
                patient,
                study,
                lateral,
                test,
                seed: rng.random(),
            });
        }
    }
    plans
}

/// Draws the findings of one study: independent per prevalence, then the spurious cue.
fn draw_findings(site: &SiteConfig, rng: &mut ChaCha8Rng) -> Vec<Finding> {
    let mut findings: Vec<Finding> = Finding::ALL
        .iter()
        .zip(&site.prevalence)
        .filter(|(_, p)| rng.random_bool(**p))
        .map(|(f, _)| *f)
        .collect();
    if let Some(cue) = &site.spurious
        && findings.contains(&cue.cause)
        && !findings.contains(&cue.cue)
        && rng.random_bool(cue.probability_with_cause)
    {
        findings.push(cue.cue);
    }
    findings.sort_by_key(|f| Finding::ALL.iter().position(|g| g == f));
    findings
}

fn write_site(
    root: &Path,
    site: &SiteConfig,
    seed: u64,
    site_index: u64,
    progress: &(dyn Fn() + Sync),
) -> Result<usize> {
    let plans = plan_site(site, seed, site_index);
    let site_root = root.join(&site.name);
    // Patients keep their anatomy across studies: seed it from the patient alone.
    let rendered: Vec<Result<(SynthRecord, bool)>> = plans
        .par_iter()
        .map(|plan| {
            let mut anatomy_rng =
                ChaCha8Rng::seed_from_u64(seed ^ ((site_index + 1) << 40) ^ plan.patient as u64);
            let anatomy = render::Anatomy::sample(&mut anatomy_rng);
            let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
            let findings = draw_findings(site, &mut rng);
            let large_lesion = rng.random_bool(0.5);
            let n = site.style.render_size as usize;
            let canvas = if plan.lateral {
                render::draw_lateral(n, &anatomy, &mut rng)
            } else {
                render::draw_frontal(n, &anatomy, &findings, &mut rng)
            };
            let pixels =
                render::apply_style(canvas, &site.style, site.style.file_size as usize, &mut rng);
            let rel = image_path(site, plan);
            let path = site_root.join(&rel);
            save_grey(&path, site.style.file_size, pixels)?;
            progress();
            Ok((
                SynthRecord {
                    image: rel,
                    patient: plan.patient,
                    lateral: plan.lateral,
                    test: plan.test,
                    findings,
                },
                large_lesion,
            ))
        })
        .collect();
    let records: Vec<(SynthRecord, bool)> = rendered.into_iter().collect::<Result<_>>()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x1abe1 + site_index));
    match site.layout {
        SiteLayout::Chexpert => write_chexpert_csvs(&site_root, site, &records, &mut rng)?,
        SiteLayout::Nih => write_nih_files(&site_root, &records)?,
    }
    let truth: Vec<&SynthRecord> = records.iter().map(|(r, _)| r).collect();
    let json = serde_json::to_string(&truth).map_err(|e| DataError::Config(e.to_string()))?;
    write_file(&site_root.join("truth.json"), json.as_bytes())?;
    Ok(records.len())
}

fn image_path(site: &SiteConfig, plan: &Plan) -> String {
    match site.layout {
        SiteLayout::Chexpert => format!(
            "CheXpert-v1.0-small/{}/patient{:05}/study{}/view1_{}.jpg",
            if plan.test { "valid" } else { "train" },
            plan.patient + 1,
            plan.study + 1,
            if plan.lateral { "lateral" } else { "frontal" }
        ),
        SiteLayout::Nih => format!("images/{:08}_{:03}.png", plan.patient + 1, plan.study),
    }
}

fn save_grey(path: &Path, size: u32, pixels: Vec<u8>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let buffer =
        image::GrayImage::from_raw(size, size, pixels).ok_or_else(|| DataError::Image {
            path: path.to_path_buf(),
            message: "pixel buffer has the wrong length".into(),
        })?;
    let tmp = path.with_extension("tmp");
    let format = if path.extension().is_some_and(|e| e == "png") {
        image::ImageFormat::Png
    } else {
        image::ImageFormat::Jpeg
    };
    buffer
        .save_with_format(&tmp, format)
        .map_err(|e| DataError::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// [`crate::fs::write_atomic`] with the path named in the error.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fs::write_atomic(path, bytes).map_err(|e| DataError::io(path, e))
}

/// The CheXpert cells of one study. Training labels carry the labeller's noise: a present
/// finding is sometimes `-1.0`; absent ones are mostly blank, sometimes `0.0`, rarely
/// `-1.0`. Validation labels are clean 0/1, like CheXpert's radiologist-read `valid.csv`.
fn chexpert_cells(
    findings: &[Finding],
    clean: bool,
    uncertain_fraction: f64,
    rng: &mut ChaCha8Rng,
) -> Vec<&'static str> {
    let present = |label: &str| -> bool {
        findings.iter().any(|f| f.chexpert_label() == Some(label))
            // Lung Opacity is CheXpert's parent of the parenchymal findings.
            || (label == "Lung Opacity"
                && findings.iter().any(|f| {
                    matches!(
                        f,
                        Finding::Edema | Finding::Consolidation | Finding::Pneumonia | Finding::Atelectasis | Finding::LungLesion
                    )
                }))
    };
    let any_pathology = CHEXPERT_LABELS
        .iter()
        .any(|l| *l != "No Finding" && *l != "Support Devices" && present(l));
    CHEXPERT_LABELS
        .iter()
        .map(|&label| {
            let positive = if label == "No Finding" {
                !any_pathology
            } else {
                present(label)
            };
            match (clean, positive) {
                (true, true) => "1.0",
                (true, false) => "0.0",
                (false, true) if label != "No Finding" && rng.random_bool(uncertain_fraction) => {
                    "-1.0"
                }
                (false, true) => "1.0",
                (false, false) => {
                    let r: f64 = rng.random();
                    if label == "No Finding" || r < 0.80 {
                        ""
                    } else if r < 0.97 {
                        "0.0"
                    } else {
                        "-1.0"
                    }
                }
            }
        })
        .collect()
}

fn write_chexpert_csvs(
    site_root: &Path,
    site: &SiteConfig,
    records: &[(SynthRecord, bool)],
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let header: Vec<&str> = CHEXPERT_META_COLUMNS
        .iter()
        .chain(CHEXPERT_LABELS.iter())
        .copied()
        .collect();
    for (file, test) in [("train.csv", false), ("valid.csv", true)] {
        let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
        let csv_err = |e: csv::Error| DataError::Config(format!("writing {file}: {e}"));
        writer.write_record(&header).map_err(csv_err)?;
        for (record, _) in records.iter().filter(|(r, _)| r.test == test) {
            let sex = if rng.random_bool(0.5) {
                "Male"
            } else {
                "Female"
            };
            let age = rng.random_range(18..90).to_string();
            let (fl, appa) = if record.lateral {
                ("Lateral", "")
            } else if rng.random_bool(0.6) {
                ("Frontal", "AP")
            } else {
                ("Frontal", "PA")
            };
            let cells = chexpert_cells(&record.findings, test, site.uncertain_fraction, rng);
            let mut row = vec![record.image.as_str(), sex, age.as_str(), fl, appa];
            row.extend(cells);
            writer.write_record(&row).map_err(csv_err)?;
        }
        let bytes = writer
            .into_inner()
            .map_err(|e| DataError::Config(e.to_string()))?;
        write_file(&site_root.join("CheXpert-v1.0-small").join(file), &bytes)?;
    }
    Ok(())
}

fn write_nih_files(site_root: &Path, records: &[(SynthRecord, bool)]) -> Result<()> {
    let mut text = String::from(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n",
    );
    let (mut train, mut test) = (String::new(), String::new());
    for (index, (record, large_lesion)) in records.iter().enumerate() {
        let name = record.image.trim_start_matches("images/");
        let mut labels: Vec<&str> = record
            .findings
            .iter()
            .filter_map(|f| f.nih_label(*large_lesion))
            .collect();
        labels.dedup();
        let labels = if labels.is_empty() {
            "No Finding".to_string()
        } else {
            labels.join("|")
        };
        let follow_up = name
            .split(['_', '.'])
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        let view = if index % 3 == 0 { "AP" } else { "PA" };
        text.push_str(&format!(
            "{name},{labels},{follow_up},{},{},{},{view},2500,2048,0.143,0.143\n",
            record.patient + 1,
            30 + (record.patient * 7) % 55,
            if record.patient % 2 == 0 { "M" } else { "F" },
        ));
        let list = if record.test { &mut test } else { &mut train };
        list.push_str(name);
        list.push('\n');
    }
    write_file(&site_root.join(NIH_LABEL_FILE), text.as_bytes())?;
    write_file(&site_root.join(NIH_TRAIN_VAL_LIST), train.as_bytes())?;
    write_file(&site_root.join(NIH_TEST_LIST), test.as_bytes())
}
