//! CheXpert (`CheXpert-v1.0-small/train.csv`, `valid.csv`).

use std::path::{Path, PathBuf};

use crate::dataset::{
    Dataset, Listing, LoadOptions, LoadReport, OBSERVATION_VALUES, Observation, OfficialSplit,
    Sample, SeenImages, View, image_path,
};
use crate::error::{DataError, Result};
use crate::labels::{CHEXPERT_LABELS, LabelSpace};
use crate::loaders::table::Table;

/// The metadata columns that open CheXpert's CSV, in order.
pub const CHEXPERT_META_COLUMNS: [&str; 5] = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"];

/// Loads one CheXpert CSV. `Path` cells are relative to the parent of the dataset root
/// (they start with `CheXpert-v1.0-small/`), so images resolve against `csv`'s grandparent.
pub fn load_chexpert(csv: &Path, options: &LoadOptions) -> Result<Dataset> {
    let mut table = Table::open(csv)?;
    let expected: Vec<&str> = CHEXPERT_META_COLUMNS
        .iter()
        .chain(CHEXPERT_LABELS.iter())
        .copied()
        .collect();
    for column in &table.header {
        if !expected.contains(&column.as_str()) {
            return Err(DataError::UnknownColumn {
                file: table.file.clone(),
                column: column.clone(),
                expected: expected.join(", "),
            });
        }
    }
    let columns: Vec<usize> = expected
        .iter()
        .map(|c| table.column(c))
        .collect::<Result<_>>()?;
    let (path_col, fl_col, appa_col) = (columns[0], columns[3], columns[4]);
    let label_cols = &columns[5..];
    let image_root = csv
        .canonicalize()
        .map_err(|e| DataError::io(csv, e))?
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let split = match csv.file_stem().and_then(|s| s.to_str()) {
        Some("train") => OfficialSplit::Train,
        Some("valid") => OfficialSplit::Validate,
        Some("test") => OfficialSplit::Test,
        _ => OfficialSplit::Unspecified,
    };

    let mut report = LoadReport::default();
    let mut samples = Vec::new();
    let mut seen = SeenImages::default();
    let width = table.header.len();
    while let Some(row) = table.next_row() {
        report.rows_read += 1;
        let parsed = row.and_then(|row| {
            table.check_len(&row, width)?;
            let cell = |i: usize| row.fields.get(i).unwrap_or("");
            let rel = cell(path_col);
            let (patient_id, study_id) = patient_and_study(rel).ok_or_else(|| {
                DataError::Inconsistent {
                    file: table.file.clone(),
                    line: row.line,
                    message: format!(
                        "column `Path`: `{rel}` does not look like …/patientNNNNN/studyN/viewN_….jpg"
                    ),
                }
            })?;
            let view = parse_view(cell(fl_col), cell(appa_col)).ok_or_else(|| {
                DataError::BadValue {
                    file: table.file.clone(),
                    line: row.line,
                    column: "Frontal/Lateral".into(),
                    value: cell(fl_col).into(),
                    allowed: "{Frontal, Lateral}".into(),
                }
            })?;
            let observations = parse_observations(&table.file, row.line, &row.fields, label_cols, &CHEXPERT_LABELS)?;
            let image = image_path(&image_root, rel, options, &table.file, row.line, "Path")?;
            if let Listing::Repeat = seen.admit(&table.file, row.line, &image, &observations)? {
                return Ok(None);
            }
            if options.check_images_exist && !image.is_file() {
                return Err(DataError::MissingImage {
                    file: table.file.clone(),
                    line: row.line,
                    image,
                });
            }
            Ok(Some(Sample {
                image,
                patient_id,
                study_id,
                view,
                split,
                observations,
            }))
        });
        match parsed {
            Ok(Some(sample)) if options.view_filter.keeps(&sample.view) => samples.push(sample),
            Ok(Some(_)) => report.filtered_by_view += 1,
            Ok(None) => report.duplicates += 1,
            Err(e) => report.handle(options.on_error, e)?,
        }
    }
    report.kept = samples.len();
    Ok(Dataset {
        source: format!("chexpert:{}", table.file.display()),
        label_space: LabelSpace::chexpert(),
        annotated: vec![true; CHEXPERT_LABELS.len()],
        samples,
        report,
    })
}

/// Parses the observation cells of one row, naming file, line and column on a bad value.
pub(crate) fn parse_observations(
    file: &Path,
    line: u64,
    fields: &csv::StringRecord,
    columns: &[usize],
    names: &[impl AsRef<str>],
) -> Result<Vec<Observation>> {
    columns
        .iter()
        .zip(names)
        .map(|(&c, name)| {
            let value = fields.get(c).unwrap_or("");
            Observation::parse(value).ok_or_else(|| DataError::BadValue {
                file: file.to_path_buf(),
                line,
                column: name.as_ref().to_string(),
                value: value.to_string(),
                allowed: OBSERVATION_VALUES.into(),
            })
        })
        .collect()
}

fn patient_and_study(rel: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = rel.split('/').collect();
    let patient = parts.iter().position(|p| p.starts_with("patient"))?;
    let study = parts.get(patient + 1).filter(|s| s.starts_with("study"))?;
    parts.get(patient + 2)?;
    Some((
        parts[patient].to_string(),
        format!("{}/{}", parts[patient], study),
    ))
}

fn parse_view(frontal_lateral: &str, ap_pa: &str) -> Option<View> {
    let projection = match frontal_lateral.trim() {
        "Frontal" => crate::dataset::Projection::Frontal,
        "Lateral" => crate::dataset::Projection::Lateral,
        _ => return None,
    };
    let position = ap_pa.trim();
    Some(View {
        projection,
        position: (!position.is_empty()).then(|| position.to_ascii_uppercase()),
    })
}

/// Where CheXpert's images live relative to a CSV, for writers that mirror the layout.
pub fn chexpert_image_root(csv: &Path) -> PathBuf {
    csv.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
