//! The in-memory form every loader produces: samples with raw observations, and the policies
//! that turn observations into training targets.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::labels::{LabelSpace, NihToChexpert};

/// One label's value as the dataset records it, before any uncertainty policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Observation {
    /// `1.0`
    Positive,
    /// `0.0`
    Negative,
    /// `-1.0`
    Uncertain,
    /// Empty cell: not mentioned in the report.
    Blank,
}

impl Observation {
    /// Parses a CheXpert-style cell: `1.0`, `0.0`, `-1.0` (also `1`, `0`, `-1`) or blank.
    pub fn parse(cell: &str) -> Option<Self> {
        match cell.trim() {
            "" => Some(Self::Blank),
            "1.0" | "1" => Some(Self::Positive),
            "0.0" | "0" => Some(Self::Negative),
            "-1.0" | "-1" => Some(Self::Uncertain),
            _ => None,
        }
    }

    /// The CSV spelling CheXpert uses.
    pub fn as_cell(self) -> &'static str {
        match self {
            Self::Positive => "1.0",
            Self::Negative => "0.0",
            Self::Uncertain => "-1.0",
            Self::Blank => "",
        }
    }
}

/// What the allowed cell values are, for error messages.
pub(crate) const OBSERVATION_VALUES: &str = "{1.0, 0.0, -1.0, blank}";

/// How uncertain (`-1.0`) and blank observations become binary targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UncertaintyPolicy {
    /// Only `1.0` is positive; everything else is negative. ChexReason's choice. For binary
    /// targets this equals U-Zeros; it is kept under the paper's name.
    #[default]
    PositiveOnly,
    /// Uncertain → negative (Irvin et al., 2019).
    UZeros,
    /// Uncertain → positive.
    UOnes,
    /// Uncertain → not scored for that label (the target is `None`).
    UIgnore,
}

impl std::str::FromStr for UncertaintyPolicy {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "positive-only" => Ok(Self::PositiveOnly),
            "u-zeros" | "uzeros" => Ok(Self::UZeros),
            "u-ones" | "uones" => Ok(Self::UOnes),
            "u-ignore" | "uignore" => Ok(Self::UIgnore),
            other => Err(DataError::Config(format!(
                "unknown uncertainty policy `{other}` (use positive-only, u-zeros, u-ones or u-ignore)"
            ))),
        }
    }
}

impl UncertaintyPolicy {
    /// The target for one observation; `None` means "do not score".
    pub fn target(self, observation: Observation) -> Option<bool> {
        match (self, observation) {
            (_, Observation::Positive) => Some(true),
            (_, Observation::Negative | Observation::Blank) => Some(false),
            (Self::PositiveOnly | Self::UZeros, Observation::Uncertain) => Some(false),
            (Self::UOnes, Observation::Uncertain) => Some(true),
            (Self::UIgnore, Observation::Uncertain) => None,
        }
    }
}

/// Frontal or lateral projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Projection {
    Frontal,
    Lateral,
}

/// A radiograph's view: projection plus the beam direction when recorded (AP, PA, LL, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct View {
    pub projection: Projection,
    /// `AP`, `PA`, `LATERAL`, `LL`, … as the dataset spells it; `None` when not recorded.
    pub position: Option<String>,
}

impl View {
    /// Derives the projection from a position code such as MIMIC's `ViewPosition`.
    pub fn from_position(position: &str) -> Self {
        let upper = position.trim().to_ascii_uppercase();
        let projection = match upper.as_str() {
            "LATERAL" | "LL" | "RL" | "LAO" | "RAO" | "LPO" | "XTABLE LATERAL" => {
                Projection::Lateral
            }
            _ => Projection::Frontal,
        };
        Self {
            projection,
            position: (!upper.is_empty()).then_some(upper),
        }
    }

    fn is_ap_or_pa(&self) -> bool {
        matches!(self.position.as_deref(), Some("AP" | "PA"))
    }
}

/// Which views to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViewFilter {
    /// Keep every view.
    #[default]
    All,
    /// Frontal projections only.
    Frontal,
    /// Frontal with a recorded AP or PA position.
    ApPa,
    /// AP only.
    Ap,
    /// PA only.
    Pa,
}

impl ViewFilter {
    /// Whether a view passes the filter.
    pub fn keeps(self, view: &View) -> bool {
        match self {
            Self::All => true,
            Self::Frontal => view.projection == Projection::Frontal,
            Self::ApPa => view.projection == Projection::Frontal && view.is_ap_or_pa(),
            Self::Ap => view.position.as_deref() == Some("AP"),
            Self::Pa => view.position.as_deref() == Some("PA"),
        }
    }
}

impl std::str::FromStr for ViewFilter {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "all" => Ok(Self::All),
            "frontal" => Ok(Self::Frontal),
            "ap-pa" | "appa" | "ap/pa" => Ok(Self::ApPa),
            "ap" => Ok(Self::Ap),
            "pa" => Ok(Self::Pa),
            other => Err(DataError::Config(format!(
                "unknown view filter `{other}` (use all, frontal, ap-pa, ap or pa)"
            ))),
        }
    }
}

/// Which split the dataset's own files put a sample in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfficialSplit {
    Train,
    Validate,
    Test,
    /// The dataset does not say.
    Unspecified,
}

/// One image with its labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Absolute or root-joined path of the image file.
    pub image: PathBuf,
    /// Patient identifier: the unit of a leak-free split.
    pub patient_id: String,
    /// Study identifier, unique within the dataset.
    pub study_id: String,
    pub view: View,
    pub split: OfficialSplit,
    /// One observation per label of the dataset's [`LabelSpace`], in its order.
    pub observations: Vec<Observation>,
}

impl Sample {
    /// Binary targets under a policy; `None` marks a label not scored for this sample.
    pub fn targets(&self, policy: UncertaintyPolicy) -> Vec<Option<bool>> {
        self.observations
            .iter()
            .map(|&o| policy.target(o))
            .collect()
    }

    /// Indices of the labels that are positive under a policy.
    pub fn positive_indices(&self, policy: UncertaintyPolicy) -> Vec<usize> {
        self.targets(policy)
            .iter()
            .enumerate()
            .filter_map(|(i, t)| (*t == Some(true)).then_some(i))
            .collect()
    }
}

/// What to do with a bad row or image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Stop at the first problem and return it.
    #[default]
    FailFast,
    /// Leave the row out, record why in the [`LoadReport`], and go on.
    SkipAndReport,
}

/// Loader options shared by every dataset format.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadOptions {
    pub on_error: OnError,
    pub view_filter: ViewFilter,
    /// Check that each image file exists while reading the label file.
    pub check_images_exist: bool,
    /// Read image paths that are absolute or climb out of the dataset's folder; off unless
    /// the user asks (`--allow-absolute-paths`).
    #[serde(default)]
    pub allow_absolute_paths: bool,
}

/// What happened to an image listed a second time.
pub(crate) enum Listing {
    /// First time the image is listed.
    New,
    /// Listed before with the same labels: counted in [`LoadReport::duplicates`] and dropped.
    Repeat,
}

/// Where each image was first listed, so that a second listing is caught: merged when the
/// labels agree, refused (naming both lines) when they do not.
#[derive(Default)]
pub(crate) struct SeenImages {
    first: std::collections::HashMap<PathBuf, (u64, Vec<Observation>)>,
}

impl SeenImages {
    pub(crate) fn admit(
        &mut self,
        file: &std::path::Path,
        line: u64,
        image: &std::path::Path,
        observations: &[Observation],
    ) -> Result<Listing> {
        match self.first.get(image) {
            None => {
                self.first
                    .insert(image.to_path_buf(), (line, observations.to_vec()));
                Ok(Listing::New)
            }
            Some((_, earlier)) if earlier == observations => Ok(Listing::Repeat),
            Some((first_line, _)) => Err(DataError::DuplicateImage {
                file: file.to_path_buf(),
                line,
                first_line: *first_line,
                image: image.to_path_buf(),
            }),
        }
    }
}

/// `root` joined with the path a data file gives in `column`, refused when it leaves `root`
/// (unless the options allow it).
pub(crate) fn image_path(
    root: &std::path::Path,
    value: &str,
    options: &LoadOptions,
    file: &std::path::Path,
    line: u64,
    column: &str,
) -> Result<PathBuf> {
    crate::paths::join_inside(root, value, options.allow_absolute_paths).map_err(|reason| {
        DataError::PathEscape {
            file: file.to_path_buf(),
            line,
            column: column.to_string(),
            value: value.to_string(),
            reason,
        }
    })
}

/// What a load kept and what it left out, and why. Printed after every load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Rows read from the label file(s).
    pub rows_read: usize,
    /// Samples kept.
    pub kept: usize,
    /// Rows left out by the view filter (not errors).
    pub filtered_by_view: usize,
    /// Rows left out by the split lists (not errors).
    pub filtered_by_split: usize,
    /// Images with no label row (MIMIC studies the labeller did not cover; not errors).
    pub unlabelled: usize,
    /// Rows skipped because they were bad, with the reason for each.
    pub skipped: Vec<String>,
    /// Rows that listed an image again with the same labels (dropped, not errors).
    #[serde(default)]
    pub duplicates: usize,
    /// Categorical label values the label map does not cover, with their row counts; those
    /// rows are left out.
    #[serde(default)]
    pub unmapped: std::collections::BTreeMap<String, usize>,
}

impl LoadReport {
    /// Records an error: returns it under fail-fast, stores it under skip-and-report.
    pub(crate) fn handle(&mut self, on_error: OnError, error: DataError) -> Result<()> {
        match on_error {
            OnError::FailFast => Err(error),
            OnError::SkipAndReport => {
                self.skipped.push(error.to_string());
                Ok(())
            }
        }
    }

    /// One-line summary, always printed so nothing is dropped silently.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "read {} rows, kept {}, filtered by view {}, filtered by split {}, unlabelled {}, skipped {} bad",
            self.rows_read,
            self.kept,
            self.filtered_by_view,
            self.filtered_by_split,
            self.unlabelled,
            self.skipped.len()
        );
        if self.duplicates > 0 {
            line.push_str(&format!(
                ", {} repeated rows with the same labels dropped",
                self.duplicates
            ));
        }
        if !self.unmapped.is_empty() {
            let values: Vec<String> = self
                .unmapped
                .iter()
                .map(|(v, n)| {
                    if v.is_empty() {
                        format!("(blank) × {n}")
                    } else {
                        format!("`{v}` × {n}")
                    }
                })
                .collect();
            line.push_str(&format!(
                ", left out for unmapped labels: {}",
                values.join(", ")
            ));
        }
        if let Some(first) = self.skipped.first() {
            line.push_str(&format!(" (first: {first})"));
        }
        line
    }
}

/// A loaded dataset: its label space, its samples and the load report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    /// Where it came from, e.g. `chexpert:/data/CheXpert-v1.0-small/train.csv`.
    pub source: String,
    pub label_space: LabelSpace,
    /// For each label of the space, whether this source annotates it at all. A label a
    /// source never annotates (Support Devices on NIH) must not be scored as negative.
    pub annotated: Vec<bool>,
    pub samples: Vec<Sample>,
    pub report: LoadReport,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when no sample was kept.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Positive count per label under a policy.
    pub fn positive_counts(&self, policy: UncertaintyPolicy) -> Vec<usize> {
        let mut counts = vec![0; self.label_space.len()];
        for sample in &self.samples {
            for i in sample.positive_indices(policy) {
                counts[i] += 1;
            }
        }
        counts
    }

    /// Count per observation value for each label: (positive, negative, uncertain, blank).
    pub fn observation_counts(&self) -> Vec<[usize; 4]> {
        let mut counts = vec![[0; 4]; self.label_space.len()];
        for sample in &self.samples {
            for (i, o) in sample.observations.iter().enumerate() {
                let slot = match o {
                    Observation::Positive => 0,
                    Observation::Negative => 1,
                    Observation::Uncertain => 2,
                    Observation::Blank => 3,
                };
                counts[i][slot] += 1;
            }
        }
        counts
    }

    /// Number of distinct patients.
    pub fn patient_count(&self) -> usize {
        self.samples
            .iter()
            .map(|s| s.patient_id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// A copy holding only the chosen samples, in the given order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            source: self.source.clone(),
            label_space: self.label_space.clone(),
            annotated: self.annotated.clone(),
            samples: indices.iter().map(|&i| self.samples[i].clone()).collect(),
            report: self.report.clone(),
        }
    }

    /// Keeps the samples of one official split.
    pub fn official_split(&self, split: OfficialSplit) -> Dataset {
        let indices: Vec<usize> = (0..self.len())
            .filter(|&i| self.samples[i].split == split)
            .collect();
        self.subset(&indices)
    }

    /// Re-expresses an NIH-vocabulary dataset in the CheXpert label space. A CheXpert label
    /// is positive when any NIH label mapped to it is; `No Finding` stays as recorded. Labels
    /// nothing maps to are marked not annotated (and blank).
    pub fn nih_to_chexpert(&self, mapping: &NihToChexpert) -> Result<Dataset> {
        if self.label_space != LabelSpace::nih() {
            return Err(DataError::Config(format!(
                "nih_to_chexpert needs a dataset in the NIH label space, not `{}`",
                self.label_space.name
            )));
        }
        let target = LabelSpace::chexpert();
        let nih = LabelSpace::nih();
        let sources: Vec<Option<usize>> = nih
            .labels()
            .iter()
            .map(|l| mapping.map(l).and_then(|c| target.index_of(c)))
            .collect();
        let mut annotated = vec![false; target.len()];
        for (nih_index, t) in sources.iter().enumerate() {
            if let Some(t) = t {
                annotated[*t] |= self.annotated[nih_index];
            }
        }
        let samples = self
            .samples
            .iter()
            .map(|s| {
                let mut observations: Vec<Observation> = annotated
                    .iter()
                    .map(|&a| {
                        if a {
                            Observation::Negative
                        } else {
                            Observation::Blank
                        }
                    })
                    .collect();
                for (nih_index, obs) in s.observations.iter().enumerate() {
                    if let (Some(t), Observation::Positive) = (sources[nih_index], obs) {
                        observations[t] = Observation::Positive;
                    }
                }
                Sample {
                    observations,
                    ..s.clone()
                }
            })
            .collect();
        Ok(Dataset {
            source: format!("{} (as chexpert)", self.source),
            label_space: target,
            annotated,
            samples,
            report: self.report.clone(),
        })
    }

    /// Keeps only the named labels (for example ChexReason's NIH evaluation subset), in the
    /// order given. An unknown name is an error.
    pub fn restrict_labels(&self, labels: &[&str]) -> Result<Dataset> {
        let indices: Vec<usize> = labels
            .iter()
            .map(|l| {
                self.label_space.index_of(l).ok_or_else(|| {
                    DataError::Config(format!(
                        "label `{l}` is not in the `{}` label space ({})",
                        self.label_space.name,
                        self.label_space.joined()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let space = LabelSpace::new(
            format!("{}-subset", self.label_space.name),
            labels.iter().map(|s| s.to_string()).collect(),
        )
        .map_err(DataError::Config)?;
        Ok(Dataset {
            source: self.source.clone(),
            label_space: space,
            annotated: indices.iter().map(|&i| self.annotated[i]).collect(),
            samples: self
                .samples
                .iter()
                .map(|s| Sample {
                    observations: indices.iter().map(|&i| s.observations[i]).collect(),
                    ..s.clone()
                })
                .collect(),
            report: self.report.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_differ_only_on_uncertain() {
        use Observation::*;
        for p in [
            UncertaintyPolicy::PositiveOnly,
            UncertaintyPolicy::UZeros,
            UncertaintyPolicy::UOnes,
            UncertaintyPolicy::UIgnore,
        ] {
            assert_eq!(p.target(Positive), Some(true));
            assert_eq!(p.target(Negative), Some(false));
            assert_eq!(p.target(Blank), Some(false));
        }
        assert_eq!(
            UncertaintyPolicy::PositiveOnly.target(Uncertain),
            Some(false)
        );
        assert_eq!(UncertaintyPolicy::UOnes.target(Uncertain), Some(true));
        assert_eq!(UncertaintyPolicy::UIgnore.target(Uncertain), None);
    }

    #[test]
    fn observation_cells_round_trip() {
        for o in [
            Observation::Positive,
            Observation::Negative,
            Observation::Uncertain,
            Observation::Blank,
        ] {
            assert_eq!(Observation::parse(o.as_cell()), Some(o));
        }
        assert_eq!(Observation::parse("2.0"), None);
        assert_eq!(Observation::parse("yes"), None);
    }

    #[test]
    fn view_filters() {
        let ap = View::from_position("AP");
        let lat = View::from_position("LATERAL");
        let unknown = View {
            projection: Projection::Frontal,
            position: None,
        };
        assert!(ViewFilter::Frontal.keeps(&ap) && !ViewFilter::Frontal.keeps(&lat));
        assert!(ViewFilter::ApPa.keeps(&ap) && !ViewFilter::ApPa.keeps(&unknown));
        assert!(ViewFilter::Frontal.keeps(&unknown));
        assert!(!ViewFilter::Pa.keeps(&ap));
    }
}
