//! The worked example of `docs/labels.md`, "Your own hospital's folder": a foreign site's export
//! (text findings, the site's own view spellings, RGB images in another folder, some missing,
//! one corrupt) is built here, and the commands and the study configuration are read from the
//! document itself and run, so the document cannot drift from what works.

use std::path::{Path, PathBuf};
use std::process::Command;

use chex_grpo::DataSource;
use chex_grpo::study::{StudyConfig, TestSetConfig};

/// `metadata.csv` rows: patient, finding, view, image, and whether the image file exists.
const ROWS: [(&str, &str, &str, &str, Image); 11] = [
    ("1", "No finding", "PA", "1.png", Image::Good),
    ("1", "COVID-19", "AP Supine", "2.png", Image::Good),
    ("2", "COVID-19", "PA", "3.png", Image::Good),
    ("3", "Pneumonia|COVID-19", "PA", "4.png", Image::Good),
    ("4", "ARDS", "PA", "5.png", Image::Good),
    ("5", "", "PA", "6.png", Image::Good),
    ("6", "COVID-19", "PA", "7.png", Image::Absent),
    ("7", "No finding", "L", "8.png", Image::Good),
    ("8", "No finding", "PA", "9.png", Image::Corrupt),
    ("9", "COVID-19", "PA", "10.png", Image::Absent),
    ("10", "No finding", "PA", "11.png", Image::Good),
];

#[derive(Clone, Copy, PartialEq)]
enum Image {
    Good,
    Absent,
    Corrupt,
}

/// Builds `covid-site/` under `dir`.
fn build_covid_site(dir: &Path) {
    let site = dir.join("covid-site");
    std::fs::create_dir_all(site.join("images")).unwrap();
    let mut csv = String::from("patientid,finding,view,imagename\n");
    for (i, (patient, finding, view, image, kind)) in ROWS.iter().enumerate() {
        csv.push_str(&format!("{patient},{finding},{view},{image}\n"));
        let path = site.join("images").join(image);
        match kind {
            Image::Good => image::RgbImage::from_fn(320, 256, |x, y| {
                image::Rgb([(x % 256) as u8, (y % 256) as u8, (i * 20) as u8])
            })
            .save(&path)
            .unwrap(),
            Image::Corrupt => std::fs::write(&path, b"\x89PNG\r\n\x1a\ntruncated").unwrap(),
            Image::Absent => {}
        }
    }
    std::fs::write(site.join("metadata.csv"), csv).unwrap();
}

/// The fenced block that follows `marker` in docs/labels.md.
fn docs_block(marker: &str) -> String {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/labels.md"))
            .unwrap();
    let after = &docs[docs.find(marker).expect(marker)..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

/// Splits a shell command line on spaces, keeping double-quoted words whole.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn run_documented(dir: &Path, line: &str) -> (Option<i32>, String) {
    let words = shell_words(line);
    assert_eq!(words[0], "chex", "{line}");
    let out = Command::new(env!("CARGO_BIN_EXE_chex"))
        .current_dir(dir)
        .args(&words[1..])
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_documented_commands_load_the_foreign_folder_and_report_what_they_left_out() {
    let dir = tempfile::tempdir().unwrap();
    build_covid_site(dir.path());
    let block = docs_block("<!-- foreign-site-commands -->");
    let commands: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(commands.len(), 2, "{block}");

    let (code, output) = run_documented(dir.path(), commands[0]);
    assert_eq!(code, Some(0), "{output}");
    // 11 rows: 2 with unmapped findings, 2 missing images, 2 not PA; 5 kept.
    assert!(
        output.contains("read 11 rows, kept 5, filtered by view 2")
            && output.contains("skipped 2 bad")
            && output.contains("left out for unmapped labels: (blank) × 1, `ARDS` × 1"),
        "{output}"
    );
    assert!(
        output.contains("metadata.csv:8") && output.contains("7.png"),
        "{output}"
    );
    assert!(output.contains("5 images, 5 patients"), "{output}");
    assert!(
        output.contains("No Finding") && output.contains("Pneumonia") && !output.contains("Edema"),
        "{output}"
    );

    // `check` decodes the kept images and names the corrupt one.
    let (code, output) = run_documented(dir.path(), commands[1]);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("decoded 4 of 5") && output.contains("9.png"),
        "{output}"
    );
    assert!(!output.contains("panicked"), "{output}");
}

/// The documented `[[data.tests]]` entry, read from the document.
fn documented_test_set(dir: &Path) -> TestSetConfig {
    #[derive(serde::Deserialize)]
    struct Data {
        tests: Vec<TestSetConfig>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        data: Data,
    }
    let file: File = toml::from_str(&docs_block("<!-- foreign-site-config -->")).unwrap();
    let mut test = file.data.tests.into_iter().next().unwrap();
    // The document's paths are relative to where `chex` runs; here that is `dir`.
    if let Some(DataSource::Csv { csv, spec }) = test.source.as_mut() {
        *csv = dir.join(&csv);
        spec.image_root = spec.image_root.as_ref().map(|r| dir.join(r));
    }
    test
}

#[test]
fn a_study_test_set_skips_unreadable_images_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    build_covid_site(dir.path());
    let test = documented_test_set(dir.path());
    assert!(test.skip_unreadable);

    let overrides: Vec<String> = [
        "data.synthetic.miniature=true",
        "data.sft_size=12",
        "data.rl_size=6",
        "data.validation_size=4",
        "pretrain.size=12",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut config = StudyConfig::from_file(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/tiny-cpu.toml"
        )),
        &overrides,
    )
    .unwrap();
    let synth: PathBuf = dir.path().join("synthetic");
    config.move_synthetic(&synth);
    config.data.tests = vec![test.clone()];
    config.validate().unwrap();

    let data = chex_grpo::study::data::prepare_data(&config, 32).unwrap();
    let line = data
        .summary
        .iter()
        .find(|l| l.starts_with("test set covid-site"))
        .unwrap();
    assert!(
        line.contains("4 of 5 images")
            && line.contains("skipped 2 bad")
            && line.contains("1 images left out as undecodable")
            && line.contains("9.png"),
        "{line}"
    );
    assert_eq!(data.tests[0].labels, ["No Finding", "Pneumonia"]);
    assert_eq!(data.tests[0].examples.len(), 4);

    // Without skip_unreadable the first missing image stops the load, naming it.
    config.data.tests[0].skip_unreadable = false;
    let message = chex_grpo::study::data::prepare_data(&config, 32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("metadata.csv:8") && message.contains("7.png"),
        "{message}"
    );
}
