//! The TensorBoard event writer against TensorBoard's own reader: the committed event file is
//! what our writer makes of `log.jsonl` today (byte for byte), and `expected.json` is what
//! `scripts/tensorboard_fixture.py` read from it with tensorboard's EventAccumulator.

use std::path::Path;

use chex_grpo::training::tensorboard::{EventMirror, event_file_bytes, scalars_of};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tensorboard")
        .join(name)
}

fn records() -> Vec<serde_json::Value> {
    std::fs::read_to_string(fixture("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const WALL_TIME: f64 = 1_790_000_000.0;

#[test]
fn tensorboard_fixture_is_what_the_writer_writes_and_what_tensorboard_read() {
    let bytes = event_file_bytes("train", &records(), &|i| WALL_TIME + i as f64);
    let committed = fixture("events.out.tfevents.fixture");
    if std::env::var_os("CHEX_BLESS_TENSORBOARD").is_some() {
        std::fs::write(&committed, &bytes).unwrap();
    }
    assert_eq!(
        std::fs::read(&committed).unwrap(),
        bytes,
        "the writer's bytes changed; rerun with CHEX_BLESS_TENSORBOARD=1 and then \
         scripts/tensorboard_fixture.py"
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    // The accumulator reads the version event's "brain.Event:2" as the number 2.
    assert_eq!(expected["file_version"], 2.0);
    let read = expected["scalars"].as_array().unwrap();
    let mut ours = Vec::new();
    for (i, line) in records().iter().enumerate() {
        let (step, scalars) = scalars_of("train", line).unwrap();
        for (tag, value) in scalars {
            ours.push((tag, step, WALL_TIME + (i + 1) as f64, value as f32));
        }
    }
    assert_eq!(read.len(), ours.len(), "{read:?}");
    for (tag, step, wall_time, value) in &ours {
        let found = read
            .iter()
            .find(|r| {
                r["tag"] == tag.as_str()
                    && r["step"] == *step
                    && r["wall_time"].as_f64() == Some(*wall_time)
            })
            .unwrap_or_else(|| panic!("tensorboard did not read {tag} at step {step}"));
        assert_eq!(found["value"].as_f64().unwrap() as f32, *value, "{tag}");
    }
    assert!(ours.iter().any(|(t, ..)| t == "train/rewards/nested"));
}

#[test]
fn the_mirror_appends_new_records_and_rewrites_a_cut_back_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sft_log.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(fixture("log.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let write = |n: usize, torn: &str| {
        let mut text: String = lines[..n].iter().map(|l| format!("{l}\n")).collect();
        text.push_str(torn);
        std::fs::write(&log, text).unwrap();
    };
    let mut mirror = EventMirror::new(dir.path(), "sft");
    mirror.sync().unwrap();
    assert!(!mirror.path().exists(), "no log, no event file");
    // A record being written (no newline yet) waits for the next sync.
    write(2, "{\"step\":3,\"lo");
    mirror.sync().unwrap();
    let count = |bytes: &[u8]| {
        let mut offset = 0;
        let mut n = 0;
        while offset < bytes.len() {
            let len = u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap()) as usize;
            offset += 16 + len;
            n += 1;
        }
        assert_eq!(offset, bytes.len());
        n
    };
    let first = std::fs::read(mirror.path()).unwrap();
    assert_eq!(count(&first), 3, "the version and two records");
    write(4, "");
    mirror.sync().unwrap();
    let appended = std::fs::read(mirror.path()).unwrap();
    assert_eq!(
        &appended[..first.len()],
        &first[..],
        "appended, not rewritten"
    );
    assert_eq!(count(&appended), 5);
    // A resumed run cut its log back to one record: the file is rewritten to match.
    write(1, "");
    mirror.sync().unwrap();
    assert_eq!(count(&std::fs::read(mirror.path()).unwrap()), 2);
}
