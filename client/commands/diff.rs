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
        let summarised = args.paths.is_empty() && m.summarised_changes > 0;
        if changes.is_empty() && !summarised {
            continue;
        }
        let count = if args.paths.is_empty() {
            m.change_count()
        } else {
            changes.len()
        };
        print_lines([format!("info: {}: {count} change(s)", m.name)])?;
        crate::output::changes(&changes, &roll);
        if summarised {
            print_lines(
                m.summarised
                    .iter()
                    .map(|s| format!("info: {}", crate::output::printable(&s.line()))),
            )?;
            if args.full {
                print_lines([capped_note(m)])?;
            }
        }
    }
    if let Some(e) = &report.error {
        print_lines([format!("info: that run failed: {e}")])?;
    }
    Ok(0)
}

/// What `--full` says of a module whose saved changes were capped.
fn capped_note(m: &crate::report::ModuleReport) -> String {
    format!(
        "info: {}: the report was capped: {} of {} change(s) kept in full, {} counted per directory above (report_max_changes, report_max_bytes); to see every one, raise those settings or run `disco dance --noop --keep` and look in its layers (STATE/run/RUN/u)",
        m.name,
        m.changes.len(),
        m.change_count(),
        m.summarised_changes
    )
}
