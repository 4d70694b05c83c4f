//! `disco facts`: this node's facts, as templates and scripts see them
//! under `facts/`.

use anyhow::Result;

use super::print_lines;
use crate::config::Config;

/// Prints `facts/KEY = value` lines (lists on one line, `\n`-joined), or
/// one JSON object with `--json`.
pub fn run(config: &Config, json: bool) -> Result<i32> {
    let facts = crate::facts::gather(&config.root.value)?;
    if json {
        print_lines([serde_json::to_string_pretty(&facts)?])?;
    } else {
        print_lines(facts.iter().map(|(k, v)| {
            crate::output::printable(&format!("facts/{k} = {}", v.replace('\n', "\\n")))
        }))?;
    }
    Ok(0)
}
