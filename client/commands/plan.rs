//! `disco plan`: fetches the node's view into the cache and prints the
//! order its modules run in.

use anyhow::Result;

use super::print_lines;
use crate::config::Config;
use crate::fetch;

pub fn run(config: &Config) -> Result<i32> {
    // The cache is shared with dances: never fetch while one runs.
    let _lock = crate::cron::take_lock(config, false)?;
    let fetched = fetch::fetch_configured(config)?;
    print_lines(fetched.plan.order.iter().map(|m| m.to_string()))?;
    Ok(0)
}
