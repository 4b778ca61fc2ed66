//! A hospital's own CSV: one row per image and a path column, with labels either in
//! CheXpert-valued columns (`1.0`, `0.0`, `-1.0`, blank) or in one categorical column whose
//! values a label map translates (`No finding` → `No Finding`, `COVID-19` → `Pneumonia`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{
    Dataset, Listing, LoadOptions, LoadReport, Observation, OfficialSplit, Projection, Sample,
    SeenImages, View, ViewFilter, image_path,
};
use crate::error::{DataError, Result};
use crate::labels::{CHEXPERT_LABELS, LabelSpace};
use crate::loaders::chexpert::parse_observations;
use crate::loaders::table::Table;

/// What separates several findings in one categorical cell (`Edema|Effusion`), as in NIH.
pub const CATEGORY_SEPARATOR: char = '|';

/// Which columns mean what in a generic CSV.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericCsvSpec {
    /// Column holding the image path, relative to `image_root`.
    pub path_column: String,
    /// CheXpert-valued label columns; they become the dataset's label space, in this order.
    #[serde(default)]
    pub label_columns: Vec<String>,
    /// One categorical label column (instead of `label_columns`), read through `label_map`.
    #[serde(default)]
    pub label_column: Option<String>,
    /// Categorical value → label name; an empty name means "none of our findings" (every
    /// label negative). Rows with a value the map lacks are left out and counted.
    #[serde(default)]
    pub label_map: BTreeMap<String, String>,
    /// Column holding the patient identifier; without it each image is its own patient.
    #[serde(default)]
    pub patient_column: Option<String>,
    /// Column holding a view position (`AP`, `PA`, `LATERAL`, …).
    #[serde(default)]
    pub view_column: Option<String>,
    /// The view column's own spellings → `AP`, `PA`, `LATERAL`, …; values it lacks are read
    /// as written.
    #[serde(default)]
    pub view_map: BTreeMap<String, String>,
    /// Folder image paths are relative to; defaults to the CSV's folder.
    #[serde(default)]
    pub image_root: Option<PathBuf>,
}

impl GenericCsvSpec {
    /// Checks the spec before any file is read: one kind of labels, a usable map.
    pub fn validate(&self) -> Result<()> {
        let refuse = |m: String| Err(DataError::Config(m));
        match (&self.label_column, self.label_columns.is_empty()) {
            (Some(_), false) => {
                return refuse(
                    "give either label columns (CheXpert values) or one categorical label \
                     column with a label map, not both"
                        .into(),
                );
            }
            (None, true) => {
                return refuse(
                    "name the labels: label columns holding 1.0/0.0/-1.0/blank, or one \
                     categorical label column with a label map"
                        .into(),
                );
            }
            (Some(column), true) if self.label_map.is_empty() => {
                return refuse(format!(
                    "the categorical label column `{column}` needs a label map (value=Label, …)"
                ));
            }
            (None, false) if !self.label_map.is_empty() => {
                return refuse("a label map needs a categorical label column".into());
            }
            _ => {}
        }
        if !self.view_map.is_empty() && self.view_column.is_none() {
            return refuse("a view map needs a view column".into());
        }
        Ok(())
    }

    /// The label space a categorical map produces: its distinct non-empty targets, in
    /// CheXpert's order when they are all CheXpert findings, else alphabetical.
    fn categorical_space(&self) -> Result<LabelSpace> {
        let targets: BTreeSet<&str> = self
            .label_map
            .values()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect();
        if targets.is_empty() {
            return Err(DataError::Config(
                "the label map sends every value to no label; name at least one finding".into(),
            ));
        }
        let labels: Vec<String> = if targets.iter().all(|t| CHEXPERT_LABELS.contains(t)) {
            CHEXPERT_LABELS
                .iter()
                .filter(|l| targets.contains(*l))
                .map(|l| l.to_string())
                .collect()
        } else {
            targets.iter().map(|t| t.to_string()).collect()
        };
        LabelSpace::new("custom", labels).map_err(DataError::Config)
    }
}

/// How a row's labels are read.
enum LabelReader<'a> {
    /// CheXpert-valued columns.
    Columns(Vec<usize>),
    /// One categorical column through the map, into `space`.
    Categorical {
        column: usize,
        map: &'a BTreeMap<String, String>,
        space: &'a LabelSpace,
    },
}

/// A categorical cell's values that the map lacks (a blank cell is the value ``).
struct Unmapped(Vec<String>);

impl LabelReader<'_> {
    fn read(
        &self,
        file: &Path,
        line: u64,
        fields: &csv::StringRecord,
        spec: &GenericCsvSpec,
    ) -> Result<std::result::Result<Vec<Observation>, Unmapped>> {
        match self {
            Self::Columns(columns) => {
                parse_observations(file, line, fields, columns, &spec.label_columns).map(Ok)
            }
            Self::Categorical { column, map, space } => {
                let cell = fields.get(*column).unwrap_or("").trim();
                let mut observations = vec![Observation::Negative; space.len()];
                let mut unmapped = Vec::new();
                for value in cell.split(CATEGORY_SEPARATOR).map(str::trim) {
                    match map.get(value).map(|t| t.trim()) {
                        None => unmapped.push(value.to_string()),
                        Some("") => {}
                        Some(target) => {
                            // Every non-empty target is in the space built from the map.
                            if let Some(i) = space.index_of(target) {
                                observations[i] = Observation::Positive;
                            }
                        }
                    }
                }
                Ok(if unmapped.is_empty() {
                    Ok(observations)
                } else {
                    Err(Unmapped(unmapped))
                })
            }
        }
    }
}

/// One row's outcome.
enum Parsed {
    Kept(Sample),
    Repeat,
    Unmapped(Unmapped),
}

/// Loads a generic CSV described by `spec`.
pub fn load_generic_csv(
    csv: &Path,
    spec: &GenericCsvSpec,
    options: &LoadOptions,
) -> Result<Dataset> {
    spec.validate()?;
    if spec.view_column.is_none()
        && matches!(
            options.view_filter,
            ViewFilter::ApPa | ViewFilter::Ap | ViewFilter::Pa
        )
    {
        return Err(DataError::Config(format!(
            "the view filter {:?} needs a view column (--view-column): without one no row \
             records AP or PA, and every row would be left out",
            options.view_filter
        )));
    }
    let mut table = Table::open(csv)?;
    let categorical_space;
    let (space, labels) = match &spec.label_column {
        Some(name) => {
            categorical_space = spec.categorical_space()?;
            let reader = LabelReader::Categorical {
                column: table.column(name)?,
                map: &spec.label_map,
                space: &categorical_space,
            };
            (categorical_space.clone(), reader)
        }
        None => {
            let space =
                LabelSpace::new("custom", spec.label_columns.clone()).map_err(DataError::Config)?;
            let columns = spec
                .label_columns
                .iter()
                .map(|l| table.column(l))
                .collect::<Result<_>>()?;
            (space, LabelReader::Columns(columns))
        }
    };
    let path_col = table.column(&spec.path_column)?;
    let optional_column =
        |name: &Option<String>| name.as_deref().map(|c| table.column(c)).transpose();
    let patient_col = optional_column(&spec.patient_column)?;
    let view_col = optional_column(&spec.view_column)?;
    let root = spec
        .image_root
        .clone()
        .unwrap_or_else(|| csv.parent().map(Path::to_path_buf).unwrap_or_default());
    if !root.as_os_str().is_empty() && !root.is_dir() {
        return Err(DataError::Config(format!(
            "the image root {} is not a folder",
            root.display()
        )));
    }
    let width = table.header.len();

    let mut report = LoadReport::default();
    let mut samples = Vec::new();
    let mut seen = SeenImages::default();
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
            let observations = match labels.read(&table.file, row.line, &row.fields, spec)? {
                Ok(observations) => observations,
                Err(unmapped) => return Ok(Parsed::Unmapped(unmapped)),
            };
            let image = image_path(
                &root,
                rel,
                options,
                &table.file,
                row.line,
                &spec.path_column,
            )?;
            if let Listing::Repeat = seen.admit(&table.file, row.line, &image, &observations)? {
                return Ok(Parsed::Repeat);
            }
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
            let view = match view_col {
                Some(c) => {
                    let written = cell(c);
                    View::from_position(spec.view_map.get(written).map_or(written, |v| v.as_str()))
                }
                None => View {
                    projection: Projection::Frontal,
                    position: None,
                },
            };
            Ok(Parsed::Kept(Sample {
                image,
                study_id: rel.to_string(),
                patient_id: patient,
                view,
                split: OfficialSplit::Unspecified,
                observations,
            }))
        });
        match parsed {
            Ok(Parsed::Kept(sample)) if options.view_filter.keeps(&sample.view) => {
                samples.push(sample)
            }
            Ok(Parsed::Kept(_)) => report.filtered_by_view += 1,
            Ok(Parsed::Repeat) => report.duplicates += 1,
            Ok(Parsed::Unmapped(Unmapped(values))) => {
                for value in values {
                    *report.unmapped.entry(value).or_default() += 1;
                }
            }
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
