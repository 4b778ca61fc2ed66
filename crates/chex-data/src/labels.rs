//! Label spaces and the CheXpert ↔ NIH ChestX-ray14 mapping, kept in one place so every
//! loader, metric and report agrees on names and order. `docs/labels.md` explains the choices.

use serde::{Deserialize, Serialize};

/// The 14 CheXpert observations, in the column order of CheXpert's `train.csv` and
/// MIMIC-CXR-JPG's `mimic-cxr-2.0.0-chexpert.csv`.
pub const CHEXPERT_LABELS: [&str; 14] = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
];

/// The NIH ChestX-ray14 vocabulary: 14 findings plus `No Finding`, spelled as in
/// `Data_Entry_2017.csv` (note `Pleural_Thickening` with an underscore).
pub const NIH_LABELS: [&str; 15] = [
    "No Finding",
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
];

/// The CheXpert labels ChexReason scored on NIH ChestX-ray14 (cross-dataset evaluation).
pub const CHEXREASON_NIH_EVAL_LABELS: [&str; 9] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Lung Lesion",
    "No Finding",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
];

/// An ordered set of label names; a sample's observations are indexed by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSpace {
    /// Human-readable name, e.g. `chexpert`.
    pub name: String,
    labels: Vec<String>,
}

impl LabelSpace {
    /// Builds a label space; names must be unique and non-empty.
    pub fn new(name: impl Into<String>, labels: Vec<String>) -> Result<Self, String> {
        let mut seen = std::collections::HashSet::new();
        for label in &labels {
            if label.trim().is_empty() {
                return Err("empty label name".into());
            }
            if !seen.insert(label.as_str()) {
                return Err(format!("label `{label}` appears twice"));
            }
        }
        Ok(Self {
            name: name.into(),
            labels,
        })
    }

    /// The 14 CheXpert observations.
    pub fn chexpert() -> Self {
        Self::from_static("chexpert", &CHEXPERT_LABELS)
    }

    /// The 15 NIH ChestX-ray14 labels.
    pub fn nih() -> Self {
        Self::from_static("nih", &NIH_LABELS)
    }

    fn from_static(name: &str, labels: &[&str]) -> Self {
        Self {
            name: name.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Label names in order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the space has no labels.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Position of a label, matched exactly.
    pub fn index_of(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|l| l == label)
    }

    /// Comma-separated names, for error messages.
    pub fn joined(&self) -> String {
        self.labels.join(", ")
    }
}

/// How an NIH label relates to a CheXpert one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MappingKind {
    /// Same finding under the same or an equivalent name.
    Exact,
    /// A narrower or overlapping finding; switchable in [`NihToChexpert`].
    Approximate,
}

/// Which approximate NIH → CheXpert mappings are switched on. The exact ones always are.
///
/// The default follows ChexReason: Mass/Nodule count as Lung Lesion and Pleural_Thickening as
/// Pleural Other (both are in its NIH evaluation subset); Infiltration is *not* mapped to Lung
/// Opacity, because Lung Opacity is not scored on NIH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NihToChexpert {
    /// Mass and Nodule → Lung Lesion.
    pub mass_nodule_to_lung_lesion: bool,
    /// Pleural_Thickening → Pleural Other.
    pub pleural_thickening_to_pleural_other: bool,
    /// Infiltration → Lung Opacity.
    pub infiltration_to_lung_opacity: bool,
}

impl Default for NihToChexpert {
    fn default() -> Self {
        Self {
            mass_nodule_to_lung_lesion: true,
            pleural_thickening_to_pleural_other: true,
            infiltration_to_lung_opacity: false,
        }
    }
}

/// Every NIH label with its CheXpert counterpart and the kind of match; NIH labels absent
/// here (Emphysema, Fibrosis, Hernia) have no CheXpert counterpart.
pub const NIH_TO_CHEXPERT_TABLE: [(&str, &str, MappingKind); 12] = [
    ("No Finding", "No Finding", MappingKind::Exact),
    ("Atelectasis", "Atelectasis", MappingKind::Exact),
    ("Cardiomegaly", "Cardiomegaly", MappingKind::Exact),
    ("Consolidation", "Consolidation", MappingKind::Exact),
    ("Edema", "Edema", MappingKind::Exact),
    ("Effusion", "Pleural Effusion", MappingKind::Exact),
    ("Pneumonia", "Pneumonia", MappingKind::Exact),
    ("Pneumothorax", "Pneumothorax", MappingKind::Exact),
    ("Mass", "Lung Lesion", MappingKind::Approximate),
    ("Nodule", "Lung Lesion", MappingKind::Approximate),
    (
        "Pleural_Thickening",
        "Pleural Other",
        MappingKind::Approximate,
    ),
    ("Infiltration", "Lung Opacity", MappingKind::Approximate),
];

impl NihToChexpert {
    /// Only the exact matches.
    pub fn exact_only() -> Self {
        Self {
            mass_nodule_to_lung_lesion: false,
            pleural_thickening_to_pleural_other: false,
            infiltration_to_lung_opacity: false,
        }
    }

    /// Every mapping, exact and approximate.
    pub fn all() -> Self {
        Self {
            mass_nodule_to_lung_lesion: true,
            pleural_thickening_to_pleural_other: true,
            infiltration_to_lung_opacity: true,
        }
    }

    fn enabled(&self, nih: &str) -> bool {
        match nih {
            "Mass" | "Nodule" => self.mass_nodule_to_lung_lesion,
            "Pleural_Thickening" => self.pleural_thickening_to_pleural_other,
            "Infiltration" => self.infiltration_to_lung_opacity,
            _ => true,
        }
    }

    /// The CheXpert label an NIH label maps to under these switches, if any.
    pub fn map(&self, nih_label: &str) -> Option<&'static str> {
        NIH_TO_CHEXPERT_TABLE
            .iter()
            .find(|(nih, _, _)| *nih == nih_label)
            .filter(|(nih, _, _)| self.enabled(nih))
            .map(|(_, chexpert, _)| *chexpert)
    }

    /// CheXpert labels that NIH annotates under these switches: the ones a cross-site
    /// evaluation can score.
    pub fn covered_chexpert_labels(&self) -> Vec<&'static str> {
        CHEXPERT_LABELS
            .iter()
            .copied()
            .filter(|c| {
                NIH_TO_CHEXPERT_TABLE
                    .iter()
                    .any(|(nih, chexpert, _)| chexpert == c && self.enabled(nih))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chexreason_subset_is_covered_by_default_mapping() {
        let covered = NihToChexpert::default().covered_chexpert_labels();
        for label in CHEXREASON_NIH_EVAL_LABELS {
            assert!(covered.contains(&label), "{label} not covered");
        }
        assert!(!covered.contains(&"Lung Opacity"));
        assert!(
            NihToChexpert::all()
                .covered_chexpert_labels()
                .contains(&"Lung Opacity")
        );
    }

    #[test]
    fn switches_turn_approximate_mappings_off() {
        let exact = NihToChexpert::exact_only();
        assert_eq!(exact.map("Effusion"), Some("Pleural Effusion"));
        assert_eq!(exact.map("Mass"), None);
        assert_eq!(exact.map("Emphysema"), None);
        assert_eq!(NihToChexpert::default().map("Nodule"), Some("Lung Lesion"));
    }

    #[test]
    fn label_space_rejects_duplicates() {
        assert!(LabelSpace::new("x", vec!["A".into(), "A".into()]).is_err());
        assert_eq!(LabelSpace::chexpert().index_of("Fracture"), Some(12));
    }
}
