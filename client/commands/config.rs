//! `disco config`: the effective settings, one `key = value  # source`
//! line each (valid TOML).

use anyhow::Result;

use super::print_lines;
use crate::config::Config;

/// Prints the settings.
pub fn run(config: &Config) -> Result<i32> {
    print_lines(config.lines())?;
    Ok(0)
}
