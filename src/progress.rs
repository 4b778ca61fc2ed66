//! The one progress-bar style every long step uses (synthesis, decoding, training).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what`, with rate and time left.
pub fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
