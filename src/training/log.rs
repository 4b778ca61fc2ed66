//! One JSON object per line, flushed as it is written, so a crashed run keeps its log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// An append-only JSONL file.
pub struct JsonlLog {
    file: File,
    path: PathBuf,
}

impl JsonlLog {
    /// Open for appending (a resumed run continues its log).
    pub fn append(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Open a run's log at optimizer step `step`: records of later steps (written after the
    /// checkpoint a resumed run restarts from, or by an earlier run when starting afresh at 0)
    /// are dropped, so the log always describes one run. Kept lines keep their bytes (floats
    /// are not re-printed), the file is replaced atomically, and a torn last line (a kill in the
    /// middle of a write) is cut off with a warning; a malformed line before the last is an
    /// error naming it.
    pub fn at_step(path: &Path, step: usize) -> Result<Self> {
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let lines: Vec<(usize, &str)> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .collect();
            let mut kept = String::new();
            for (k, (number, line)) in lines.iter().enumerate() {
                let record: serde_json::Value = match serde_json::from_str(line) {
                    Ok(record) => record,
                    Err(e) if k + 1 == lines.len() => {
                        eprintln!(
                            "{}:{}: cutting off a torn last line ({e})",
                            path.display(),
                            number + 1
                        );
                        break;
                    }
                    Err(e) => return Err(Error::line(path, number + 1, e)),
                };
                let in_run = step > 0
                    && record
                        .get("step")
                        .and_then(|s| s.as_u64())
                        .is_some_and(|s| s as usize <= step);
                if in_run {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            if kept != text {
                chex_data::write_atomic(path, kept.as_bytes()).map_err(|e| Error::io(path, e))?;
            }
        }
        Self::append(path)
    }

    /// Write one record.
    pub fn write<R: Serialize>(&mut self, record: &R) -> Result<()> {
        let mut line = crate::error::to_json(record, &self.path, false)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Read every record of a JSONL file as `R`; a line that is not an `R` is an error naming the
/// file and line.
pub fn read_jsonl<R: DeserializeOwned>(path: &Path) -> Result<Vec<R>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::line(path, i + 1, e)))
        .collect()
}
