use std::path::PathBuf;

/// Errors from the model crate. Each names the file, key or field at fault.
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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model config {path}: {message}")]
    Config { path: String, message: String },
    #[error("unknown model preset `{name}` (known: {known})")]
    UnknownPreset { name: String, known: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("checkpoint {path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: String,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("checkpoint {path}: tensor `{key}` is missing")]
    MissingTensor { path: String, key: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: String, message: String },
    #[error("image {what}: {message}")]
    Image { what: String, message: String },
    #[error("generation: {0}")]
    Generation(String),
    #[error(
        "{what} needs about {needed_gib:.1} GiB ({weights_gib:.1} GiB of weights, \
         {training_gib:.1} GiB of gradients and optimizer state, {cache_gib:.1} GiB of \
         key/value cache) but this machine has {available_gib:.1} GiB; check the dimensions \
         in config.json or ask for smaller batches and lengths"
    )]
    TooLarge {
        what: String,
        needed_gib: f64,
        weights_gib: f64,
        training_gib: f64,
        cache_gib: f64,
        available_gib: f64,
    },
    #[error("model.dtype: {0}")]
    Precision(String),
    #[error("LoRA adapter {path}: {message}")]
    Adapter { path: String, message: String },
    #[error("profiler: {0}")]
    Profiler(String),
}
