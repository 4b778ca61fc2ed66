//! NIH ChestX-ray14: `Data_Entry_2017.csv`, the official split lists, and images under
//! `images/` or the release's `images_001/images` … `images_012/images`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::dataset::{
    Dataset, Listing, LoadOptions, LoadReport, Observation, OfficialSplit, Sample, SeenImages, View,
};
use crate::error::{DataError, Result};
use crate::labels::{LabelSpace, NIH_LABELS};
use crate::loaders::table::{Table, read_list};

/// The label file's name.
pub const NIH_LABEL_FILE: &str = "Data_Entry_2017.csv";
/// The official train+validation list.
pub const NIH_TRAIN_VAL_LIST: &str = "train_val_list.txt";
/// The official test list.
pub const NIH_TEST_LIST: &str = "test_list.txt";

/// Loads NIH ChestX-ray14 from its root folder. When the split lists are present each
/// sample carries its official split (Train or Test); images in neither list are
/// `Unspecified`.
pub fn load_nih(root: &Path, options: &LoadOptions) -> Result<Dataset> {
    let mut table = Table::open(&root.join(NIH_LABEL_FILE))?;
    // Two header names contain commas (`OriginalImage[Width,Height]`,
    // `OriginalImagePixelSpacing[x,y]`) and are not quoted, so the header splits into more
    // fields than it has names; the data rows split the same way, so columns are counted
    // in fields, not names.
    let header_fields = table.header.len();
    let names = merge_bracketed(&table.header);
    let field_of = |name: &str| -> Result<usize> {
        let (mut field, mut found) = (0, None);
        for n in &names {
            if n == name {
                found = Some(field);
            }
            field += n.matches(',').count() + 1;
        }
        found.ok_or_else(|| DataError::MissingColumn {
            file: table.file.clone(),
            column: name.into(),
        })
    };
    let image_col = field_of("Image Index")?;
    let labels_col = field_of("Finding Labels")?;
    let patient_col = field_of("Patient ID")?;
    let view_col = field_of("View Position")?;
    let follow_up_col = field_of("Follow-up #").ok();

    let images = ImageIndex::scan(root)?;
    let train_val = optional_list(&root.join(NIH_TRAIN_VAL_LIST))?;
    let test = optional_list(&root.join(NIH_TEST_LIST))?;
    let space = LabelSpace::nih();

    let mut report = LoadReport::default();
    let mut samples = Vec::new();
    let mut seen = SeenImages::default();
    while let Some(row) = table.next_row() {
        report.rows_read += 1;
        let parsed = row.and_then(|row| {
            table.check_len(&row, header_fields)?;
            let cell = |i: usize| row.fields.get(i).unwrap_or("").trim();
            let name = cell(image_col);
            if name.is_empty() {
                return Err(DataError::BadValue {
                    file: table.file.clone(),
                    line: row.line,
                    column: "Image Index".into(),
                    value: String::new(),
                    allowed: "an image file name".into(),
                });
            }
            let mut observations = vec![Observation::Negative; space.len()];
            for label in cell(labels_col).split('|').map(str::trim) {
                let index = space
                    .index_of(label)
                    .ok_or_else(|| DataError::UnknownLabel {
                        file: table.file.clone(),
                        line: row.line,
                        column: "Finding Labels".into(),
                        label: label.into(),
                        known: space.joined(),
                    })?;
                observations[index] = Observation::Positive;
            }
            let positives = observations
                .iter()
                .filter(|o| **o == Observation::Positive)
                .count();
            if observations[0] == Observation::Positive && positives > 1 {
                return Err(DataError::Inconsistent {
                    file: table.file.clone(),
                    line: row.line,
                    message: format!(
                        "`No Finding` listed together with findings in `{}`",
                        cell(labels_col)
                    ),
                });
            }
            let patient = cell(patient_col);
            if patient.is_empty() || !patient.bytes().all(|b| b.is_ascii_digit()) {
                return Err(DataError::BadValue {
                    file: table.file.clone(),
                    line: row.line,
                    column: "Patient ID".into(),
                    value: patient.into(),
                    allowed: "a decimal identifier".into(),
                });
            }
            if !crate::paths::is_plain_file_name(name) && !options.allow_absolute_paths {
                return Err(DataError::PathEscape {
                    file: table.file.clone(),
                    line: row.line,
                    column: "Image Index".into(),
                    value: name.into(),
                    reason: if Path::new(name).is_absolute() {
                        crate::paths::PathEscape::Absolute
                    } else {
                        crate::paths::PathEscape::NotAFileName
                    },
                });
            }
            let image = images.locate(name);
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
            let split = if train_val.as_ref().is_some_and(|l| l.contains(name)) {
                OfficialSplit::Train
            } else if test.as_ref().is_some_and(|l| l.contains(name)) {
                OfficialSplit::Test
            } else {
                OfficialSplit::Unspecified
            };
            let follow_up = follow_up_col
                .map(|c| cell(c).to_string())
                .unwrap_or_default();
            Ok(Some(Sample {
                image,
                // `00012` and `12` are the same patient; digits were checked above.
                patient_id: patient
                    .parse::<u64>()
                    .map_or_else(|_| patient.to_string(), |n| n.to_string()),
                study_id: format!("{patient}_{follow_up}"),
                view: View::from_position(cell(view_col)),
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
        source: format!("nih:{}", root.display()),
        label_space: space,
        annotated: vec![true; NIH_LABELS.len()],
        samples,
        report,
    })
}

/// Rejoins header fields that a comma inside `[...]` split apart.
fn merge_bracketed(fields: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut open = false;
    for field in fields {
        if open {
            let last = names
                .last_mut()
                .expect("open bracket implies a previous name");
            last.push(',');
            last.push_str(field);
        } else {
            names.push(field.clone());
        }
        let last = names.last().map(String::as_str).unwrap_or("");
        open = last.matches('[').count() > last.matches(']').count();
    }
    names
}

fn optional_list(path: &Path) -> Result<Option<HashSet<String>>> {
    if path.exists() {
        Ok(Some(read_list(path)?.into_iter().collect()))
    } else {
        Ok(None)
    }
}

/// Where each image file is, across the flat and the twelve-folder layouts.
struct ImageIndex {
    default_dir: PathBuf,
    by_name: HashMap<String, PathBuf>,
}

impl ImageIndex {
    fn scan(root: &Path) -> Result<Self> {
        let mut dirs = vec![root.join("images")];
        if let Ok(entries) = std::fs::read_dir(root) {
            let mut numbered: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("images_"))
                })
                .map(|p| p.join("images"))
                .collect();
            numbered.sort();
            dirs.extend(numbered);
        }
        let mut by_name = HashMap::new();
        for dir in dirs.iter().filter(|d| d.is_dir()) {
            for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
                let entry = entry.map_err(|e| DataError::io(dir, e))?;
                if let Some(name) = entry.file_name().to_str() {
                    by_name.insert(name.to_string(), entry.path());
                }
            }
        }
        Ok(Self {
            default_dir: root.join("images"),
            by_name,
        })
    }

    fn locate(&self, name: &str) -> PathBuf {
        self.by_name
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.default_dir.join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::merge_bracketed;

    #[test]
    fn header_quirk_is_rejoined() {
        let header: Vec<String> = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
            .split(',')
            .map(String::from)
            .collect();
        assert_eq!(header.len(), 11);
        let names = merge_bracketed(&header);
        assert_eq!(names.len(), 9);
        assert_eq!(names[7], "OriginalImage[Width,Height]");
        assert_eq!(names[8], "OriginalImagePixelSpacing[x,y]");
    }
}
