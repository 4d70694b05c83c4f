//! `disco publish`: copies a server tree into a new snapshot and points
//! `current` at it, atomically.

use anyhow::{bail, Result};

use crate::cli::PublishArgs;
use crate::config::{Config, Source};

/// Publishes `args.src` under `--root`.
pub fn run(config: &Config, args: &PublishArgs) -> Result<i32> {
    if !matches!(config.root.source, Source::Flag(_)) {
        bail!(
            "disco publish needs --root DIR, the served directory (it gets snapshots/ and current)"
        );
    }
    if config.noop.value {
        // What a real publish would refuse, noop refuses too.
        crate::transport::publish::check_served_dir(&config.root.value)?;
        let n = crate::transport::publish::differing_files(
            &args.src,
            &config.root.value,
            &args.allow_link_to,
        )?;
        crate::output::info(&format!(
            "noop: would publish {} as a new snapshot of {}; {n} file(s) differ from current; nothing was changed",
            args.src.display(),
            config.root.value.display()
        ));
        return Ok(0);
    }
    let id = crate::transport::publish::publish(
        &args.src,
        &config.root.value,
        args.keep,
        &args.allow_link_to,
    )?;
    crate::output::info(&format!(
        "published {} as snapshot {id}; {}/current points to it",
        args.src.display(),
        config.root.value.display()
    ));
    Ok(0)
}
