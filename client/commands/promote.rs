//! `disco promote`: makes the candidate current for every node, or pins
//! it for some (a canary), then prints which node runs which snapshot.
//! Before it acts it warns of what the fleet preview says of the nodes
//! it moves (`preview::preview`): those whose preview fails, those that
//! have not previewed the candidate. The links themselves are
//! `transport::candidate`'s.

use std::path::Path;

use anyhow::{bail, Result};

use crate::cli::PromoteArgs;
use crate::config::{Config, Source};
use crate::names::Name;
use crate::transport::candidate::{self, Promote};

/// Promotes the candidate of `--root` for all nodes, `--group`s or `--nodes`.
pub fn run(config: &Config, args: &PromoteArgs) -> Result<i32> {
    if !matches!(config.root.source, Source::Flag(_)) {
        bail!(
            "disco promote needs --root DIR, the served directory (it holds current and candidate)"
        );
    }
    let root = &config.root.value;
    let names = |raw: &[String], what: &str| -> Result<Vec<Name>> {
        let mut out: Vec<Name> = Vec::new();
        for r in raw {
            let n = Name::parse(r, format!("{what} '{r}'"))?;
            if !out.contains(&n) {
                out.push(n);
            }
        }
        Ok(out)
    };
    let which = if !args.groups.is_empty() {
        Promote::Groups(names(&args.groups, "--group")?)
    } else if !args.nodes.is_empty() {
        Promote::Nodes(names(&args.nodes, "--nodes")?)
    } else {
        Promote::All
    };
    let noop = config.noop.value;
    let done = candidate::promote_with(root, &which, noop, |id, moved| {
        warn_of_previews(root, id, moved)
    })?;
    let moved: Vec<&str> = done.moved.iter().map(|n| n.as_str()).collect();
    let would = if noop {
        "noop: would promote"
    } else {
        "promoted"
    };
    let line = match which {
        Promote::All => format!(
            "{would} the candidate snapshot {} for every node: {}/current {}, pins removed",
            done.candidate,
            root.display(),
            if noop { "would point to it" } else { "points to it" }
        ),
        _ => format!(
            "{would} the candidate snapshot {} for {} node(s): {} (pinned in {}/pinned/); the others keep current",
            done.candidate,
            moved.len(),
            moved.join(", "),
            root.display()
        ),
    };
    crate::output::info(&line);
    // Snapshot ids sort by the time they were published.
    if let Some(old) = done.replaced.as_ref().filter(|old| **old > done.candidate) {
        crate::output::warning(&format!(
            "the candidate {} is older than the current {old} it {}: what was published since is no longer served (publish it again if that was not meant)",
            done.candidate,
            if noop { "would replace" } else { "replaced" }
        ));
    }
    let width = done
        .nodes
        .keys()
        .map(|n| n.as_str().len())
        .max()
        .unwrap_or(0);
    let mut table = String::new();
    for (node, (id, pinned)) in &done.nodes {
        let pinned = if *pinned { "  pinned" } else { "" };
        table.push_str(&format!("{:<width$}  {id}{pinned}\n", node.as_str()));
    }
    crate::output::put(true, table.as_bytes());
    Ok(0)
}

/// Before a promotion acts (the links' lock held): one `warning:` line
/// per kind of problem the fleet preview of candidate `id` shows among
/// the nodes it moves (`moved`) — those whose preview of it fails, each
/// with its failing module, and those that have not reported one (none,
/// or of an older candidate). Only warnings: the admin decides.
fn warn_of_previews(root: &Path, id: &str, moved: &[Name]) {
    use crate::output::{printable, warning};
    use crate::preview::Outcome;
    let p = match crate::preview::preview(root) {
        Ok(p) if p.candidate == id => p,
        Ok(_) => return,
        Err(e) => {
            warning(&format!(
                "cannot read the previews of the candidate {id}: {e:#}"
            ));
            return;
        }
    };
    let moved = |n: &String| moved.iter().any(|m| m.as_str() == n);
    let mut failing: Vec<String> = Vec::new();
    for g in &p.groups {
        if let Outcome::Fails { module, .. } = &g.outcome {
            let module = module.as_deref().map_or("its dance".into(), printable);
            failing.extend(
                g.nodes
                    .iter()
                    .filter(|n| moved(n))
                    .map(|n| format!("{n} ({module})")),
            );
        }
    }
    failing.sort();
    let mut unseen: Vec<&str> = p
        .not_reported
        .iter()
        .chain(p.outdated.iter().map(|o| &o.node))
        .filter(|n| moved(n))
        .map(String::as_str)
        .collect();
    unseen.sort_unstable();
    if !failing.is_empty() {
        warning(&format!(
            "the preview of the candidate {id} fails on {} node(s) promoted: {} (`disco report --fleet --candidate` says why)",
            failing.len(),
            failing.join(", ")
        ));
    }
    if !unseen.is_empty() {
        warning(&format!(
            "{} node(s) promoted have not reported a preview of the candidate {id}: {}",
            unseen.len(),
            unseen.join(", ")
        ));
    }
}
