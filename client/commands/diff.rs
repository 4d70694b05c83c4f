//! `disco diff`: prints the changes of the last (or a given) run again,
//! from its saved report.

use anyhow::Result;

use super::print_lines;
use crate::config::Config;

pub fn run(config: &Config, run: Option<&str>) -> Result<i32> {
    let report = crate::report::load(&config.state_dir.value, run)?;
    let mode = if report.noop { "noop" } else { "live" };
    print_lines([format!(
        "info: run {} of node {} ({mode}) on {}, started {}",
        report.id,
        report.node,
        report.root.display(),
        report.started
    )])?;
    for m in &report.modules {
        if m.changes.is_empty() {
            continue;
        }
        print_lines([format!("info: {}: {} change(s)", m.name, m.changes.len())])?;
        for c in &m.changes {
            crate::output::change(c, true);
        }
    }
    if let Some(e) = &report.error {
        print_lines([format!("info: that run failed: {e}")])?;
    }
    Ok(0)
}
