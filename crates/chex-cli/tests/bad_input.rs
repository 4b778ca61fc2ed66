//! The bad-input corpus: every kind of bad file, value and setting a hostile new user has
//! tried, run through the `chex` binary. Each must exit non-zero without a panic, with a
//! message naming the file and line, or the setting's key; and nothing half-written may be
//! left behind. Valid oddities (a byte-order mark, CRLF endings, 16-bit PNGs) must load.

use std::path::{Path, PathBuf};
use std::process::Command;

use chex_grpo::model::Gemma3Config;

struct Outcome {
    code: Option<i32>,
    output: String,
}

/// Runs `chex` in `cwd`.
fn chex(cwd: &Path, args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_chex"))
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap();
    Outcome {
        code: out.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Asserts a clean refusal: exit 1, or 2 for the argument parser (not a panic's 101 or a
/// signal), naming every `needle`.
fn refused(case: &str, outcome: Outcome, needles: &[&str]) {
    assert!(
        matches!(outcome.code, Some(1 | 2)),
        "{case}: expected a refusal, got {:?}:\n{}",
        outcome.code,
        outcome.output
    );
    assert!(
        !outcome.output.contains("panicked"),
        "{case}: {}",
        outcome.output
    );
    for needle in needles {
        assert!(
            outcome.output.contains(needle),
            "{case}: the message does not name `{needle}`:\n{}",
            outcome.output
        );
    }
}

/// The synthetic sites at miniature size, with draws they can fill.
const MINIATURE: [&str; 6] = [
    "data.synthetic.miniature=true",
    "pretrain.size=12",
    "pretrain.training.epochs=1",
    "data.sft_size=12",
    "data.rl_size=6",
    "data.validation_size=4",
];

/// `chex run` on the miniature sites with one more setting.
fn run_miniature(cwd: &Path, set: &str) -> Outcome {
    let mut sets = MINIATURE.to_vec();
    sets.push(set);
    run_with(cwd, &sets)
}

fn tiny_cpu() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/tiny-cpu.toml").to_string()
}

/// `chex run` on the main job's config with `sets`, in `cwd`, into `cwd/out`.
fn run_with(cwd: &Path, sets: &[&str]) -> Outcome {
    let config = tiny_cpu();
    let mut args = vec!["run", "--config", &config, "--out", "out"];
    for set in sets {
        args.extend(["--set", set]);
    }
    chex(cwd, &args)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn png(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(16, 16, image::Luma([100]))
        .save(&path)
        .unwrap();
    path
}

/// A PNG whose header claims `side × side` pixels (its data is a 1×1 image).
fn png_claiming(dir: &Path, name: &str, side: u32) -> PathBuf {
    let mut bytes = Vec::new();
    image::GrayImage::from_pixel(1, 1, image::Luma([0]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    // IHDR: 8-byte signature, 4-byte length, "IHDR", width, height, … then the CRC.
    bytes[16..20].copy_from_slice(&side.to_be_bytes());
    bytes[20..24].copy_from_slice(&side.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    write(dir, name, &bytes)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `chex data check` on a generic CSV with one `Effusion` column.
fn check_csv(dir: &Path, csv: &Path, extra: &[&str]) -> Outcome {
    let csv = csv.to_str().unwrap();
    let mut args = vec![
        "data",
        "check",
        "--csv",
        csv,
        "--path-column",
        "file",
        "--label-columns",
        "Effusion",
    ];
    args.extend(extra);
    chex(dir, &args)
}

/// Every file or folder under `dir` whose name marks an unfinished write.
fn half_written(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".partial") || name.ends_with(".old") {
                found.push(path.clone());
            }
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

#[test]
fn settings_are_refused_before_any_work_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    for (set, needles) in [
        (
            "sft.learning_rat=2e-3",
            &["learning_rat", "did you mean", "learning_rate"][..],
        ),
        ("grpo.temprature=0.5", &["temprature", "temperature"]),
        ("foo.bar=1", &["foo"]),
        ("sft.learning_rate=-1", &["sft.learning_rate"]),
        ("sft.learning_rate=nan", &["sft.learning_rate"]),
        ("grpo.learning_rate=inf", &["grpo.learning_rate"]),
        ("grpo.temperature=0", &["temperature"]),
        ("grpo.top_p=1.5", &["top_p"]),
        ("grpo.max_completion_length=0", &["max_completion_length"]),
        ("grpo.prompts_per_step=0", &["prompts_per_step"]),
        ("grpo.group_size=0", &["group_size"]),
        ("grpo.loss.beta=-0.1", &["beta"]),
        ("grpo.steps=many", &["steps"]),
        ("eval.bootstrap_resamples=0", &["bootstrap_resamples"]),
        ("sft.effective_batch=0", &["effective_batch"]),
        ("sft.micro_batch=3", &["micro_batch"]),
        ("data.train.holdout_fraction=1.5", &["holdout_fraction"]),
        ("model.preset=huge", &["huge"]),
    ] {
        refused(set, run_with(cwd, &[set]), needles);
    }
    // A misspelt key in the file names the file.
    let bad = write(cwd, "bad.toml", b"[sft]\nlearning_rat = 2e-3\n");
    refused(
        "misspelt key in TOML",
        chex(cwd, &["run", "--config", bad.to_str().unwrap()]),
        &["bad.toml", "learning_rat"],
    );
    // Validation comes first: nothing was written, not even the output folder's config.
    assert!(!cwd.join("out/config.toml").exists());
    assert!(!cwd.join("data").exists(), "no data was synthesised");
}

#[test]
fn model_folders_that_would_exhaust_memory_or_escape_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let tiny = Gemma3Config::preset("tiny").unwrap();
    let model_dir = |name: &str, config: &Gemma3Config| {
        let folder = cwd.join(name);
        write(&folder, "config.json", config.to_json().as_bytes());
        folder
    };
    let pretrained = |folder: &Path| format!("model.pretrained=\"{}\"", folder.display());

    // Dimensions no machine holds: refused while reading config.json.
    let mut absurd = tiny.clone();
    absurd.text_config.hidden_size = 1 << 20;
    absurd.text_config.intermediate_size = 1 << 22;
    let folder = model_dir("absurd", &absurd);
    refused(
        "absurd config.json",
        run_with(cwd, &[&pretrained(&folder)]),
        &["config.json", "parameters"],
    );
    // Dimensions beyond this machine: refused with the estimate, before any allocation.
    let mut huge = tiny.clone();
    huge.text_config.hidden_size = 16384;
    huge.text_config.intermediate_size = 65536;
    huge.text_config.num_hidden_layers = 96;
    huge.text_config.layer_types = None;
    let folder = model_dir("huge", &huge);
    refused(
        "config.json beyond the machine",
        run_miniature(cwd, &pretrained(&folder)),
        &["config.json", "GiB", "this machine has"],
    );
    // A shard index naming a file outside the folder.
    let folder = model_dir("escape", &tiny);
    write(
        &folder,
        "model.safetensors.index.json",
        br#"{"metadata": {}, "weight_map": {"lm_head.weight": "../../etc/passwd"}}"#,
    );
    refused(
        "shard outside the folder",
        run_miniature(cwd, &pretrained(&folder)),
        &["model.safetensors.index.json", "../../etc/passwd"],
    );
    // A truncated safetensors file.
    let folder = model_dir("truncated", &tiny);
    write(
        &folder,
        "model.safetensors",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"",
    );
    refused(
        "truncated safetensors",
        run_miniature(cwd, &pretrained(&folder)),
        &["model.safetensors"],
    );
    assert_eq!(half_written(cwd), Vec::<PathBuf>::new());
}

#[test]
fn bad_label_files_and_images_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    png(cwd, "a.png");
    png(cwd, "b.png");
    let csv = |name: &str, text: &str| write(cwd, name, text.as_bytes());

    let cases: Vec<(&str, PathBuf, Vec<&str>, Vec<&str>)> = vec![
        (
            "empty CSV",
            csv("empty.csv", ""),
            vec![],
            vec!["empty.csv", "empty"],
        ),
        (
            "short row",
            csv(
                "short.csv",
                "file,Effusion,Edema\na.png,1.0,0.0\nb.png,1.0\n",
            ),
            vec![],
            vec!["short.csv:3", "2 fields"],
        ),
        (
            "non-UTF-8 cell",
            write(
                cwd,
                "latin1.csv",
                b"file,Effusion\na.png,1.0\nb\xe9.png,0.0\n",
            ),
            vec![],
            vec!["latin1.csv:3"],
        ),
        (
            "unknown cell value",
            csv("value.csv", "file,Effusion\na.png,yes\n"),
            vec![],
            vec!["value.csv:2", "`Effusion`", "yes"],
        ),
        (
            "bad value in a CRLF file",
            csv("crlf.csv", "file,Effusion\r\na.png,1.0\r\nb.png,2.0\r\n"),
            vec![],
            vec!["crlf.csv:3", "2.0"],
        ),
        (
            "path climbing out",
            csv(
                "climb.csv",
                "file,Effusion\na.png,1\n../../../etc/passwd,0\n",
            ),
            vec![],
            vec![
                "climb.csv:3",
                "../../../etc/passwd",
                "--allow-absolute-paths",
            ],
        ),
        (
            "absolute path",
            csv("absolute.csv", "file,Effusion\n/etc/passwd,0\n"),
            vec![],
            vec!["absolute.csv:2", "is absolute"],
        ),
        (
            "column named twice",
            csv("twice.csv", "file,Effusion,Effusion\na.png,1,0\n"),
            vec![],
            vec!["twice.csv", "`Effusion` appears twice"],
        ),
        (
            "image listed twice with different labels",
            csv("dupe.csv", "file,Effusion\na.png,1\nb.png,0\na.png,0\n"),
            vec![],
            vec!["dupe.csv:4", "first at line 2"],
        ),
        (
            "missing image",
            csv("missing.csv", "file,Effusion\na.png,1\nnot-there.png,0\n"),
            vec![],
            vec!["missing.csv:3", "not-there.png"],
        ),
        (
            "a view filter without a view column",
            csv("views.csv", "file,Effusion\na.png,1\n"),
            vec!["--view", "pa"],
            vec!["--view-column"],
        ),
        (
            "label map without a categorical column",
            csv("map.csv", "file,Effusion\na.png,1\n"),
            vec!["--label-map", "x=Edema"],
            vec!["label map"],
        ),
    ];
    for (case, path, extra, needles) in cases {
        refused(case, check_csv(cwd, &path, &extra), &needles);
    }

    // Images that cannot be decoded are named, each one.
    write(cwd, "corrupt.png", b"\x89PNG\r\n\x1a\nnot a png at all");
    png_claiming(cwd, "huge-ihdr.png", 100_000);
    let images = csv(
        "images.csv",
        "file,Effusion\na.png,1\ncorrupt.png,0\nhuge-ihdr.png,0\n",
    );
    refused(
        "undecodable images",
        check_csv(cwd, &images, &[]),
        &["corrupt.png", "huge-ihdr.png", "2 unreadable images"],
    );

    // NIH's own layout: an unknown finding names its row and column.
    let nih = cwd.join("nih");
    write(
        &nih,
        "Data_Entry_2017.csv",
        b"Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n\
          a.png,Effusion|Flu,0,1,50,M,PA\n",
    );
    refused(
        "unknown NIH finding",
        chex(cwd, &["data", "stats", "--nih-root", nih.to_str().unwrap()]),
        &["Data_Entry_2017.csv:2", "Flu", "Finding Labels"],
    );
    // Sizes that ask for unbounded memory are refused by the argument parser.
    refused(
        "oversized --size",
        check_csv(cwd, &images, &["--size", "100000"]),
        &["--size"],
    );
    let config = tiny_cpu();
    let out = chex(
        cwd,
        &[
            "generate",
            "--config",
            &config,
            "--image",
            "a.png",
            "--samples",
            "100000000",
        ],
    );
    assert_eq!(out.code, Some(2), "{}", out.output);
    assert!(out.output.contains("--samples"));
    assert_eq!(half_written(cwd), Vec::<PathBuf>::new());
}

#[test]
fn valid_oddities_load() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    png(cwd, "a.png");
    let wide = cwd.join("wide.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(40, 30, image::Luma([40_000u16]))
        .save(&wide)
        .unwrap();
    let csv = write(
        cwd,
        "odd.csv",
        "\u{feff}file,Effusion\r\na.png,1.0\r\nwide.png,\r\na.png,1\r\n".as_bytes(),
    );
    let out = check_csv(cwd, &csv, &[]);
    assert_eq!(out.code, Some(0), "{}", out.output);
    assert!(
        out.output.contains("decoded 2 of 2") && out.output.contains("1 repeated rows"),
        "{}",
        out.output
    );
}

#[test]
fn sft_trace_files_too_small_to_train_are_refused_after_loading() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let traces = write(cwd, "empty.jsonl", b"");
    refused(
        "empty sft_traces",
        run_miniature(cwd, &format!("data.sft_traces=\"{}\"", traces.display())),
        &["SFT needs at least two examples"],
    );
    png(cwd, "a.png");
    let escape = write(
        cwd,
        "escape.jsonl",
        b"{\"image\": \"../../etc/passwd\", \"labels\": []}\n",
    );
    refused(
        "a trace image outside its folder",
        run_miniature(cwd, &format!("data.sft_traces=\"{}\"", escape.display())),
        &["escape.jsonl:1", "../../etc/passwd"],
    );
    assert_eq!(half_written(cwd), Vec::<PathBuf>::new());
}
