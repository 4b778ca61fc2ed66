//! The crate's error type: the member crates' errors, plus what composing them can go wrong
//! with — a setting out of range, a malformed line in a data or log file, a checkpoint that is
//! missing or unreadable, a data plan the sources cannot fill.

use std::path::{Path, PathBuf};

/// Everything that can fail in training, evaluation and the study.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] chex_model::ModelError),
    #[error(transparent)]
    Data(#[from] chex_data::DataError),
    #[error(transparent)]
    Metrics(#[from] chex_metrics::MetricsError),
    #[error(transparent)]
    Objective(#[from] chex_objective::ObjectiveError),
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration text that does not parse into the configuration (a misspelt key, a
    /// value of the wrong type).
    #[error("{origin}: {message}")]
    Config { origin: String, message: String },
    /// A setting whose value is out of range or contradicts another, refused before any work.
    #[error("{key}: {message}")]
    Setting { key: String, message: String },
    /// A malformed line of a JSONL file (SFT data, predictions, training logs).
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A JSON file that does not hold what it should.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint that is incomplete, truncated or of another model.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    /// A stage needs a checkpoint that an earlier stage has not written.
    #[error("no finished {} checkpoint under {}; run that stage first", names.join(" or "), dir.display())]
    MissingCheckpoint { names: Vec<String>, dir: PathBuf },
    /// A checkpoint name other than base, sft or grpo.
    #[error("unknown checkpoint `{0}`: use base, sft or grpo")]
    UnknownCheckpoint(String),
    /// A reward name no registered reward answers to.
    #[error("grpo.rewards: unknown reward `{name}`; registered: {}", known.join(", "))]
    UnknownReward { name: String, known: Vec<String> },
    /// The draws the configuration asks for cannot be made from the training site.
    #[error("data: {0}")]
    Draws(String),
    /// A test set that is empty or scores a label outside CheXpert's.
    #[error("test set `{test}`: {message}")]
    TestSet { test: String, message: String },
    /// An output folder without the metrics a report is built from.
    #[error("{}: no metrics found under metrics/; run the evaluation first", out.display())]
    NoMetrics { out: PathBuf },
    /// Predictions files that do not describe the same images and cannot be compared.
    #[error("{}: {message}", path.display())]
    Predictions { path: PathBuf, message: String },
    /// A figure that could not be drawn.
    #[error("plotting {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn setting(key: &str, message: impl Into<String>) -> Self {
        Self::Setting {
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn line(path: &Path, line: usize, message: impl std::fmt::Display) -> Self {
        Self::Line {
            path: path.to_path_buf(),
            line,
            message: message.to_string(),
        }
    }
}

/// Serialise `value` as JSON; our own types always serialise, so a failure is a bug worth
/// naming the file for.
pub(crate) fn to_json<T: serde::Serialize>(value: &T, path: &Path, pretty: bool) -> Result<String> {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    text.map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}
