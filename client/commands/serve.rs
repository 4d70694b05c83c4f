//! `disco serve`: the forced command of a node's key on the server.

use anyhow::{bail, Result};

use crate::config::{Config, Source};

/// Serves `--root` on stdin/stdout (only `--node`'s view when given).
pub fn run(config: &Config) -> Result<i32> {
    if !matches!(config.root.source, Source::Flag(_)) {
        bail!("disco serve needs --root DIR, the server tree to serve");
    }
    let forced = match config.node.source {
        Source::Flag(_) => Some(&config.node.value),
        _ => None,
    };
    crate::transport::serve::serve(&config.root.value, forced)
}
