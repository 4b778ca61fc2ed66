//! A hospital's own CSV: one row per image, a path column, and label columns whose cells use
//! CheXpert's values (`1.0`, `0.0`, `-1.0`, blank).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, LoadOptions, LoadReport, OfficialSplit, Sample, View};
use crate::error::{DataError, Result};
use crate::labels::LabelSpace;
use crate::loaders::chexpert::parse_observations;
use crate::loaders::table::Table;

/// Which columns mean what in a generic CSV.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenericCsvSpec {
    /// Column holding the image path, relative to `image_root` (or absolute).
    pub path_column: String,
    /// Label columns; they become the dataset's label space, in this order.
    pub label_columns: Vec<String>,
    /// Column holding the patient identifier; without it each image is its own patient.
    pub patient_column: Option<String>,
    /// Column holding a view position (`AP`, `PA`, `LATERAL`, …).
    pub view_column: Option<String>,
    /// Folder image paths are relative to; defaults to the CSV's folder.
    pub image_root: Option<PathBuf>,
}

/// Loads a generic CSV described by `spec`.
pub fn load_generic_csv(
    csv: &Path,
    spec: &GenericCsvSpec,
    options: &LoadOptions,
) -> Result<Dataset> {
    let mut table = Table::open(csv)?;
    let space = LabelSpace::new("custom", spec.label_columns.clone()).map_err(DataError::Config)?;
    let path_col = table.column(&spec.path_column)?;
    let label_cols: Vec<usize> = spec
        .label_columns
        .iter()
        .map(|l| table.column(l))
        .collect::<Result<_>>()?;
    let patient_col = spec
        .patient_column
        .as_deref()
        .map(|c| table.column(c))
        .transpose()?;
    let view_col = spec
        .view_column
        .as_deref()
        .map(|c| table.column(c))
        .transpose()?;
    let root = spec
        .image_root
        .clone()
        .unwrap_or_else(|| csv.parent().map(Path::to_path_buf).unwrap_or_default());
    let width = table.header.len();

    let mut report = LoadReport::default();
    let mut samples = Vec::new();
    while let Some(row) = table.next_row() {
        report.rows_read += 1;
        let parsed = row.and_then(|row| {
            table.check_len(&row, width)?;
            let cell = |i: usize| row.fields.get(i).unwrap_or("").trim();
            let rel = cell(path_col);
            if rel.is_empty() {
                return Err(DataError::BadValue {
                    file: table.file.clone(),
                    line: row.line,
                    column: spec.path_column.clone(),
                    value: String::new(),
                    allowed: "an image path".into(),
                });
            }
            let observations = parse_observations(
                &table.file,
                row.line,
                &row.fields,
                &label_cols,
                &spec.label_columns,
            )?;
            let image = root.join(rel);
            if options.check_images_exist && !image.is_file() {
                return Err(DataError::MissingImage {
                    file: table.file.clone(),
                    line: row.line,
                    image,
                });
            }
            let patient = patient_col
                .map(|c| cell(c).to_string())
                .unwrap_or_else(|| rel.to_string());
            Ok(Sample {
                image,
                study_id: rel.to_string(),
                patient_id: patient,
                view: view_col
                    .map(|c| View::from_position(cell(c)))
                    .unwrap_or(View {
                        projection: crate::dataset::Projection::Frontal,
                        position: None,
                    }),
                split: OfficialSplit::Unspecified,
                observations,
            })
        });
        match parsed {
            Ok(sample) if options.view_filter.keeps(&sample.view) => samples.push(sample),
            Ok(_) => report.filtered_by_view += 1,
            Err(e) => report.handle(options.on_error, e)?,
        }
    }
    report.kept = samples.len();
    let annotated = vec![true; space.len()];
    Ok(Dataset {
        source: format!("csv:{}", table.file.display()),
        label_space: space,
        annotated,
        samples,
        report,
    })
}
