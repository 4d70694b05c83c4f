//! `disco diff`: prints the changes of the last (or a given) run again,
//! from its saved report.

use anyhow::Result;

use super::print_lines;
use crate::config::Config;

/// Prints the saved changes: rolled up, `--full`, or only `paths`.
pub fn run(config: &Config, args: &crate::cli::DiffArgs) -> Result<i32> {
    let report = crate::report::load(&config.state_dir.value, args.run.as_deref())?;
    let mode = if report.noop { "noop" } else { "live" };
    print_lines([format!(
        "info: run {} of node {} ({mode}) on {}, started {}",
        report.id,
        report.node,
        report.root.display(),
        report.started
    )])?;
    let mut roll = config.roll_up(false, true);
    if args.full || !args.paths.is_empty() {
        roll.diff_limit = usize::MAX;
        roll.ignore.clear();
    }
    for m in &report.modules {
        let changes: Vec<_> = m
            .changes
            .iter()
            .filter(|c| args.paths.is_empty() || args.paths.contains(&c.path))
            .cloned()
            .collect();
        if changes.is_empty() {
            continue;
        }
        print_lines([format!("info: {}: {} change(s)", m.name, changes.len())])?;
        crate::output::changes(&changes, &roll);
    }
    if let Some(e) = &report.error {
        print_lines([format!("info: that run failed: {e}")])?;
    }
    Ok(0)
}
