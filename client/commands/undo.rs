//! `disco undo`: finishes an interrupted undo or merge, then restores the
//! root as it was before the last merged dance.

use anyhow::Result;

use super::require_root;
use crate::config::Config;
use crate::merge::{self, Failpoint};
use crate::output;

/// `disco undo`: finishes any interrupted merge, then restores the root as
/// it was before the last merged dance.
pub fn run(config: &Config) -> Result<i32> {
    if config.noop.value {
        // Noop: what would be restored and removed; nothing changes.
        let lines = merge::undo_preview(&config.state_dir.value)?;
        for l in &lines {
            output::info(l);
        }
        output::info(&format!(
            "noop: undo would restore or remove {} entries; nothing was changed",
            lines.len()
        ));
        return Ok(0);
    }
    require_root("disco undo", "it restores files of the root as they were")?;
    let _lock = crate::cron::take_lock(config, false)?;
    let _root_lock = crate::cron::take_root_lock(config, false)?;
    if crate::pipeline::finish_interrupted(config)? {
        // That was the last run's undo already.
        return Ok(0);
    }
    let lines = merge::undo(
        &config.state_dir.value,
        &config.root.value,
        Failpoint::from_env()?,
    )?;
    for l in &lines {
        output::info(l);
    }
    output::info(&format!("undo: {} entries restored", lines.len()));
    Ok(0)
}
