//! Kill the miniature study with SIGKILL at five seeded points across SFT and GRPO, resume
//! each time with `--resume`, and require the outcome of the uninterrupted run: the same model
//! and optimizer tensors in every checkpoint (compared tensor by tensor, not as file bytes),
//! the same metrics, and logs with one record per step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

/// The main job shrunk to seconds: 2 SFT epochs of 2 steps, 4 GRPO steps saved after each.
const SETTINGS: [&str; 15] = [
    "data.synthetic.miniature=true",
    "pretrain.size=12",
    "pretrain.training.epochs=1",
    "data.sft_size=12",
    "data.rl_size=6",
    "data.validation_size=4",
    "sft.epochs=2",
    "grpo.steps=4",
    "grpo.save_every=1",
    "grpo.eval_every=2",
    "grpo.max_completion_length=12",
    "eval.max_new_tokens=12",
    "eval.batch=8",
    "eval.bootstrap_resamples=20",
    "eval.traces=1",
];

fn start(cwd: &Path, out: &str, resume: bool) -> Child {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/tiny-cpu.toml");
    let mut command = Command::new(env!("CARGO_BIN_EXE_chex"));
    command
        .current_dir(cwd)
        .args(["run", "--config", config, "--out", out])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for set in SETTINGS {
        command.args(["--set", set]);
    }
    if resume {
        command.arg("--resume");
    }
    command.spawn().unwrap()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Training progress: records in the SFT and GRPO logs.
fn progress(out: &Path) -> (usize, usize) {
    (
        lines(&out.join("sft_log.jsonl")),
        lines(&out.join("grpo_log.jsonl")),
    )
}

/// Every tensor and scalar of a burnpack file, keyed by a name that does not depend on the
/// process: an optimizer state's parameter id is replaced by the parameter's module path.
fn tensors(path: &Path) -> BTreeMap<String, String> {
    let reader = burn_pack::Reader::from_file(path).unwrap_or_else(|e| panic!("{path:?}: {e:?}"));
    let paths = reader.metadata().clone();
    let canonical = |name: &str| -> String {
        match name.split_once('.') {
            Some((id, rest)) if paths.contains_key(id) => format!("{}.{rest}", paths[id]),
            _ => name.to_string(),
        }
    };
    let mut all: BTreeMap<String, String> = reader
        .scalars()
        .iter()
        .map(|(k, v)| (format!("scalar {}", canonical(k)), format!("{v:?}")))
        .collect();
    for tensor in reader.into_tensors().unwrap() {
        let (name, dtype, shape, _, bytes) = tensor.into_parts().unwrap();
        let digest: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        all.insert(
            canonical(&name),
            format!("{dtype:?} {shape:?} {}", digest.concat()),
        );
    }
    all
}

fn checkpoint_tensors(out: &Path) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for checkpoint in ["sft-best", "sft-last", "grpo-best", "grpo-last"] {
        // `frozen.bpk` holds what the stage never trains, when anything is frozen: a file one
        // run has and the other lacks shows as missing tensors.
        for file in ["model.bpk", "frozen.bpk", "optimizer.bpk"] {
            let path = out.join("checkpoints").join(checkpoint).join(file);
            if file == "frozen.bpk" && !path.exists() {
                continue;
            }
            for (name, value) in tensors(&path) {
                all.insert(format!("{checkpoint}/{file}: {name}"), value);
            }
        }
    }
    all
}

fn metrics(out: &Path) -> BTreeMap<PathBuf, serde_json::Value> {
    std::fs::read_dir(out.join("metrics"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p.file_name().unwrap().into(), value)
        })
        .collect()
}

#[test]
fn five_sigkills_across_sft_and_grpo_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    assert!(start(cwd, "whole", false).wait().unwrap().success());
    let whole = cwd.join("whole");
    let (sft_records, grpo_records) = progress(&whole);
    assert!(
        sft_records >= 4 && grpo_records == 4,
        "{sft_records} {grpo_records}"
    );

    // Three points inside SFT and two inside GRPO, seeded; a point is a count of log records
    // reached, and the kill lands wherever the process is a few milliseconds later.
    let mut rng = ChaCha8Rng::seed_from_u64(20261126);
    let mut points: Vec<(usize, usize)> = sample(&mut rng, sft_records - 1, 3)
        .into_iter()
        .map(|i| (i + 1, 0))
        .collect();
    points.extend(
        sample(&mut rng, grpo_records - 1, 2)
            .into_iter()
            .map(|i| (sft_records, i + 1)),
    );
    points.sort();

    let killed = cwd.join("killed");
    let mut kills = 0;
    for (i, &(sft, grpo)) in points.iter().enumerate() {
        let mut child = start(cwd, "killed", i > 0);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if progress(&killed) >= (sft, grpo) {
                child.kill().unwrap(); // SIGKILL on Unix
                child.wait().unwrap();
                kills += 1;
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the run ended ({status}) before point {:?}", (sft, grpo));
            }
            assert!(
                Instant::now() < deadline,
                "point {:?} never reached",
                (sft, grpo)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(kills, 5);
    assert!(start(cwd, "killed", true).wait().unwrap().success());

    assert_eq!(
        progress(&killed),
        progress(&whole),
        "one log record per step"
    );
    let (expected, found) = (checkpoint_tensors(&whole), checkpoint_tensors(&killed));
    let optimizer_tensors = expected
        .keys()
        .filter(|k| k.contains("optimizer.bpk") && !k.contains(": scalar"))
        .count();
    assert!(
        optimizer_tensors > 50,
        "{optimizer_tensors} optimizer tensors compared"
    );
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        found.keys().collect::<Vec<_>>()
    );
    for (name, value) in &expected {
        assert!(
            found[name] == *value,
            "{name} differs after kill and resume"
        );
    }
    assert_eq!(metrics(&killed), metrics(&whole));
    // Every stage's time is kept across the kills.
    let timings: Vec<(String, f64)> =
        serde_json::from_str(&std::fs::read_to_string(killed.join("timings.json")).unwrap())
            .unwrap();
    for stage in ["data", "sft", "grpo", "evaluate grpo"] {
        assert!(
            timings.iter().any(|(s, t)| s == stage && *t > 0.0),
            "{stage} in {timings:?}"
        );
    }
}
