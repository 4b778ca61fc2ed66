use std::path::PathBuf;

/// Everything that can go wrong while reading a dataset; each variant names the file and,
/// where there is one, the line and column.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: malformed CSV: {message}")]
    Csv {
        file: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{file}: missing column `{column}` in the header")]
    MissingColumn { file: PathBuf, column: String },
    #[error("{file}: unknown column `{column}` in the header (expected one of: {expected})")]
    UnknownColumn {
        file: PathBuf,
        column: String,
        expected: String,
    },
    #[error("{file}:{line}: row has {found} fields, the header has {expected}")]
    RowLength {
        file: PathBuf,
        line: u64,
        expected: usize,
        found: usize,
    },
    #[error("{file}:{line}: column `{column}`: value `{value}` is not one of {allowed}")]
    BadValue {
        file: PathBuf,
        line: u64,
        column: String,
        value: String,
        allowed: String,
    },
    #[error("{file}:{line}: column `{column}`: unknown label `{label}` (known: {known})")]
    UnknownLabel {
        file: PathBuf,
        line: u64,
        column: String,
        label: String,
        known: String,
    },
    #[error("{file}:{line}: image `{image}` does not exist")]
    MissingImage {
        file: PathBuf,
        line: u64,
        image: PathBuf,
    },
    #[error("{file}:{line}: {message}")]
    Inconsistent {
        file: PathBuf,
        line: u64,
        message: String,
    },
    #[error(
        "{file}:{line}: column `{column}`: path `{value}` {reason}; pass --allow-absolute-paths \
         (data.allow_absolute_paths = true in a study config) to read images outside the \
         dataset's folder"
    )]
    PathEscape {
        file: PathBuf,
        line: u64,
        column: String,
        value: String,
        reason: crate::paths::PathEscape,
    },
    #[error("{file}: column `{column}` appears twice in the header")]
    DuplicateColumn { file: PathBuf, column: String },
    #[error(
        "{file}:{line}: image `{image}` is listed again with different labels (first at line {first_line})"
    )]
    DuplicateImage {
        file: PathBuf,
        line: u64,
        first_line: u64,
        image: PathBuf,
    },
    #[error("image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("invalid option: {0}")]
    Config(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
