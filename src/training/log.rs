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
    /// are dropped, so the log always describes one run.
    pub fn at_step(path: &Path, step: usize) -> Result<Self> {
        if path.exists() {
            let kept: Vec<serde_json::Value> = read_jsonl::<serde_json::Value>(path)?
                .into_iter()
                .filter(|r| {
                    step > 0
                        && r.get("step")
                            .and_then(|s| s.as_u64())
                            .is_some_and(|s| s as usize <= step)
                })
                .collect();
            let text: String = kept.iter().map(|r| format!("{r}\n")).collect();
            chex_data::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))?;
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
