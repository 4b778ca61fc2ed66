//! MIMIC-CXR-JPG 2.0.0: the CheXpert-labeller file, the DICOM metadata file and the official
//! split, joined on `study_id` / `dicom_id`; each may be plain or gzipped.

use std::collections::HashMap;
use std::path::Path;

use crate::dataset::{
    Dataset, Listing, LoadOptions, LoadReport, Observation, OfficialSplit, Sample, SeenImages, View,
};
use crate::error::{DataError, Result};
use crate::labels::{CHEXPERT_LABELS, LabelSpace};
use crate::loaders::chexpert::parse_observations;
use crate::loaders::table::Table;

/// File names as PhysioNet ships them (the loader also accepts the `.gz` variants).
pub const MIMIC_LABEL_FILE: &str = "mimic-cxr-2.0.0-chexpert.csv";
/// DICOM-level metadata with `ViewPosition`.
pub const MIMIC_METADATA_FILE: &str = "mimic-cxr-2.0.0-metadata.csv";
/// The official train / validate / test split.
pub const MIMIC_SPLIT_FILE: &str = "mimic-cxr-2.0.0-split.csv";

/// Loads MIMIC-CXR-JPG from its root folder (the one holding `files/` and the CSVs).
pub fn load_mimic(root: &Path, options: &LoadOptions) -> Result<Dataset> {
    let mut report = LoadReport::default();
    let labels = read_study_labels(&root.join(MIMIC_LABEL_FILE), options, &mut report)?;
    let splits = read_splits(&root.join(MIMIC_SPLIT_FILE), options, &mut report)?;

    let mut meta = Table::open(&root.join(MIMIC_METADATA_FILE))?;
    let dicom_col = meta.column("dicom_id")?;
    let subject_col = meta.column("subject_id")?;
    let study_col = meta.column("study_id")?;
    let view_col = meta.column("ViewPosition")?;
    let width = meta.header.len();
    let mut samples = Vec::new();
    let mut seen = SeenImages::default();
    while let Some(row) = meta.next_row() {
        report.rows_read += 1;
        let parsed = row.and_then(|row| {
            meta.check_len(&row, width)?;
            let cell = |i: usize| row.fields.get(i).unwrap_or("").trim();
            let (dicom, subject, study) = (cell(dicom_col), cell(subject_col), cell(study_col));
            for (name, value) in [("subject_id", subject), ("study_id", study)] {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(DataError::BadValue {
                        file: meta.file.clone(),
                        line: row.line,
                        column: name.into(),
                        value: value.into(),
                        allowed: "a decimal identifier".into(),
                    });
                }
            }
            let Some((label_subject, observations)) = labels.get(study) else {
                return Ok(Parsed::Unlabelled);
            };
            if label_subject != subject {
                return Err(DataError::Inconsistent {
                    file: meta.file.clone(),
                    line: row.line,
                    message: format!(
                        "study {study} belongs to subject {label_subject} in {MIMIC_LABEL_FILE} but to {subject} here"
                    ),
                });
            }
            if dicom.is_empty() || !crate::paths::is_plain_file_name(dicom) {
                return Err(DataError::PathEscape {
                    file: meta.file.clone(),
                    line: row.line,
                    column: "dicom_id".into(),
                    value: dicom.into(),
                    reason: crate::paths::PathEscape::NotAFileName,
                });
            }
            let image = root
                .join("files")
                .join(format!("p{}", &subject[..subject.len().min(2)]))
                .join(format!("p{subject}"))
                .join(format!("s{study}"))
                .join(format!("{dicom}.jpg"));
            if let Listing::Repeat = seen.admit(&meta.file, row.line, &image, observations)? {
                return Ok(Parsed::Repeat);
            }
            if options.check_images_exist && !image.is_file() {
                return Err(DataError::MissingImage {
                    file: meta.file.clone(),
                    line: row.line,
                    image,
                });
            }
            Ok(Parsed::Kept(Sample {
                image,
                patient_id: subject.to_string(),
                study_id: study.to_string(),
                view: View::from_position(cell(view_col)),
                split: splits
                    .get(dicom)
                    .copied()
                    .unwrap_or(OfficialSplit::Unspecified),
                observations: observations.clone(),
            }))
        });
        match parsed {
            Ok(Parsed::Kept(sample)) if options.view_filter.keeps(&sample.view) => {
                samples.push(sample)
            }
            Ok(Parsed::Kept(_)) => report.filtered_by_view += 1,
            Ok(Parsed::Unlabelled) => report.unlabelled += 1,
            Ok(Parsed::Repeat) => report.duplicates += 1,
            Err(e) => report.handle(options.on_error, e)?,
        }
    }
    report.kept = samples.len();
    Ok(Dataset {
        source: format!("mimic:{}", root.display()),
        label_space: LabelSpace::chexpert(),
        annotated: vec![true; CHEXPERT_LABELS.len()],
        samples,
        report,
    })
}

/// One metadata row's outcome.
enum Parsed {
    Kept(Sample),
    /// No label row covers its study.
    Unlabelled,
    /// The same image again, with the same labels.
    Repeat,
}

type StudyLabels = HashMap<String, (String, Vec<Observation>)>;

fn read_study_labels(
    path: &Path,
    options: &LoadOptions,
    report: &mut LoadReport,
) -> Result<StudyLabels> {
    let mut table = Table::open(path)?;
    let subject_col = table.column("subject_id")?;
    let study_col = table.column("study_id")?;
    for column in &table.header {
        if column != "subject_id"
            && column != "study_id"
            && !CHEXPERT_LABELS.contains(&column.as_str())
        {
            return Err(DataError::UnknownColumn {
                file: table.file.clone(),
                column: column.clone(),
                expected: format!("subject_id, study_id, {}", CHEXPERT_LABELS.join(", ")),
            });
        }
    }
    let label_cols: Vec<usize> = CHEXPERT_LABELS
        .iter()
        .map(|l| table.column(l))
        .collect::<Result<_>>()?;
    let width = table.header.len();
    let mut labels = HashMap::new();
    while let Some(row) = table.next_row() {
        let parsed = row.and_then(|row| {
            table.check_len(&row, width)?;
            let observations = parse_observations(
                &table.file,
                row.line,
                &row.fields,
                &label_cols,
                &CHEXPERT_LABELS,
            )?;
            let study = row.fields.get(study_col).unwrap_or("").trim().to_string();
            let subject = row.fields.get(subject_col).unwrap_or("").trim().to_string();
            Ok((study, subject, observations))
        });
        match parsed {
            Ok((study, subject, observations)) => {
                labels.insert(study, (subject, observations));
            }
            Err(e) => report.handle(options.on_error, e)?,
        }
    }
    Ok(labels)
}

fn read_splits(
    path: &Path,
    options: &LoadOptions,
    report: &mut LoadReport,
) -> Result<HashMap<String, OfficialSplit>> {
    let mut table = Table::open(path)?;
    let dicom_col = table.column("dicom_id")?;
    let split_col = table.column("split")?;
    let width = table.header.len();
    let mut splits = HashMap::new();
    while let Some(row) = table.next_row() {
        let parsed = row.and_then(|row| {
            table.check_len(&row, width)?;
            let value = row.fields.get(split_col).unwrap_or("").trim();
            let split = match value {
                "train" => OfficialSplit::Train,
                "validate" => OfficialSplit::Validate,
                "test" => OfficialSplit::Test,
                _ => {
                    return Err(DataError::BadValue {
                        file: table.file.clone(),
                        line: row.line,
                        column: "split".into(),
                        value: value.into(),
                        allowed: "{train, validate, test}".into(),
                    });
                }
            };
            Ok((
                row.fields.get(dicom_col).unwrap_or("").trim().to_string(),
                split,
            ))
        });
        match parsed {
            Ok((dicom, split)) => {
                splits.insert(dicom, split);
            }
            Err(e) => report.handle(options.on_error, e)?,
        }
    }
    Ok(splits)
}
