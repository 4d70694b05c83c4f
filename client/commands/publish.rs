//! `disco publish`: copies a server tree into a new snapshot and points
//! `current` (or, with `--candidate`, `candidate`) at it, atomically;
//! `--drop-candidate` removes the candidate link.

use std::path::Path;

use anyhow::{bail, Result};

use crate::cli::PublishArgs;
use crate::config::{Config, Source};
use crate::transport::{candidate, publish};

/// Publishes `args.src` under `--root` (or drops its candidate).
pub fn run(config: &Config, args: &PublishArgs) -> Result<i32> {
    if !matches!(config.root.source, Source::Flag(_)) {
        bail!(
            "disco publish needs --root DIR, the served directory (it gets snapshots/ and current)"
        );
    }
    let root = &config.root.value;
    let Some(src) = args.src.as_deref() else {
        return drop_candidate(root, config.noop.value);
    };
    let what = match args.candidate {
        true => "the candidate",
        false => "a new snapshot",
    };
    if config.noop.value {
        // What a real publish would refuse, noop refuses too.
        publish::check_served_dir(root)?;
        let n = publish::differing_files(src, root, &args.allow_link_to)?;
        crate::output::info(&format!(
            "noop: would publish {} as {what} of {}; {n} file(s) differ from current; nothing was changed",
            src.display(),
            root.display()
        ));
        return Ok(0);
    }
    let id = publish::publish(src, root, args.keep, &args.allow_link_to, args.candidate)?;
    if args.candidate {
        let current = candidate::read_link(root, candidate::CURRENT)
            .ok()
            .flatten()
            .map_or_else(
                || "no snapshot yet".into(),
                |c| format!("snapshot {}", c.id),
            );
        crate::output::info(&format!(
            "published {} as snapshot {id}, the candidate; {}/current ({current}) is unchanged",
            src.display(),
            root.display()
        ));
        canaries_note(root, &id);
        return Ok(0);
    }
    crate::output::info(&format!(
        "published {} as snapshot {id}; {}/current points to it",
        src.display(),
        root.display()
    ));
    pinned_note(root);
    Ok(0)
}

/// `--drop-candidate`: removes `root/candidate`, saying which it was.
fn drop_candidate(root: &Path, noop: bool) -> Result<i32> {
    if noop {
        let msg = match candidate::read_link(root, candidate::CANDIDATE)? {
            Some(c) => format!(
                "noop: would drop the candidate snapshot {}; nothing was changed",
                c.id
            ),
            None => format!("noop: {} has no candidate; nothing to drop", root.display()),
        };
        crate::output::info(&msg);
        return Ok(0);
    }
    let (dropped, unpinned) = candidate::drop_candidate(root)?;
    let nodes = unpinned
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let msg = match (dropped, unpinned.is_empty()) {
        (Some(id), true) => format!(
            "dropped the candidate snapshot {id} of {}; nodes no longer preview it",
            root.display()
        ),
        (Some(id), false) => format!(
            "dropped the candidate snapshot {id} of {}; nodes no longer preview it, and the {} canary node(s) pinned by a promotion run current again: {nodes}",
            root.display(),
            unpinned.len(),
        ),
        (None, false) => format!(
            "{} has no candidate; the {} canary node(s) pinned by a promotion run current again: {nodes}",
            root.display(),
            unpinned.len(),
        ),
        (None, true) => format!("{} has no candidate; nothing to drop", root.display()),
    };
    crate::output::info(&msg);
    Ok(0)
}

/// After a publish of a candidate: says which canaries a promotion of an
/// earlier candidate still pins to it (they neither run nor preview the
/// new one until promoted to it, or the candidate is dropped).
fn canaries_note(root: &Path, id: &str) {
    let Ok(pins) = candidate::pins(root) else {
        return;
    };
    let old: Vec<String> = pins
        .iter()
        .filter(|(_, l)| l.id != id)
        .map(|(n, l)| format!("{n} ({})", l.id))
        .collect();
    if !old.is_empty() {
        crate::output::warning(&format!(
            "{} canary node(s) stay pinned to an earlier candidate: {}; `disco promote --nodes …` moves them to this one, `disco publish --drop-candidate` back to current",
            old.len(),
            old.join(", ")
        ));
    }
}

/// After a publish of current: says which nodes a canary promotion still
/// pins elsewhere (they do not run the new current until `disco promote`).
fn pinned_note(root: &Path) {
    let Ok(pins) = candidate::pins(root) else {
        return;
    };
    if pins.is_empty() {
        return;
    }
    let list: Vec<String> = pins
        .iter()
        .map(|(n, l)| format!("{n} ({})", l.id))
        .collect();
    crate::output::info(&format!(
        "{} node(s) stay pinned by a canary promotion and do not run it: {}; a full `disco promote` or `disco publish --drop-candidate` ends the pins",
        pins.len(),
        list.join(", ")
    ));
}
