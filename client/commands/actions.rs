//! `disco actions`: lists the deferred actions and handlers that wait to
//! run again (failed, or cut by disco's death); `forget` drops them, and
//! saves who dropped what in the report history. The list and its journal
//! are [`crate::actions`]'s; this file only prints and asks.

use anyhow::{bail, Result};

use super::print_lines;
use crate::actions::{self, Listed};
use crate::cli::{ActionsAction, ActionsArgs};
use crate::config::Config;
use crate::output;

pub fn run(config: &Config, args: &ActionsArgs) -> Result<i32> {
    let state = &config.state_dir.value;
    match &args.action {
        None => {
            let listed = actions::list(state)?;
            if listed.is_empty() {
                output::info("nothing waits to run again: no deferred action or handler failed");
                return Ok(0);
            }
            print_lines(listed.iter().flat_map(lines))?;
            output::info(&format!(
                "{} deferred action(s) or handler(s) run again at the end of the next dance; `disco actions forget ID` drops one, `--all` every one",
                listed.len()
            ));
            Ok(0)
        }
        Some(ActionsAction::Forget { ids, all, .. }) => forget(config, ids, *all),
    }
}

/// The two lines of one item: `ID  MODULE  what`, then its record.
fn lines(l: &Listed) -> [String; 2] {
    let record = match &l.failure {
        None => "failed, no record of when".to_string(),
        Some(f) if f.times == 0 => format!("queued {}; {}", f.first, f.error),
        Some(f) => format!(
            "failed {} time(s), first {}, last {}: {}",
            f.times, f.first, f.last, f.error
        ),
    };
    [
        format!("{}  {}  {}", l.id, l.module, l.what),
        format!("        {}", crate::output::printable(&record)),
    ]
}

fn forget(config: &Config, ids: &[String], all: bool) -> Result<i32> {
    let state = &config.state_dir.value;
    let noop = config.noop.value;
    if !noop {
        super::require_root("disco actions forget", "it edits disco's state dir")?;
    }
    // Not while a dance runs them.
    let _lock = crate::cron::take_lock(config, false)?;
    let listed = actions::list(state)?;
    let chosen: Vec<String> = if all {
        listed.iter().map(|l| l.id.clone()).collect()
    } else {
        let mut wrong: Vec<&str> = ids
            .iter()
            .filter(|id| !listed.iter().any(|l| &l.id == *id))
            .map(String::as_str)
            .collect();
        wrong.dedup();
        if !wrong.is_empty() {
            let exist = if listed.is_empty() {
                "nothing waits to run again".to_string()
            } else {
                format!(
                    "pending: {}",
                    listed
                        .iter()
                        .map(|l| format!("{} ({} {})", l.id, l.module, l.what))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            bail!(
                "no pending action or handler has ID {}; {exist}",
                wrong.join(", ")
            );
        }
        ids.to_vec()
    };
    let shown = |l: &Listed| format!("{} ({} {})", l.id, l.module, l.what);
    if noop {
        for l in listed.iter().filter(|l| chosen.contains(&l.id)) {
            output::info(&format!("noop: would forget {}", shown(l)));
        }
        output::info("noop: nothing was dropped");
        return Ok(0);
    }
    let started = now();
    let dropped = actions::forget(state, &chosen)?;
    for l in &dropped {
        output::info(&format!("forgot {}", shown(l)));
    }
    if dropped.is_empty() {
        output::info("nothing waits to run again: nothing to forget");
        return Ok(0);
    }
    let left = actions::list(state)?.len();
    let report = crate::report::RunReport {
        id: crate::run::new_run_id(),
        node: config.node.value.to_string(),
        root: config.root.value.clone(),
        started,
        ended: now(),
        status: "forgot".into(),
        forgot: dropped.iter().map(shown).collect(),
        by: Some(who()),
        pending_failed_actions: left,
        ..Default::default()
    };
    crate::report::save_entry(state, &report, config.report_history.value)?;
    Ok(0)
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Who runs this: the user's name, and the one sudo was run by.
fn who() -> String {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"));
    match std::env::var("SUDO_USER") {
        Ok(s) if !s.is_empty() && s != name => format!("{name} (sudo by {s})"),
        _ => name,
    }
}
