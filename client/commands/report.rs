//! `disco report`: the figures of the last (or a given) run, the history,
//! JSON, Prometheus text, and on the server the fleet's table (and, in
//! [`html`], its static site).

mod html;

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::print_lines;
use crate::config::Config;
use crate::output::printable;
use crate::preview::Outcome;
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
    /// The snapshot its last run ran (its current, or its pin).
    snapshot: Option<String>,
    /// The snapshot a canary promotion pins it to (`pinned/NODE`), if any.
    pinned: Option<String>,
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
    // On the server, no node config names a server: the served directory
    // is what --fleet needs, said as such.
    let servers = config.require_servers().map_err(|_| {
        anyhow::anyhow!(
            "--fleet reads the reports on the server itself: give --server DIR (the served directory, e.g. /srv/disco)"
        )
    })?;
    let ServerUri::Local(dir) = ServerUri::parse(&servers[0])? else {
        bail!("--fleet reads the reports on the server itself: give --server DIR (the served directory)");
    };
    if args.candidate {
        return candidate(config, &dir, args.json);
    }
    let mut nodes = read_fleet(&dir.join("reports"), args.stale)?;
    let pins = crate::transport::candidate::pins(&dir)?;
    for n in &mut nodes {
        n.pinned = crate::names::Name::parse(&n.node, "node")
            .ok()
            .and_then(|name| pins.get(&name))
            .map(|l| l.id.clone());
    }
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
            "wrote the fleet page to {}: {} node(s), {failed} failed, {stale} stale; {} node page(s){}",
            out.display(),
            w.nodes,
            w.pages,
            if w.candidate {
                "; the candidate's preview (candidate.html)"
            } else {
                ""
            }
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

/// `disco report --fleet --candidate --server DIR`: the preview of the
/// candidate ([`crate::preview`]) as text or (`--json`) one JSON
/// document; its exit code.
fn candidate(config: &Config, dir: &Path, json: bool) -> Result<i32> {
    let p = crate::preview::preview(dir)?;
    if json {
        print_lines([serde_json::to_string_pretty(&p)?])?;
        return Ok(p.exit_code);
    }
    let reported: usize = p.groups.iter().map(|g| g.nodes.len()).sum();
    print_lines([format!(
        "candidate {}: {} node(s), {reported} reported, {} failing",
        printable(&p.candidate),
        p.nodes.len(),
        p.failed
    )])?;
    let roll = config.roll_up(false, true);
    for (i, g) in p.groups.iter().enumerate() {
        let on = format!("{} node(s): {}", g.nodes.len(), g.nodes.join(", "));
        match &g.outcome {
            Outcome::Fails { module, error } => {
                let at = module.as_deref().map_or("the dance".into(), printable);
                print_lines([
                    format!("group {}: fails on {on}", i + 1),
                    format!("  {at}: {}", printable(error)),
                ])?;
            }
            Outcome::Changes { changes: 0, .. } => {
                print_lines([format!("group {}: no change on {on}", i + 1)])?;
            }
            Outcome::Changes { changes, modules } => {
                print_lines([format!("group {}: {changes} change(s) on {on}", i + 1)])?;
                for m in modules {
                    group_module(m, &roll)?;
                }
            }
        }
    }
    if !p.not_reported.is_empty() {
        print_lines([format!(
            "not reported yet: {} node(s): {}",
            p.not_reported.len(),
            p.not_reported.join(", ")
        )])?;
    }
    if !p.outdated.is_empty() {
        let olds: Vec<String> = p
            .outdated
            .iter()
            .map(|o| {
                format!(
                    "{} (candidate {}, {})",
                    o.node,
                    printable(&o.candidate),
                    printable(&o.ended)
                )
            })
            .collect();
        print_lines([format!(
            "reported an older candidate: {} node(s): {}",
            olds.len(),
            olds.join(", ")
        )])?;
    }
    Ok(p.exit_code)
}

/// One module's changes in a group, as `disco diff` prints a run's: its
/// count, the changes rolled up, the summaries, what it left pending.
fn group_module(m: &crate::preview::ModuleChanges, roll: &crate::output::RollUp) -> Result<()> {
    let count = m.changes.len()
        + m.summarised
            .iter()
            .map(|s| s.changes as usize)
            .sum::<usize>();
    print_lines([format!("info: {}: {count} change(s)", printable(&m.name))])?;
    crate::output::changes(&m.changes, roll);
    print_lines(
        m.summarised
            .iter()
            .map(|s| format!("info: {}", printable(&s.line())))
            .chain(
                m.pending
                    .iter()
                    .map(|p| format!("info: {}: pending: {}", printable(&m.name), printable(p))),
            ),
    )
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
                snapshot: None,
                pinned: None,
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
            snapshot: Some(r.snapshot.clone()),
            pinned: None,
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
    // The node and snapshot columns as wide as their longest field (a
    // snapshot id is 22 characters once a pid has 5 digits).
    let width = |head: &str, get: &dyn Fn(&FleetNode) -> Option<&str>| {
        nodes
            .iter()
            .filter_map(|n| get(n).map(|s| field(s).chars().count()))
            .chain([head.len()])
            .max()
            .unwrap_or(0)
    };
    let wn = width("node", &|n| Some(&n.node)).max(24);
    let shown_snapshot = |n: &FleetNode| {
        let s = field(n.snapshot.as_deref().unwrap_or_default());
        match &n.pinned {
            Some(p) if Some(p.as_str()) == n.snapshot.as_deref() => format!("{s} (pinned)"),
            Some(p) => format!("{s} (pinned to {})", field(p)),
            None => s,
        }
    };
    let ws = nodes
        .iter()
        .map(|n| shown_snapshot(n).chars().count())
        .chain(["snapshot".len(), 21])
        .max()
        .unwrap_or(21);
    let mut lines = vec![format!(
        "{:<wn$} {:<ws$} {:<21} {:<8} {:>8} {:>9} {:>10} {:>7}",
        "node", "snapshot", "last run", "status", "changes", "duration", "age", "pending"
    )];
    for n in nodes {
        let node = field(&n.node);
        if !n.readable {
            lines.push(format!("{node:<wn$} (no readable report)"));
            continue;
        }
        let age = n.age.map_or("?".to_string(), |a| a.to_string());
        lines.push(format!(
            "{node:<wn$} {:<ws$} {:<21} {:<8} {:>8} {:>8.2}s {:>9}s {:>7}{}",
            shown_snapshot(n),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot id of 22 characters (a 5-digit pid) kept the next
    /// columns one to the right of the header's (found by a trial).
    #[test]
    fn the_fleet_table_columns_line_up_whatever_the_snapshot_id() {
        let node = |name: &str, snapshot: &str| FleetNode {
            node: name.into(),
            readable: true,
            snapshot: Some(snapshot.into()),
            pinned: None,
            last_run: Some("2026-12-06T01:00:00Z".into()),
            status: Some("ok".into()),
            changes: Some(0),
            noop: Some(false),
            duration: Some(1.0),
            age: Some(5),
            stale: false,
            pending_failed_actions: Some(0),
        };
        let lines = fleet_table(&[
            node("web1", "20261206T011229Z-15192"),
            node("a-rather-long-node-name.example.org", "-"),
        ]);
        let at = |l: &str| {
            l.find("last run")
                .or_else(|| l.find("2026-12-06T01"))
                .unwrap()
        };
        assert!(lines.iter().all(|l| at(l) == at(&lines[0])), "{lines:#?}");
    }
}
