//! The whole study at miniature size (a few dozen synthetic images, a few steps), checking
//! every artefact of the report exists and parses, and that the report's numbers are the
//! metrics files' numbers.

mod common;

use chex_grpo::training::records::{GrpoStepRecord, SftLogRecord};
use std::path::{Path, PathBuf};

use chex_grpo::metrics::Evaluation;
use chex_grpo::study::evaluate::{CHECKPOINTS, read_predictions};
use chex_grpo::study::report::Comparison;
use chex_grpo::study::{StudyConfig, run_study, write_report};

/// burn's random generators are per process: studies that seed and draw from them (the
/// initial weights) run one at a time, so that each run draws what it would draw alone.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_parses_and_round_trips() {
    let files = configs();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "chexreason.toml",
        "medgemma-4b.toml",
        "nih1000.toml",
        "tiny-cpu.toml",
    ] {
        assert!(names.iter().any(|n| n == expected), "configs/{expected}");
    }
    for file in files {
        let config = StudyConfig::from_file(&file, &[]).unwrap();
        let saved = config.to_toml().unwrap();
        let again = StudyConfig::from_toml(&saved, "saved", &[]).unwrap();
        assert_eq!(again.to_toml().unwrap(), saved, "{}", file.display());
    }
    let nih = StudyConfig::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/nih1000.toml"),
        &[],
    )
    .unwrap();
    assert!(nih.data.synthetic.is_none());
    assert!(nih.sft.lora.is_none());
}

/// The tiny-cpu study with everything shrunk and every path under `dir`.
fn miniature(dir: &Path) -> StudyConfig {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-cpu.toml"),
    )
    .unwrap();
    let overrides: Vec<String> = common::MINIATURE.iter().map(|s| s.to_string()).collect();
    let mut config = StudyConfig::from_toml(&text, "tiny-cpu.toml", &overrides).unwrap();
    let synth = dir.join("synthetic");
    config.out = dir.join("out");
    config.move_synthetic(&synth);
    config.data.tests[0].limit = 8;
    config.data.tests[1].limit = 8;
    config
}

/// `0.123` as the report writes scores.
fn three(v: f64) -> String {
    format!("{v:.3}")
}

#[test]
fn miniature_study_writes_every_artefact_and_the_report_matches_the_metrics() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = miniature(dir.path());
    let report = run_study(&config, false).unwrap();
    let out = &config.out;

    // The resolved config reads back to the same run.
    let saved = StudyConfig::from_file(&out.join("config.toml"), &[]).unwrap();
    assert_eq!(saved.to_toml().unwrap(), config.to_toml().unwrap());

    let text = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(report.path, out.join("report.md"));
    for test in &config.data.tests {
        assert!(
            text.contains(&format!("## {}", test.title)),
            "{}",
            test.title
        );
        let mut macro_cells = Vec::new();
        for (key, name) in CHECKPOINTS {
            let metrics: Evaluation = serde_json::from_str(
                &std::fs::read_to_string(out.join(format!("metrics/{key}-{}.json", test.name)))
                    .unwrap(),
            )
            .unwrap();
            let predictions =
                read_predictions(&out.join(format!("predictions/{key}-{}.jsonl", test.name)))
                    .unwrap();
            assert_eq!(
                predictions.len(),
                metrics.samples,
                "{name} on {}",
                test.name
            );
            assert_eq!(predictions.len(), 8);
            let ci = metrics.macro_f1_ci.expect("bootstrap interval");
            macro_cells.push(format!(
                "**{} [{}, {}]**",
                three(metrics.macro_f1),
                three(ci.low),
                three(ci.high)
            ));
            let unparsed = predictions.iter().filter(|p| !p.parsed).count();
            assert!((metrics.unparseable_rate - unparsed as f64 / 8.0).abs() < 1e-12);
        }
        // The macro-F1 row of this test's table is exactly the three metrics files' values.
        let (_, table) = report
            .tables
            .iter()
            .find(|(title, _)| title == &test.title)
            .unwrap();
        let row = table
            .lines()
            .find(|l| l.starts_with("| **Macro-F1**"))
            .unwrap();
        assert_eq!(
            row,
            format!("| **Macro-F1** | {} |", macro_cells.join(" | "))
        );
        assert!(text.contains(row));
        for suffix in ["per-label.csv", "summary.csv"] {
            let csv = std::fs::read_to_string(out.join(format!("metrics/{}-{suffix}", test.name)))
                .unwrap();
            assert!(csv.lines().count() > 3, "{suffix}");
        }
        let bars =
            image::open(out.join(format!("figures/per_label_f1-{}.png", test.name))).unwrap();
        assert!(bars.width() >= 640);
    }
    for figure in ["grpo_curves.png", "sft_loss.png", "pretrain_loss.png"] {
        let png = image::open(out.join("figures").join(figure)).unwrap();
        assert!(png.width() > 400 && png.height() > 200, "{figure}");
        assert!(text.contains(&format!("figures/{figure}")));
    }
    let comparisons: Vec<Comparison> = serde_json::from_str(
        &std::fs::read_to_string(out.join("metrics/comparisons.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        comparisons.len(),
        4,
        "base→SFT and SFT→GRPO on two test sets"
    );
    assert!(
        text.contains("paradox") && report.verdict.contains("paradox"),
        "{}",
        report.verdict
    );
    assert!(text.contains("## Parse failures and distinct answers"));
    assert!(text.contains("## Sampled reasoning traces") && text.contains("### GRPO"));
    for log in [
        "sft_log.jsonl",
        "grpo_log.jsonl",
        "draws.json",
        "timings.json",
    ] {
        assert!(out.join(log).exists(), "{log}");
    }
    assert!(out.join("checkpoints/sft-best/state.json").exists());
    assert!(out.join("checkpoints/grpo-last/state.json").exists());
    assert!(out.join("checkpoints/pretrain-best/state.json").exists());
    assert!(text.contains("Base: the preset after the pretrain stage"));

    // TensorBoard event files hold one event per log record plus the version event.
    for stage in ["pretrain", "sft", "grpo"] {
        let events =
            std::fs::read(out.join(format!("tensorboard/{stage}/events.out.tfevents.chex")))
                .unwrap();
        let mut offset = 0;
        let mut records = 0;
        while offset < events.len() {
            let len = u64::from_le_bytes(events[offset..offset + 8].try_into().unwrap()) as usize;
            offset += 16 + len;
            records += 1;
        }
        let lines = std::fs::read_to_string(out.join(format!("{stage}_log.jsonl")))
            .unwrap()
            .lines()
            .count();
        assert_eq!(records, lines + 1, "{stage}");
    }

    // The cue's reliance is scored on both synthetic test sets for every checkpoint, from the
    // generator's truth; its films are the test images without the cue's cause.
    let cue: Vec<chex_grpo::study::cue::CueReliance> =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics/cue.json")).unwrap())
            .unwrap();
    assert_eq!(cue.len(), 6, "3 checkpoints × 2 test sets");
    for r in &cue {
        assert!(r.with_cue.films + r.without_cue.films <= 8);
        assert!(r.with_cue.predicted <= r.with_cue.films);
    }
    assert!(text.contains("## The spurious cue"));

    // Rebuilding the report from the folder alone gives the same report.
    let rebuilt = write_report(out).unwrap();
    assert_eq!(std::fs::read_to_string(&rebuilt.path).unwrap(), text);

    // A resumed run reads every finished stage back and changes no score.
    let before = std::fs::read_to_string(out.join("metrics/grpo-site-a.json")).unwrap();
    run_study(&config, true).unwrap();
    let after = std::fs::read_to_string(out.join("metrics/grpo-site-a.json")).unwrap();
    assert_eq!(before, after);
}

/// The whole study with bf16 weights on every backend that has bf16: the pretrain and SFT
/// stages train every weight (f32 masters, rounded back to bf16 after each stage), GRPO trains
/// f32 adapters over the bf16 base and starts at zero KL up to bf16 rounding, and the report
/// names the precision.
#[test]
fn miniature_study_runs_in_bf16_where_the_backend_has_it() {
    use chex_grpo::model::ModelDtype;
    use chex_grpo::model::burn::tensor::FloatDType;
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    chex_grpo::model::device::on_every_test_device(|choice, device| {
        if !device.supports_dtype(FloatDType::BF16) {
            return;
        }
        let mut config = miniature(dir.path());
        config.device = choice.to_string();
        config.model.dtype = Some(ModelDtype::Bf16);
        config.out = dir.path().join(format!("out-{choice}"));
        run_study(&config, false).unwrap();
        let log: Vec<GrpoStepRecord> =
            chex_grpo::training::log::read_jsonl(&config.out.join("grpo_log.jsonl")).unwrap();
        // Policy and reference are one function, but the policy's pass (autodiff, other
        // shapes) may take other bf16 kernels than the reference's: their log-probs agree to
        // bf16's precision, under 0.006 (model_behaviour.rs), so the k3 estimate of KL,
        // about ½Δ², stays below 2e-5. Measured: 7.8e-7 on flex, 1.0e-6 on tch-cpu.
        let kl = log[0].kl.unwrap();
        println!("{choice}: bf16 GRPO step-1 kl {kl:e}");
        assert!(kl.abs() < 2e-5, "{choice}: GRPO step-1 kl {kl}");
        assert!(
            log.iter().all(|r| r.loss.is_some_and(f64::is_finite)),
            "{choice}"
        );
        let report = std::fs::read_to_string(config.out.join("report.md")).unwrap();
        assert!(report.contains("bf16 weights"), "{choice}");
        let policy = chex_grpo::study::load_policy(&config, "grpo", device).unwrap();
        assert_eq!(policy.model.dtype(), ModelDtype::Bf16, "{choice}");
    });
}

#[test]
fn miniature_study_starts_grpo_at_zero_kl_on_every_backend() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    chex_grpo::model::device::on_every_test_device(|choice, _| {
        let mut config = miniature(dir.path());
        config.device = choice.to_string();
        config.out = dir.path().join(format!("out-{choice}"));
        run_study(&config, false).unwrap();
        let log: Vec<GrpoStepRecord> =
            chex_grpo::training::log::read_jsonl(&config.out.join("grpo_log.jsonl")).unwrap();
        // GRPO starts from the SFT weights with fresh adapters whose B matrices are zero, so the
        // policy and the reference are one function at step 1 on any backend.
        let kl = log[0].kl.unwrap();
        assert!(kl.abs() < 1e-6, "{choice}: GRPO step-1 kl {kl}");
    });
    // The seed fixes the initial weights on every backend and SFT here draws nothing else on
    // the device, so each backend's SFT validation loss is flex's up to summation order
    // (measured: 2e-7 relative on ndarray and tch-cpu).
    let eval_loss = |choice: &str| {
        let log: Vec<SftLogRecord> = chex_grpo::training::log::read_jsonl(
            &dir.path().join(format!("out-{choice}/sft_log.jsonl")),
        )
        .unwrap();
        log.iter()
            .find_map(|r| match r {
                SftLogRecord::Epoch(e) => e.eval_loss,
                SftLogRecord::Step(_) => None,
            })
            .unwrap()
    };
    let devices = chex_grpo::model::device::test_devices().unwrap();
    let reference = eval_loss(&devices[0].0.to_string());
    for (choice, _) in &devices[1..] {
        let loss = eval_loss(&choice.to_string());
        println!(
            "SFT validation loss: {} {reference}, {choice} {loss}",
            devices[0].0
        );
        assert!(
            ((loss - reference) / reference).abs() < 1e-5,
            "{choice}: SFT validation loss {loss} vs {reference} on {}",
            devices[0].0
        );
    }
}
