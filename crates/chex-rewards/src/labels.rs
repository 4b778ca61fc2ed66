//! Turning an answer block into labels: split, trim, case-fold, synonyms, and a report of what
//! could not be matched or came twice.

use std::collections::HashMap;

use chex_data::CHEXPERT_LABELS;
use serde::{Deserialize, Serialize};

/// Label names plus the phrases that mean them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelVocabulary {
    labels: Vec<String>,
    phrases: HashMap<String, usize>,
}

/// Folds a phrase for lookup: lower case, `_` as space, single spaces, no bullets, numbering
/// or trailing full stop.
pub fn normalise_phrase(raw: &str) -> String {
    let trimmed = raw
        .trim()
        .trim_start_matches(|c: char| c == '-' || c == '*' || c == '•' || c.is_whitespace());
    // Numbered lists: "1." or "2)".
    let unnumbered = match trimmed.find(['.', ')']) {
        Some(i) if i > 0 && trimmed[..i].chars().all(|c| c.is_ascii_digit()) => &trimmed[i + 1..],
        _ => trimmed,
    };
    unnumbered
        .trim()
        .trim_end_matches('.')
        .to_lowercase()
        .replace('_', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Synonyms of the CheXpert labels as radiologists and models write them.
const CHEXPERT_SYNONYMS: [(&str, &str); 34] = [
    ("no findings", "No Finding"),
    ("normal", "No Finding"),
    ("none", "No Finding"),
    ("no acute findings", "No Finding"),
    ("no abnormality", "No Finding"),
    ("widened mediastinum", "Enlarged Cardiomediastinum"),
    ("mediastinal widening", "Enlarged Cardiomediastinum"),
    ("enlarged heart", "Cardiomegaly"),
    ("cardiac enlargement", "Cardiomegaly"),
    ("heart enlargement", "Cardiomegaly"),
    ("opacity", "Lung Opacity"),
    ("airspace opacity", "Lung Opacity"),
    ("ground-glass opacity", "Lung Opacity"),
    ("infiltrate", "Lung Opacity"),
    ("infiltration", "Lung Opacity"),
    ("lesion", "Lung Lesion"),
    ("nodule", "Lung Lesion"),
    ("mass", "Lung Lesion"),
    ("pulmonary nodule", "Lung Lesion"),
    ("oedema", "Edema"),
    ("pulmonary edema", "Edema"),
    ("pulmonary oedema", "Edema"),
    ("atelectatic change", "Atelectasis"),
    ("ptx", "Pneumothorax"),
    ("effusion", "Pleural Effusion"),
    ("pleural fluid", "Pleural Effusion"),
    ("pleural thickening", "Pleural Other"),
    ("rib fracture", "Fracture"),
    ("fractures", "Fracture"),
    ("support device", "Support Devices"),
    ("devices", "Support Devices"),
    ("lines and tubes", "Support Devices"),
    ("tubes and lines", "Support Devices"),
    ("pacemaker", "Support Devices"),
];

impl LabelVocabulary {
    /// A vocabulary that knows only the label names themselves (case-folded).
    pub fn new(labels: Vec<String>) -> Self {
        let phrases = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (normalise_phrase(l), i))
            .collect();
        Self { labels, phrases }
    }

    /// The 14 CheXpert labels with [`CHEXPERT_SYNONYMS`].
    pub fn chexpert() -> Self {
        let mut vocabulary = Self::new(CHEXPERT_LABELS.iter().map(|s| s.to_string()).collect());
        for (phrase, label) in CHEXPERT_SYNONYMS {
            vocabulary
                .add_synonym(phrase, label)
                .expect("synonym table names CheXpert labels");
        }
        vocabulary
    }

    /// Adds a phrase for a label; errors when the label is not in the vocabulary.
    pub fn add_synonym(&mut self, phrase: &str, label: &str) -> Result<(), String> {
        let index = self
            .labels
            .iter()
            .position(|l| l == label)
            .ok_or_else(|| format!("`{label}` is not a label of this vocabulary"))?;
        self.phrases.insert(normalise_phrase(phrase), index);
        Ok(())
    }

    /// Label names in order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The label a phrase means, if any.
    pub fn lookup(&self, phrase: &str) -> Option<usize> {
        self.phrases.get(&normalise_phrase(phrase)).copied()
    }
}

/// Labels read from an answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExtractedLabels {
    /// Recognised labels, first mention order, each once.
    pub labels: Vec<usize>,
    /// Items that matched no label, as written.
    pub invalid: Vec<String>,
    /// Labels mentioned more than once (one entry per extra mention).
    pub duplicates: Vec<usize>,
}

/// Splits an answer on commas, semicolons, `|` and new lines and matches each item.
pub fn extract_labels(answer: &str, vocabulary: &LabelVocabulary) -> ExtractedLabels {
    let mut out = ExtractedLabels::default();
    for item in answer.split([',', ';', '|', '\n']) {
        if normalise_phrase(item).is_empty() {
            continue;
        }
        match vocabulary.lookup(item) {
            Some(label) if out.labels.contains(&label) => out.duplicates.push(label),
            Some(label) => out.labels.push(label),
            None => out.invalid.push(item.trim().to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synonyms_case_bullets_duplicates_and_invalid() {
        let v = LabelVocabulary::chexpert();
        let got = extract_labels(
            "- Enlarged heart\n2. pleural_effusion; EFFUSION | Pneumothorax., dragons",
            &v,
        );
        let names: Vec<&str> = got.labels.iter().map(|&i| v.labels()[i].as_str()).collect();
        assert_eq!(names, ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]);
        assert_eq!(got.duplicates.len(), 1);
        assert_eq!(got.invalid, ["dragons"]);
        assert!(extract_labels("  ,, ", &v).labels.is_empty());
    }
}
