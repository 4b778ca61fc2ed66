//! The prompt variants of the ChexReason study and the answer format the rewards parse
//! (`<think>…</think><solution>…</solution>`), plus reasoning traces written from a study's
//! true findings for the synthetic sites, in varied wording.

use chex_data::labels::CHEXPERT_LABELS;
use chex_rewards::OutputFormat;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

/// How the model is asked to answer (the study's prompt variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptVariant {
    /// Labels only, no reasoning.
    LabelOnly,
    /// Free-form reasoning, then labels.
    FreeReasoning,
    /// A short radiology-style narrative, then labels.
    Narrative,
    /// A fixed list of steps (lungs, pleura, heart, devices…), then labels.
    StructuredSteps,
    /// Reasoning, a self-check of each candidate label, then labels.
    SelfCheck,
}

/// Every variant, in the study's order.
pub const PROMPT_VARIANTS: [PromptVariant; 5] = [
    PromptVariant::LabelOnly,
    PromptVariant::FreeReasoning,
    PromptVariant::Narrative,
    PromptVariant::StructuredSteps,
    PromptVariant::SelfCheck,
];

impl PromptVariant {
    /// The user instruction that goes after the image.
    pub fn question(&self) -> String {
        let labels = CHEXPERT_LABELS.join(", ");
        let task = format!("Which of these findings does this chest X-ray show: {labels}?");
        let (think, solution) = OutputFormat::default().empty_blocks();
        let how = match self {
            Self::LabelOnly => format!(
                "Answer with {think} left empty and the findings, comma-separated, in {solution}."
            ),
            Self::FreeReasoning => format!(
                "Reason step by step in {think}, then give the findings, comma-separated, in {solution}."
            ),
            Self::Narrative => format!(
                "Write a short radiology report in {think}, then give the findings, comma-separated, in {solution}."
            ),
            Self::StructuredSteps => format!(
                "In {think} review the lungs, the pleura, the heart and mediastinum, the bones and any devices, one line each; then give the findings, comma-separated, in {solution}."
            ),
            Self::SelfCheck => format!(
                "Reason in {think}, check each finding you name against the image, then give the findings, comma-separated, in {solution}."
            ),
        };
        format!("{task} {how}")
    }
}

/// Phrases a radiologist might use for the visible sign of each CheXpert finding.
fn sign_phrases(label: &str) -> &'static [&'static str] {
    match label {
        "No Finding" => &[
            "No acute cardiopulmonary abnormality.",
            "The lungs are clear and the heart is normal in size.",
            "Unremarkable chest radiograph.",
        ],
        "Enlarged Cardiomediastinum" => &[
            "The mediastinum is widened.",
            "The cardiomediastinal silhouette is enlarged.",
        ],
        "Cardiomegaly" => &[
            "The heart is enlarged.",
            "The cardiac silhouette is enlarged.",
            "Cardiothoracic ratio above one half.",
        ],
        "Lung Opacity" => &[
            "There is an area of increased opacity.",
            "Hazy opacity in the lung field.",
        ],
        "Lung Lesion" => &[
            "A rounded lesion is seen in the lung.",
            "There is a nodular density.",
        ],
        "Edema" => &[
            "Bilateral interstitial markings suggest edema.",
            "Perihilar haziness in keeping with pulmonary edema.",
        ],
        "Consolidation" => &[
            "Dense airspace consolidation is present.",
            "A lobar consolidation is seen.",
        ],
        "Pneumonia" => &[
            "The opacity is consistent with pneumonia.",
            "Findings suggest an infectious process.",
        ],
        "Atelectasis" => &[
            "Linear atelectasis at the base.",
            "There is volume loss with atelectasis.",
        ],
        "Pneumothorax" => &[
            "A pleural line with absent lung markings indicates pneumothorax.",
            "There is a pneumothorax.",
        ],
        "Pleural Effusion" => &[
            "The costophrenic angle is blunted by an effusion.",
            "There is a pleural effusion.",
        ],
        "Pleural Other" => &["The pleura is thickened.", "There is pleural thickening."],
        "Fracture" => &[
            "A rib fracture is visible.",
            "There is a cortical break in a rib.",
        ],
        "Support Devices" => &[
            "A support device is in place.",
            "Lines and tubes are present.",
        ],
        _ => &["An abnormality is present."],
    }
}

/// The answer block for a set of labels, with a reasoning trace in `variant`'s style written
/// from those labels (what the SFT stage imitates when no teacher trace is given).
pub fn reference_answer<R: Rng>(labels: &[&str], variant: PromptVariant, rng: &mut R) -> String {
    let findings = if labels.is_empty() {
        vec!["No Finding"]
    } else {
        labels.to_vec()
    };
    let signs: Vec<&str> = findings
        .iter()
        .map(|l| {
            *sign_phrases(l)
                .choose(rng)
                .unwrap_or(&"An abnormality is present.")
        })
        .collect();
    let think = match variant {
        PromptVariant::LabelOnly => String::new(),
        PromptVariant::FreeReasoning => signs.join(" "),
        PromptVariant::Narrative => format!(
            "Findings: {} Impression: {}.",
            signs.join(" "),
            findings.join(", ")
        ),
        PromptVariant::StructuredSteps => {
            let mut lines = Vec::new();
            for (area, members) in [
                (
                    "Lungs",
                    &[
                        "Lung Opacity",
                        "Lung Lesion",
                        "Edema",
                        "Consolidation",
                        "Pneumonia",
                        "Atelectasis",
                    ][..],
                ),
                (
                    "Pleura",
                    &["Pneumothorax", "Pleural Effusion", "Pleural Other"][..],
                ),
                (
                    "Heart and mediastinum",
                    &["Cardiomegaly", "Enlarged Cardiomediastinum"][..],
                ),
                ("Bones", &["Fracture"][..]),
                ("Devices", &["Support Devices"][..]),
            ] {
                let here: Vec<&str> = findings
                    .iter()
                    .zip(&signs)
                    .filter(|(l, _)| members.contains(l))
                    .map(|(_, s)| *s)
                    .collect();
                let text = if here.is_empty() {
                    "normal.".to_string()
                } else {
                    here.join(" ")
                };
                lines.push(format!("{area}: {text}"));
            }
            lines.join("\n")
        }
        PromptVariant::SelfCheck => format!(
            "{} Check: {}.",
            signs.join(" "),
            findings
                .iter()
                .map(|f| format!("{f} confirmed"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    OutputFormat::default().render(&think, &findings.join(", "))
}
