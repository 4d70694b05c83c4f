//! `disco report`: the figures of the last (or a given) run, the history,
//! JSON, Prometheus text, and on the server the fleet's table (and, in
//! [`html`], its static site).

mod html;

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::print_lines;
use crate::config::Config;
use crate::transport::ServerUri;

pub fn run(config: &Config, args: &crate::cli::ReportArgs) -> Result<i32> {
    use crate::report;
    if args.fleet {
        return fleet(config, args);
    }
    let state = &config.state_dir.value;
    if let Some(s) = crate::cron::current_status(state) {
        if s.starts_with("interrupted") {
            crate::output::warning(&s);
        }
    }
    if args.history {
        print_lines(
            report::history(state)?
                .iter()
                .map(crate::output::history_line),
        )?;
        return Ok(0);
    }
    let r = report::load(state, args.run.as_deref())?;
    if args.json {
        print_lines([serde_json::to_string_pretty(&r)?])?;
    } else if args.prometheus {
        let text = crate::output::prometheus(&r);
        print_lines(text.lines().map(String::from))?;
    } else {
        print_lines(
            crate::output::report_lines(&r)
                .iter()
                .map(|l| crate::output::printable(l)),
        )?;
    }
    Ok(0)
}

/// One node's line of the fleet view, from `reports/NODE/last.json` as
/// `disco serve` stored it. Every text in it came from the node: it is
/// printed through [`crate::output::printable`] (or as JSON strings).
#[derive(serde::Serialize)]
struct FleetNode {
    node: String,
    /// `false` when `last.json` is missing or does not parse; the fields
    /// below are then null.
    readable: bool,
    last_run: Option<String>,
    status: Option<String>,
    /// What the last dance merged (in noop: found); 0 for a failed dance
    /// that merged nothing.
    changes: Option<usize>,
    noop: Option<bool>,
    duration: Option<f64>,
    /// Seconds since `last_run`; null when it is not a timestamp.
    age: Option<u64>,
    stale: bool,
    pending_failed_actions: Option<usize>,
}

impl FleetNode {
    /// Failed, or anything but `ok`/`changed` (a node's own word for it
    /// is not trusted to spell success another way), or unreadable.
    fn failed(&self) -> bool {
        !matches!(self.status.as_deref(), Some("ok" | "changed"))
    }
}

/// `disco report --fleet --server DIR`: every node's last uploaded report,
/// as a table or (`--json`) one JSON document; exit 0 all fresh and ok, 1
/// one failed or unreadable, 2 one stale. With `--html DIR`, the site
/// instead, and exit 0 once it is written.
fn fleet(config: &Config, args: &crate::cli::ReportArgs) -> Result<i32> {
    let servers = config.require_servers()?;
    let ServerUri::Local(dir) = ServerUri::parse(&servers[0])? else {
        bail!("--fleet reads the reports on the server itself: give --server DIR (the served directory)");
    };
    let nodes = read_fleet(&dir.join("reports"), args.stale)?;
    let failed = nodes.iter().filter(|n| n.failed()).count();
    let stale = nodes.iter().filter(|n| n.stale).count();
    let code = if failed > 0 {
        1
    } else if stale > 0 {
        2
    } else {
        0
    };
    if let Some(out) = &args.html {
        let w = html::write(out, &dir, &nodes, &config.roll_up(false, true), args.stale)?;
        print_lines([format!(
            "wrote the fleet page to {}: {} node(s), {failed} failed, {stale} stale; {} node page(s)",
            out.display(),
            w.nodes,
            w.pages
        )])?;
        return Ok(0);
    }
    if args.json {
        let doc = serde_json::json!({
            "nodes": nodes,
            "failed": failed,
            "stale": stale,
            "max_age": args.stale.as_secs(),
            "exit_code": code,
        });
        print_lines([serde_json::to_string_pretty(&doc)?])?;
        return Ok(code);
    }
    print_lines(fleet_table(&nodes))?;
    Ok(code)
}

/// Every node's last report under `reports/NODE/last.json`, by node name;
/// stale when older than `stale` (or of no readable time).
fn read_fleet(reports: &Path, stale: std::time::Duration) -> Result<Vec<FleetNode>> {
    use crate::report::RunReport;
    let entries = std::fs::read_dir(reports).with_context(|| {
        format!(
            "no reports in {} (do nodes set report_upload = true?)",
            reports.display()
        )
    })?;
    let mut nodes = Vec::new();
    for e in entries.flatten() {
        let node = e.file_name().to_string_lossy().into_owned();
        let r: Option<RunReport> = std::fs::read(e.path().join("last.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(r) = r else {
            nodes.push(FleetNode {
                node,
                readable: false,
                last_run: None,
                status: None,
                changes: None,
                noop: None,
                duration: None,
                age: None,
                stale: false,
                pending_failed_actions: None,
            });
            continue;
        };
        let age = humantime::parse_rfc3339(&r.ended).ok().map(|t| {
            std::time::SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
        });
        nodes.push(FleetNode {
            node,
            readable: true,
            changes: Some(r.merged_changes()),
            noop: Some(r.noop),
            duration: Some(r.duration),
            age: age.map(|a| a.as_secs()),
            stale: age.is_none_or(|a| a > stale),
            pending_failed_actions: Some(r.pending_failed_actions),
            last_run: Some(r.ended),
            status: Some(r.status),
        });
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

/// The fleet as a table, a line a node, under a header.
fn fleet_table(nodes: &[FleetNode]) -> Vec<String> {
    use crate::output::printable;
    // Tabs too: a field must not push the next column about.
    let field = |s: &str| printable(s).replace('\t', "\\x09");
    let mut lines = vec![format!(
        "{:<24} {:<21} {:<8} {:>8} {:>9} {:>10} {:>7}",
        "node", "last run", "status", "changes", "duration", "age", "pending"
    )];
    for n in nodes {
        let node = field(&n.node);
        if !n.readable {
            lines.push(format!("{node:<24} (no readable report)"));
            continue;
        }
        let age = n.age.map_or("?".to_string(), |a| a.to_string());
        lines.push(format!(
            "{node:<24} {:<21} {:<8} {:>8} {:>8.2}s {:>9}s {:>7}{}",
            field(n.last_run.as_deref().unwrap_or_default()),
            field(n.status.as_deref().unwrap_or_default()),
            n.changes.unwrap_or_default(),
            n.duration.unwrap_or_default(),
            age,
            n.pending_failed_actions.unwrap_or_default(),
            if n.stale { "  STALE" } else { "" },
        ));
    }
    lines
}
