//! `disco report`: the figures of the last (or a given) run, the history,
//! JSON, Prometheus text, and on the server the fleet's table.

use anyhow::{bail, Context, Result};

use super::print_lines;
use crate::config::Config;
use crate::transport::ServerUri;

pub fn run(config: &Config, args: &crate::cli::ReportArgs) -> Result<i32> {
    use crate::report::{self, RunReport};
    if args.fleet {
        let servers = config.require_servers()?;
        let ServerUri::Local(dir) = ServerUri::parse(&servers[0])? else {
            bail!("--fleet reads the reports on the server itself: give --server DIR (the served directory)");
        };
        let reports = dir.join("reports");
        let mut nodes: Vec<(String, Option<RunReport>)> = Vec::new();
        let entries = std::fs::read_dir(&reports).with_context(|| {
            format!(
                "no reports in {} (do nodes set report_upload = true?)",
                reports.display()
            )
        })?;
        for e in entries.flatten() {
            let node = e.file_name().to_string_lossy().into_owned();
            let r = std::fs::read(e.path().join("last.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            nodes.push((node, r));
        }
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut lines = vec![format!(
            "{:<24} {:<21} {:<8} {:>8} {:>9} {:>10}",
            "node", "last run", "status", "changes", "duration", "age"
        )];
        let (mut failed, mut stale_any) = (false, false);
        for (node, r) in nodes {
            match r {
                None => {
                    failed = true;
                    lines.push(format!("{node:<24} (no readable report)"))
                }
                Some(r) => {
                    let age = humantime::parse_rfc3339(&r.ended)
                        .ok()
                        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                        .unwrap_or_default();
                    let stale = if age > args.stale { "  STALE" } else { "" };
                    failed |= r.status == "failed";
                    stale_any |= age > args.stale;
                    lines.push(format!(
                        "{node:<24} {:<21} {:<8} {:>8} {:>8.2}s {:>9}s{stale}",
                        r.ended,
                        r.status,
                        r.change_count(),
                        r.duration,
                        age.as_secs()
                    ));
                }
            }
        }
        print_lines(lines)?;
        return Ok(if failed {
            1
        } else if stale_any {
            2
        } else {
            0
        });
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
