/// Errors from metric computation.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        what: String,
        expected: usize,
        found: usize,
    },
    #[error("no samples to evaluate")]
    Empty,
    #[error("invalid option: {0}")]
    Config(String),
}
