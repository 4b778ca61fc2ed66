/// Errors from the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "backend `{requested}` is not compiled into this build: rebuild with `--features {feature}` (see docs/backends.md); compiled backends: {compiled}"
    )]
    BackendNotCompiled {
        requested: String,
        feature: &'static str,
        compiled: String,
    },
    #[error("unknown device `{0}` (use cpu, ndarray, tch-cpu, tch-cuda:N or cuda:N)")]
    UnknownDevice(String),
}
