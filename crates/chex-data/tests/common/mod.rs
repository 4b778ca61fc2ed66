//! Where the test data lives.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared real-data folder: `$CHEX_SHARED_DATA`, else `../shared/data` beside the
/// workspace. Tests fail (not skip) when it is missing, so a CI without data is red.
pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("CHEX_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        dir.join("nih1000/Data_Entry_2017.csv").is_file(),
        "real test data not found at {}: set CHEX_SHARED_DATA to the shared/data folder",
        dir.display()
    );
    dir
}

/// The committed small fixtures.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
