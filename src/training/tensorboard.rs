//! TensorBoard event files beside the JSONL logs, so training curves open in the tool
//! researchers already use. The JSONL log stays the record of truth: each stage's event file
//! is written from it (every numeric field of every record, as a scalar tagged
//! `{stage}/{field}` at the record's step) and kept up to date while the stage runs, appending
//! new records and rewriting the file when a resumed run has cut its log back.
//!
//! The format is TensorFlow's: a sequence of TFRecords (length, masked CRC-32C of the length,
//! an `Event` protocol buffer, masked CRC-32C of the data), the first event carrying the file
//! version. `scripts/tensorboard_fixture.py` reads a file written here with the `tensorboard`
//! package's own reader; `tests/fixtures/tensorboard/` holds both and a test compares them.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// TensorFlow's CRC mask, so a CRC of data that holds CRCs is not itself a CRC.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited protocol-buffer field.
fn bytes_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// One `Event`: `wall_time` (1, double), `step` (2, int64), then `file_version` (3) or a
/// `Summary` (5) of `Value`s with `tag` (1) and `simple_value` (2, float).
fn event(wall_time: f64, step: i64, body: EventBody<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(0x09);
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(0x10);
    varint(step as u64, &mut out);
    match body {
        EventBody::FileVersion => bytes_field(3, b"brain.Event:2", &mut out),
        EventBody::Scalars(scalars) => {
            let mut summary = Vec::new();
            for (tag, value) in scalars {
                let mut entry = Vec::new();
                bytes_field(1, tag.as_bytes(), &mut entry);
                entry.push(0x15);
                entry.extend_from_slice(&(*value as f32).to_le_bytes());
                bytes_field(1, &entry, &mut summary);
            }
            bytes_field(5, &summary, &mut out);
        }
    }
    out
}

enum EventBody<'a> {
    FileVersion,
    Scalars(&'a [(String, f64)]),
}

/// One TFRecord around `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The scalars of one log record: every numeric field but `step`, nested objects flattened
/// with `/`, tagged `{stage}/…`; with the record's step.
pub fn scalars_of(stage: &str, line: &serde_json::Value) -> Option<(i64, Vec<(String, f64)>)> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, f64)>) {
        match value {
            serde_json::Value::Number(n) => {
                if let Some(v) = n.as_f64() {
                    out.push((prefix.to_string(), v));
                }
            }
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    walk(&format!("{prefix}/{key}"), child, out);
                }
            }
            _ => {}
        }
    }
    let object = line.as_object()?;
    let step = object.get("step")?.as_i64()?;
    let mut scalars = Vec::new();
    for (key, value) in object {
        if key != "step" {
            walk(&format!("{stage}/{key}"), value, &mut scalars);
        }
    }
    Some((step, scalars))
}

/// The event every file starts with: its format version.
fn version_record(wall_time: f64) -> Vec<u8> {
    record(&event(wall_time, 0, EventBody::FileVersion))
}

/// One event per log record that has scalars. `wall_time` gives the time of the `i`-th
/// record (a step's wall clock is not in the JSONL log).
fn scalar_records(
    stage: &str,
    records: &[serde_json::Value],
    wall_time: &dyn Fn(usize) -> f64,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, line) in records.iter().enumerate() {
        if let Some((step, scalars)) = scalars_of(stage, line)
            && !scalars.is_empty()
        {
            bytes.extend(record(&event(
                wall_time(i),
                step,
                EventBody::Scalars(&scalars),
            )));
        }
    }
    bytes
}

/// The events of a whole file: the version at `wall_time(0)`, then one event per record
/// with scalars, the `i`-th at `wall_time(i + 1)`.
pub fn event_file_bytes(
    stage: &str,
    records: &[serde_json::Value],
    wall_time: &dyn Fn(usize) -> f64,
) -> Vec<u8> {
    let mut bytes = version_record(wall_time(0));
    bytes.extend(scalar_records(stage, records, &|i| wall_time(i + 1)));
    bytes
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Keeps `{out}/tensorboard/{stage}/events.out.tfevents.chex` in step with
/// `{out}/{stage}_log.jsonl`.
pub struct EventMirror {
    stage: String,
    log: PathBuf,
    events: PathBuf,
    /// Complete lines of the log already in the event file.
    mirrored: Vec<String>,
}

impl EventMirror {
    /// A mirror of stage `stage`'s log under `out` (nothing is written until [`Self::sync`]).
    pub fn new(out: &Path, stage: &str) -> Self {
        Self {
            stage: stage.to_string(),
            log: out.join(format!("{stage}_log.jsonl")),
            events: out
                .join("tensorboard")
                .join(stage)
                .join("events.out.tfevents.chex"),
            mirrored: Vec::new(),
        }
    }

    /// Where the event file is.
    pub fn path(&self) -> &Path {
        &self.events
    }

    /// Bring the event file up to the log: append the new records, or rewrite the file when
    /// the log no longer starts with what was mirrored (a resumed run cut it back, or this is
    /// a new process). A torn last line is left for the next sync.
    pub fn sync(&mut self) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(&self.log) else {
            return Ok(());
        };
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        let lines: Vec<String> = complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        let parse = |lines: &[String]| -> Vec<serde_json::Value> {
            lines
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        };
        let continues = !self.mirrored.is_empty()
            && self.events.exists()
            && lines.len() >= self.mirrored.len()
            && lines[..self.mirrored.len()] == self.mirrored[..];
        if continues {
            let new = parse(&lines[self.mirrored.len()..]);
            if !new.is_empty() {
                let time = now();
                let bytes = scalar_records(&self.stage, &new, &|_| time);
                let mut file = OpenOptions::new()
                    .append(true)
                    .open(&self.events)
                    .map_err(|e| Error::io(&self.events, e))?;
                file.write_all(&bytes)
                    .and_then(|_| file.flush())
                    .map_err(|e| Error::io(&self.events, e))?;
            }
        } else {
            if let Some(dir) = self.events.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            let time = now();
            let bytes = event_file_bytes(&self.stage, &parse(&lines), &|_| time);
            chex_data::write_atomic(&self.events, &bytes)
                .map_err(|e| Error::io(&self.events, e))?;
        }
        self.mirrored = lines;
        Ok(())
    }
}

/// Mirrors of several stages' logs, synced every two seconds on a thread of their own and
/// once more when dropped, so the event files follow a run live.
pub struct LiveMirrors {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl LiveMirrors {
    /// Start mirroring `stages` under `out`.
    pub fn start(out: &Path, stages: &[&str]) -> Self {
        let mut mirrors: Vec<EventMirror> =
            stages.iter().map(|s| EventMirror::new(out, s)).collect();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            loop {
                let last = !matches!(
                    stopped.recv_timeout(std::time::Duration::from_secs(2)),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
                for mirror in &mut mirrors {
                    let synced = mirror.sync();
                    // A failed sync is retried at the next beat; the last one is reported.
                    if last {
                        synced?;
                    }
                }
                if last {
                    return Ok(());
                }
            }
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stop, after a last sync; its error, if any.
    pub fn finish(mut self) -> Result<()> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Config {
                origin: "tensorboard".into(),
                message: "the event-file thread panicked".into(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for LiveMirrors {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_the_castagnoli_crc() {
        // The check value of RFC 3720 appendix B.4; the mask is checked against tensorboard's
        // reader through the committed fixture.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn records_flatten_to_tagged_scalars() {
        let line: serde_json::Value =
            serde_json::from_str(r#"{"step":3,"loss":0.5,"skipped":false,"x":{"y":2}}"#).unwrap();
        let (step, scalars) = scalars_of("sft", &line).unwrap();
        assert_eq!(step, 3);
        assert_eq!(
            scalars,
            vec![("sft/loss".to_string(), 0.5), ("sft/x/y".to_string(), 2.0)]
        );
    }
}
