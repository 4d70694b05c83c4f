//! `disco undo`: finishes an interrupted undo or merge, then restores the
//! root as it was before the last merged dance.

use anyhow::Result;

use super::require_root;
use crate::config::Config;
use crate::merge::{self, Failpoint};
use crate::output;

/// `disco undo`: finishes any interrupted merge, then restores the root as
/// it was before the last merged dance.
pub fn run(config: &Config, yes: bool) -> Result<i32> {
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
    if !yes && std::io::IsTerminal::is_terminal(&std::io::stdin()) && !confirmed(config)? {
        output::info("undo: nothing was changed");
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

/// On a terminal: shows what undo will do and asks. True to go on.
fn confirmed(config: &Config) -> Result<bool> {
    let lines = merge::undo_preview(&config.state_dir.value)?;
    for l in &lines {
        output::info(l);
    }
    eprint!("restore and remove these {} entries? [y/N] ", lines.len());
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
