//! `disco serve`: the forced command of a node's key on the server.

use anyhow::{bail, Result};

use crate::cli::ServeArgs;
use crate::config::{Config, Source};
use crate::transport::deadline::Deadline;

/// Serves `--root` on stdin/stdout (only `--node`'s view when given),
/// within `--io-timeout` of silence and `--fetch-timeout` in all.
pub fn run(config: &Config, args: &ServeArgs) -> Result<i32> {
    if !matches!(config.root.source, Source::Flag(_)) {
        bail!("disco serve needs --root DIR, the server tree to serve");
    }
    let forced = match config.node.source {
        Source::Flag(_) => Some(&config.node.value),
        _ => None,
    };
    let deadline = Deadline::new(args.io_timeout, args.fetch_timeout);
    crate::transport::serve::serve(&config.root.value, forced, deadline)
}
