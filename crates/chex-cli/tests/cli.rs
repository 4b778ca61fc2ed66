//! The `chex` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn shared_data() -> PathBuf {
    let dir = std::env::var_os("CHEX_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        dir.join("nih1000").is_dir(),
        "set CHEX_SHARED_DATA to the shared/data folder"
    );
    dir
}

fn chex(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chex"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn stats_prints_the_published_nih1000_counts() {
    let root = shared_data().join("nih1000");
    let (ok, stdout, stderr) = chex(&[
        "data",
        "stats",
        "--nih-root",
        root.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    let count = |label: &str| {
        json["labels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["label"] == label)
            .unwrap()["positive"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        (count("No Finding"), count("Effusion"), count("Hernia")),
        (499, 170, 9)
    );
    assert_eq!(json["views"]["Frontal PA"], 637);
    assert_eq!(json["images"], 1000);
}

#[test]
fn check_decodes_full_resolution_images_and_synth_then_check_round_trips() {
    let (ok, stdout, stderr) = chex(&[
        "data",
        "check",
        "--nih-root",
        shared_data().join("nih-fullres").to_str().unwrap(),
    ]);
    assert!(ok && stdout.contains("decoded 2 of 2"), "{stdout}{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = chex(&["data", "synth", "--out", out, "--miniature", "--seed", "3"]);
    assert!(ok && stdout.contains("wrote site A"), "{stdout}{stderr}");
    let csv = dir.path().join("site-a/CheXpert-v1.0-small/train.csv");
    let (ok, stdout, stderr) = chex(&[
        "data",
        "check",
        "--chexpert-csv",
        csv.to_str().unwrap(),
        "--view",
        "frontal",
    ]);
    assert!(ok && stdout.contains("ok"), "{stdout}{stderr}");

    // A corrupt image is reported by name and fails the check.
    let first = std::fs::read_dir(dir.path().join("site-b/images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&first, b"not a png").unwrap();
    let (ok, stdout, _) = chex(&[
        "data",
        "check",
        "--nih-root",
        dir.path().join("site-b").to_str().unwrap(),
    ]);
    assert!(
        !ok && stdout.contains(first.file_name().unwrap().to_str().unwrap()),
        "{stdout}"
    );
}

#[test]
fn a_backend_not_compiled_in_names_its_feature() {
    let (ok, _, stderr) = chex(&["device", "--device", "cuda:0"]);
    assert!(!ok && stderr.contains("--features cuda"), "{stderr}");
    let (ok, stdout, _) = chex(&["device", "--device", "cpu"]);
    assert!(ok && stdout.contains("sums to 54"));
}

#[test]
fn run_on_the_real_nih_sample_writes_a_report_that_report_rebuilds() {
    let root = shared_data().join("nih1000");
    let out = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/nih1000.toml");
    let mut args = vec![
        "run",
        "--config",
        config,
        "--nih-root",
        root.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ];
    for set in [
        "data.sft_size=12",
        "data.rl_size=6",
        "data.validation_size=4",
        "sft.epochs=1",
        "grpo.steps=1",
        "grpo.eval_every=1",
        "grpo.max_completion_length=8",
        "eval.max_new_tokens=8",
        "eval.bootstrap_resamples=20",
    ] {
        args.extend(["--set", set]);
    }
    let (ok, stdout, stderr) = chex(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("## NIH held-out patients, PA films (in distribution)"));
    assert!(stdout.contains("| **Macro-F1** |") && stdout.contains("paradox"));
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    let saved = std::fs::read_to_string(out.path().join("config.toml")).unwrap();
    assert!(saved.contains("sft_size = 12") && saved.contains(root.to_str().unwrap()));

    std::fs::remove_file(out.path().join("report.md")).unwrap();
    let (ok, stdout, stderr) = chex(&["report", "--out", out.path().to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("report:"));
    assert_eq!(
        std::fs::read_to_string(out.path().join("report.md")).unwrap(),
        report
    );
}

#[test]
fn bad_configs_and_missing_runs_are_clear_errors() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/tiny-cpu.toml");
    let (ok, _, stderr) = chex(&["run", "--config", config, "--set", "grpo.steps=many"]);
    assert!(!ok);
    assert!(
        stderr.contains("tiny-cpu.toml") && stderr.contains("steps"),
        "{stderr}"
    );
    let (ok, _, stderr) = chex(&["run", "--config", "/nonexistent/study.toml"]);
    assert!(
        !ok && stderr.contains("/nonexistent/study.toml"),
        "{stderr}"
    );
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = chex(&["report", "--out", empty.path().to_str().unwrap()]);
    assert!(!ok && stderr.contains("config.toml"), "{stderr}");
    let (ok, stdout, _) = chex(&["run", "--help"]);
    assert!(ok);
    for flag in [
        "--config",
        "--set",
        "--out",
        "--device",
        "--seed",
        "--nih-root",
        "--resume",
    ] {
        assert!(stdout.contains(flag), "{flag} in run --help");
    }
}

/// Sizes that would ask for unbounded memory are refused by the argument parser, naming the
/// flag, before anything is read.
#[test]
fn oversized_requests_are_refused_up_front() {
    for args in [
        &[
            "data",
            "check",
            "--chexpert-csv",
            "missing.csv",
            "--size",
            "100000",
        ][..],
        &[
            "generate",
            "--config",
            "configs/tiny-cpu.toml",
            "--image",
            "missing.png",
            "--samples",
            "100000000",
        ][..],
    ] {
        let (ok, _, stderr) = chex(args);
        let flag = args[args.len() - 2];
        assert!(!ok && stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
