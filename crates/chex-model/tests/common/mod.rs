//! What the model tests share.

use std::path::{Path, PathBuf};

/// The transformers fixture written by `scripts/make_model_fixture.py`. `CHEX_MODEL_FIXTURES`
/// moves the fixtures folder, for test programs run away from the source tree (the GPU-node
/// bundle of `scripts/build-for-gpu-node.sh`).
pub fn fixture() -> PathBuf {
    std::env::var_os("CHEX_MODEL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .join("gemma3_tiny")
}
