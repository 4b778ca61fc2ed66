//! CheXpert, MIMIC-CXR-JPG and generic CSV fixtures in the real layouts, and every kind of bad
//! input: each error names the file, the line and the column or label.

mod common;

use std::path::Path;

use chex_data::{
    DataError, GenericCsvSpec, LoadOptions, Observation, OfficialSplit, OnError, UncertaintyPolicy,
    ViewFilter, load_chexpert, load_generic_csv, load_mimic, load_nih,
};

fn chexpert_csv(name: &str) -> std::path::PathBuf {
    common::fixtures()
        .join("chexpert/CheXpert-v1.0-small")
        .join(name)
}

#[test]
fn chexpert_reads_blanks_uncertain_and_views() {
    let data = load_chexpert(&chexpert_csv("train.csv"), &LoadOptions::default()).unwrap();
    assert_eq!(data.len(), 8);
    let second = &data.samples[1];
    assert_eq!(second.patient_id, "patient00002");
    assert_eq!(second.study_id, "patient00002/study2");
    assert_eq!(second.split, OfficialSplit::Train);
    assert!(
        second
            .image
            .ends_with("CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg")
    );
    let label = |name: &str| data.label_space.index_of(name).unwrap();
    assert_eq!(
        second.observations[label("Cardiomegaly")],
        Observation::Uncertain
    );
    assert_eq!(
        second.observations[label("Lung Opacity")],
        Observation::Positive
    );
    assert_eq!(second.observations[label("No Finding")], Observation::Blank);
    assert_eq!(
        data.samples[0].observations[label("Pneumothorax")],
        Observation::Negative
    );

    let policy_counts = |p| data.positive_counts(p)[label("Edema")];
    assert_eq!(policy_counts(UncertaintyPolicy::PositiveOnly), 1);
    assert_eq!(policy_counts(UncertaintyPolicy::UOnes), 2);
    assert_eq!(
        second.targets(UncertaintyPolicy::UIgnore)[label("Edema")],
        None
    );

    let frontal = load_chexpert(
        &chexpert_csv("train.csv"),
        &LoadOptions {
            view_filter: ViewFilter::Frontal,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((frontal.len(), frontal.report.filtered_by_view), (6, 2));
    let pa = load_chexpert(
        &chexpert_csv("train.csv"),
        &LoadOptions {
            view_filter: ViewFilter::Pa,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(pa.len(), 2);

    let valid = load_chexpert(&chexpert_csv("valid.csv"), &LoadOptions::default()).unwrap();
    assert_eq!(
        (valid.len(), valid.samples[0].split),
        (3, OfficialSplit::Validate)
    );
}

#[test]
fn mimic_joins_labels_metadata_and_split_with_gzip() {
    let root = common::fixtures().join("mimic");
    let data = load_mimic(&root, &LoadOptions::default()).unwrap();
    // 8 metadata rows; one study has no label row and is counted, not dropped silently.
    assert_eq!(
        (data.report.rows_read, data.len(), data.report.unlabelled),
        (8, 7, 1)
    );
    let first = &data.samples[0];
    assert!(first.image.ends_with(
        "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
    ));
    assert_eq!(first.observations[0], Observation::Positive, "No Finding");
    assert_eq!(data.samples[4].split, OfficialSplit::Validate);
    let frontal = load_mimic(
        &root,
        &LoadOptions {
            view_filter: ViewFilter::Frontal,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(frontal.len(), 5);
    assert_eq!(frontal.patient_count(), 4);
    let pneumonia = data.label_space.index_of("Pneumonia").unwrap();
    assert_eq!(
        data.samples[4].observations[pneumonia],
        Observation::Uncertain
    );
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn chexpert_with_rows(rows: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    chexpert_with_rows_ending(rows, "\n")
}

fn chexpert_with_rows_ending(
    rows: &[&str],
    ending: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let header = std::fs::read_to_string(chexpert_csv("train.csv"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let text = std::iter::once(header.as_str())
        .chain(rows.iter().copied())
        .collect::<Vec<_>>()
        .join(ending);
    let path = write(dir.path(), "CheXpert-v1.0-small/train.csv", &text);
    (dir, path)
}

#[test]
fn bad_cells_name_file_line_and_column() {
    let good = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0";
    let bad_value = "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,68,Frontal,AP,,,2.0,,,,,,,,,,,";
    let short =
        "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0";
    let good_again = good.replace("patient00001", "patient00004");
    let (_dir, path) = chexpert_with_rows(&[good, bad_value, short, &good_again]);

    let error = load_chexpert(&path, &LoadOptions::default()).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, DataError::BadValue { line: 3, .. }),
        "{message}"
    );
    assert!(
        message.contains("train.csv:3")
            && message.contains("Cardiomegaly")
            && message.contains("2.0"),
        "{message}"
    );

    let lenient = LoadOptions {
        on_error: OnError::SkipAndReport,
        ..Default::default()
    };
    let data = load_chexpert(&path, &lenient).unwrap();
    assert_eq!((data.len(), data.report.skipped.len()), (2, 2));
    assert!(
        data.report.skipped[1].contains("train.csv:4")
            && data.report.skipped[1].contains("6 fields"),
        "{:?}",
        data.report.skipped
    );
    assert!(data.report.summary().contains("skipped 2 bad"));

    // The same file with Windows line endings (hospital exports) names the same lines.
    let (_dir, crlf) = chexpert_with_rows_ending(&[good, bad_value, short, good], "\r\n");
    let message = load_chexpert(&crlf, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("train.csv:3"), "{message}");
    let skipped = load_chexpert(&crlf, &lenient).unwrap().report.skipped;
    assert!(skipped[1].contains("train.csv:4"), "{skipped:?}");
}

#[test]
fn unknown_columns_labels_and_missing_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let header = std::fs::read_to_string(chexpert_csv("train.csv"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .replace("Fracture", "Fractures");
    let path = write(dir.path(), "CheXpert-v1.0-small/train.csv", &header);
    let message = load_chexpert(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("unknown column `Fractures`"), "{message}");

    let nih_header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]";
    write(
        dir.path(),
        "nih/Data_Entry_2017.csv",
        &format!(
            "{nih_header}\n00000001_000.png,Cardiomegaly|Efusion,0,1,57,M,PA,2682,2749,0.143,0.143\n"
        ),
    );
    let message = load_nih(&dir.path().join("nih"), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("Data_Entry_2017.csv:2") && message.contains("unknown label `Efusion`"),
        "{message}"
    );

    write(
        dir.path(),
        "nih/Data_Entry_2017.csv",
        &format!("{nih_header}\n00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n"),
    );
    let strict = LoadOptions {
        check_images_exist: true,
        ..Default::default()
    };
    let error = load_nih(&dir.path().join("nih"), &strict).unwrap_err();
    assert!(
        matches!(error, DataError::MissingImage { line: 2, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("00000001_000.png"));
}

#[test]
fn corrupt_and_truncated_images_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let junk = write(dir.path(), "junk.png", "this is not a png");
    let error = chex_data::prepare_image(&junk, &chex_data::ImageSpec::siglip(32)).unwrap_err();
    assert!(error.to_string().contains("junk.png"), "{error}");

    let real = common::shared_data().join("nih1000/images/00000001_000.png");
    let bytes = std::fs::read(real).unwrap();
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error =
        chex_data::prepare_image(&truncated, &chex_data::ImageSpec::siglip(32)).unwrap_err();
    assert!(
        matches!(error, DataError::Image { .. }) && error.to_string().contains("truncated.png"),
        "{error}"
    );
}

#[test]
fn sixteen_bit_png_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.png");
    let pixels: Vec<u16> = (0..40 * 40).map(|i| (i * 40) as u16).collect();
    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(40, 40, pixels)
        .unwrap()
        .save(&path)
        .unwrap();
    let (w, h, grey) = chex_data::decode_grey(&path).unwrap();
    assert_eq!((w, h), (40, 40));
    assert!((grey[1] - 40.0 / 65535.0).abs() < 1e-6);
}

#[test]
fn generic_csv_with_user_label_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "site.csv",
        "file,patient,view,Effusion,Cardiomegaly\na.png,P1,PA,1.0,\nb.png,P1,LATERAL,0.0,-1.0\nc.png,P2,AP,,1\n",
    );
    let spec = GenericCsvSpec {
        path_column: "file".into(),
        label_columns: vec!["Cardiomegaly".into(), "Effusion".into()],
        patient_column: Some("patient".into()),
        view_column: Some("view".into()),
        ..Default::default()
    };
    let data = load_generic_csv(
        &path,
        &spec,
        &LoadOptions {
            view_filter: ViewFilter::Frontal,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(
        data.samples[0].observations,
        vec![Observation::Blank, Observation::Positive]
    );
    assert_eq!(data.samples[1].patient_id, "P2");
    assert_eq!(data.samples[1].image, dir.path().join("c.png"));

    let missing = GenericCsvSpec {
        label_columns: vec!["Edema".into()],
        ..spec
    };
    let message = load_generic_csv(&path, &missing, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("site.csv") && message.contains("`Edema`"),
        "{message}"
    );
}

/// Writes a CSV and a handful of PNG images under `dir`.
fn site_with_images(dir: &Path, csv: &str, images: &[&str]) -> std::path::PathBuf {
    for name in images {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::GrayImage::from_pixel(8, 8, image::Luma([90]))
            .save(&path)
            .unwrap();
    }
    write(dir, "labels.csv", csv)
}

fn effusion_spec() -> GenericCsvSpec {
    GenericCsvSpec {
        path_column: "file".into(),
        label_columns: vec!["Effusion".into()],
        ..Default::default()
    }
}

#[test]
fn paths_that_leave_the_dataset_folder_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    for (cell, reason) in [
        ("../../../etc/passwd", "climbs out"),
        ("/etc/passwd", "is absolute"),
        ("a/../../b.png", "climbs out"),
    ] {
        let path = write(
            dir.path(),
            "site.csv",
            &format!("file,Effusion\nok.png,1\n{cell},0\n"),
        );
        let err = load_generic_csv(&path, &effusion_spec(), &LoadOptions::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, DataError::PathEscape { line: 3, .. }),
            "{message}"
        );
        assert!(
            message.contains("site.csv:3") && message.contains(cell) && message.contains(reason),
            "{message}"
        );
        assert!(message.contains("--allow-absolute-paths"), "{message}");
        let allowed = LoadOptions {
            allow_absolute_paths: true,
            ..Default::default()
        };
        assert_eq!(
            load_generic_csv(&path, &effusion_spec(), &allowed)
                .unwrap()
                .len(),
            2
        );
    }

    // CheXpert's `Path` column and NIH's `Image Index` are held to the same rule.
    let site = tempfile::tempdir().unwrap();
    let csv = site.path().join("CheXpert-v1.0-small/train.csv");
    std::fs::create_dir_all(csv.parent().unwrap()).unwrap();
    let header = chex_data::loaders::CHEXPERT_META_COLUMNS
        .iter()
        .chain(chex_data::CHEXPERT_LABELS.iter())
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    std::fs::write(
        &csv,
        format!(
            "{header}\n../../patient00001/study1/view1_frontal.jpg,Male,50,Frontal,AP{}\n",
            ",".repeat(14)
        ),
    )
    .unwrap();
    let message = load_chexpert(&csv, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("train.csv:2") && message.contains("`Path`"),
        "{message}"
    );

    let nih = tempfile::tempdir().unwrap();
    std::fs::write(
        nih.path().join("Data_Entry_2017.csv"),
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n\
         ../../etc/passwd,No Finding,0,1,50,M,PA\n",
    )
    .unwrap();
    let message = load_nih(nih.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("Data_Entry_2017.csv:2") && message.contains("`Image Index`"),
        "{message}"
    );
}

#[test]
fn repeated_images_merge_when_labels_agree_and_fail_when_they_differ() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "site.csv",
        "file,Effusion\na.png,1\nb.png,0\na.png,1.0\n",
    );
    let data = load_generic_csv(&path, &effusion_spec(), &LoadOptions::default()).unwrap();
    assert_eq!((data.len(), data.report.duplicates), (2, 1));
    assert!(
        data.report.summary().contains("1 repeated rows"),
        "{}",
        data.report.summary()
    );

    let path = write(
        dir.path(),
        "site.csv",
        "file,Effusion\na.png,1\nb.png,0\na.png,0\n",
    );
    let message = load_generic_csv(&path, &effusion_spec(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("site.csv:4") && message.contains("first at line 2"),
        "{message}"
    );
    // Skip-and-report keeps the first listing and names the conflicting row.
    let skipping = LoadOptions {
        on_error: OnError::SkipAndReport,
        ..Default::default()
    };
    let data = load_generic_csv(&path, &effusion_spec(), &skipping).unwrap();
    assert_eq!(data.len(), 2);
    assert!(data.report.skipped[0].contains("site.csv:4"));
}

#[test]
fn a_column_named_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "site.csv",
        "file,Effusion,Effusion\na.png,1,0\n",
    );
    let message = load_generic_csv(&path, &effusion_spec(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("site.csv") && message.contains("`Effusion` appears twice"),
        "{message}"
    );
}

#[test]
fn categorical_labels_views_and_an_image_root() {
    let dir = tempfile::tempdir().unwrap();
    let csv = site_with_images(
        dir.path(),
        "patientid,finding,view,imagename\n\
         1,No finding,PA,a.png\n\
         1,COVID-19,AP Supine,b.png\n\
         2,COVID-19|ARDS,PA,c.png\n\
         3,,PA,d.png\n\
         4,Tuberculosis,L,e.png\n",
        &[
            "images/a.png",
            "images/b.png",
            "images/c.png",
            "images/d.png",
            "images/e.png",
        ],
    );
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let spec = GenericCsvSpec {
        path_column: "imagename".into(),
        label_column: Some("finding".into()),
        label_map: map(&[
            ("No finding", "No Finding"),
            ("COVID-19", "Pneumonia"),
            ("ARDS", "Edema"),
            ("Tuberculosis", ""),
        ]),
        patient_column: Some("patientid".into()),
        view_column: Some("view".into()),
        view_map: map(&[("AP Supine", "AP"), ("L", "LATERAL")]),
        image_root: Some(dir.path().join("images")),
        ..Default::default()
    };
    let options = LoadOptions {
        check_images_exist: true,
        ..Default::default()
    };
    let data = load_generic_csv(&csv, &spec, &options).unwrap();
    // The space is the map's findings in CheXpert's order.
    assert_eq!(
        data.label_space.labels(),
        ["No Finding", "Edema", "Pneumonia"]
    );
    assert_eq!(data.len(), 4, "{}", data.report.summary());
    use Observation::{Negative as N, Positive as P};
    assert_eq!(data.samples[0].observations, [P, N, N]);
    assert_eq!(data.samples[2].observations, [N, P, P]);
    // `Tuberculosis` maps to none of our findings: every label negative.
    assert_eq!(data.samples[3].observations, [N, N, N]);
    assert_eq!(
        data.samples[3].view.projection,
        chex_data::Projection::Lateral
    );
    assert_eq!(data.samples[1].view.position.as_deref(), Some("AP"));
    // The blank finding is left out and listed, not guessed.
    assert_eq!(data.report.unmapped.get(""), Some(&1));
    assert!(
        data.report.summary().contains("(blank) × 1"),
        "{}",
        data.report.summary()
    );

    let pa = LoadOptions {
        view_filter: ViewFilter::Pa,
        ..options.clone()
    };
    assert_eq!(load_generic_csv(&csv, &spec, &pa).unwrap().len(), 2);
    let no_view_column = GenericCsvSpec {
        view_column: None,
        view_map: Default::default(),
        ..spec.clone()
    };
    let message = load_generic_csv(&csv, &no_view_column, &pa)
        .unwrap_err()
        .to_string();
    assert!(message.contains("--view-column"), "{message}");

    let both = GenericCsvSpec {
        label_columns: vec!["finding".into()],
        ..spec.clone()
    };
    assert!(load_generic_csv(&csv, &both, &options).is_err());
    let without_map = GenericCsvSpec {
        label_map: Default::default(),
        ..spec
    };
    let message = load_generic_csv(&csv, &without_map, &options)
        .unwrap_err()
        .to_string();
    assert!(message.contains("`finding` needs a label map"), "{message}");
}
