/// Errors from the objective's functions: inputs of the wrong shape or a missing input.
#[derive(Debug, thiserror::Error)]
pub enum ObjectiveError {
    #[error("{what}: expected shape {expected:?}, found {found:?}")]
    Shape {
        what: &'static str,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{0}")]
    Config(String),
}
