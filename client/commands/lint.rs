//! `disco lint`: checks the server tree at the configured (local) server
//! and prints one line per problem, then a summary; the checks are
//! [`crate::lint`]'s.

use anyhow::{bail, Result};

use super::print_lines;
use crate::config::Config;
use crate::names::Name;
use crate::transport::ServerUri;

pub fn run(config: &Config, nodes: &[String], allowed: &[std::path::PathBuf]) -> Result<i32> {
    let raw = config
        .require_servers()?
        .into_iter()
        .next()
        .expect("require_servers gives at least one");
    let dir = match ServerUri::parse(&raw)? {
        ServerUri::Local(dir) => dir,
        ServerUri::Ssh { .. } => bail!(
            "disco lint reads the server tree where it lies, and {raw} is remote: run it on the server (or in a git hook there) with --server DIR"
        ),
    };
    let only = nodes
        .iter()
        .map(|n| Name::parse(n, "--node"))
        .collect::<Result<Vec<_>, _>>()?;
    // A published tree is linted as nodes fetch it: through `current`.
    let snapshot = crate::transport::serve::resolve_snapshot(&dir)
        .map_err(|e| anyhow::anyhow!("server {}: {e:#}", dir.display()))?;
    let lint = crate::lint::lint(&snapshot.path, &only, allowed)?;
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let counts = format!(
        "{}, {}",
        plural(lint.nodes, "node"),
        plural(lint.modules, "module")
    );
    let mut lines: Vec<String> = lint
        .problems
        .iter()
        .map(|p| format!("error: {}", crate::output::printable(&p.to_string())))
        .collect();
    if lint.problems.is_empty() {
        lines.push(format!("lint: {counts}, no problem"));
    } else {
        lines.push(format!(
            "lint: {counts}, {}",
            plural(lint.problems.len(), "problem")
        ));
    }
    print_lines(lines)?;
    Ok(if lint.problems.is_empty() { 0 } else { 1 })
}
