//! Candidates, pins and promotion on the server (DESIGN §4): the links of
//! a served directory that say which snapshot each node runs.
//!
//! - `ROOT/current` → `snapshots/ID`: what every node runs, unless pinned.
//! - `ROOT/candidate` → `snapshots/ID`: a snapshot offered for preview
//!   (`disco publish SRC --candidate`); nodes run it only when promoted.
//! - `ROOT/pinned/NODE` → `../snapshots/ID`: that node's own current,
//!   written by a canary promotion (`disco promote --group G`/`--nodes`).
//!
//! Every link is replaced by one rename of a temporary link, so a session
//! resolving it sees the old snapshot or the new one, never neither. The
//! commands that change links (`publish`, `promote`, `--drop-candidate`)
//! hold an exclusive flock on the served directory, so a promotion never
//! renames a candidate that a concurrent publish just replaced.
//!
//! This module owns the links; `publish.rs` owns making snapshots (and
//! prunes none of [`linked_ids`]); `serve.rs` resolves a session's
//! snapshot through [`node_link`]. It does not own the snapshots' content
//! beyond reading which nodes and groups a tree holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::names::Name;
use crate::tree::ServerTree;

/// The link to the candidate snapshot, beside `current`.
pub const CANDIDATE: &str = "candidate";
/// The link every unpinned node runs.
pub const CURRENT: &str = "current";
/// The directory of per-node pins.
pub const PINNED: &str = "pinned";

/// The exclusive lock of the served directory's links, held while alive.
pub struct LinksLock(#[allow(dead_code)] fs::File);

/// Takes the exclusive lock of `root`'s links (waits for another publish
/// or promote to finish): a flock on the served directory itself, so no
/// lock file is left for an owner to trip on.
pub fn lock(root: &Path) -> Result<LinksLock> {
    let f = fs::File::open(root)
        .with_context(|| format!("cannot open the served directory {}", root.display()))?;
    // SAFETY: flock on a descriptor we own; released when it is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "cannot lock {}: {}",
            root.display(),
            io::Error::last_os_error()
        );
    }
    Ok(LinksLock(f))
}

/// A link of the served directory, resolved: the snapshot it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    /// The snapshot's id (its directory name under `snapshots/`).
    pub id: String,
    /// Its real path.
    pub path: PathBuf,
}

/// The snapshot `root/rel` links to; `Ok(None)` when there is no such
/// link. A link that is not a symlink, points nowhere or leads outside
/// `root/snapshots/` is an error naming it.
pub fn read_link(root: &Path, rel: &str) -> Result<Option<Linked>> {
    let link = root.join(rel);
    let target = match fs::read_link(&link) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            bail!("{} is not a symlink to a snapshot", link.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", link.display())),
    };
    let parent = link.parent().unwrap_or(root);
    let path = fs::canonicalize(parent.join(&target))
        .with_context(|| format!("{} points nowhere", link.display()))?;
    let snapshots = fs::canonicalize(root.join("snapshots"))
        .with_context(|| format!("{} has no snapshots/ beside it", link.display()))?;
    if path.parent() != Some(snapshots.as_path()) {
        bail!("{} points outside {}", link.display(), snapshots.display());
    }
    let id = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Some(Linked { id, path }))
}

/// The link a session of `node` runs as its current: `pinned/NODE` when
/// the node is pinned, else `current`. A pin that cannot be looked at
/// (`pinned/` unreadable) is an error, never a silent `current`.
pub fn node_link(root: &Path, node: &Name) -> Result<String> {
    let pin = format!("{PINNED}/{node}");
    match fs::symlink_metadata(root.join(&pin)) {
        Ok(_) => Ok(pin),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(CURRENT.into()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", root.join(&pin).display())),
    }
}

/// Points `root/rel` at snapshot `id` (a relative link, as `current`'s):
/// a temporary link renamed over it, then the directory synced.
fn set_link(root: &Path, rel: &str, id: &str) -> Result<()> {
    let link = root.join(rel);
    let dir = link.parent().unwrap_or(root);
    let up = if dir == root { "" } else { "../" };
    let target = PathBuf::from(format!("{up}snapshots/{id}"));
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp)
        .with_context(|| format!("cannot make {}", tmp.display()))?;
    fs::rename(&tmp, &link).with_context(|| format!("cannot swap {}", link.display()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Points `root/current` at snapshot `id`.
pub fn set_current(root: &Path, id: &str) -> Result<()> {
    set_link(root, CURRENT, id)
}

/// Points `root/candidate` at snapshot `id` (replacing an older candidate).
pub fn set_candidate(root: &Path, id: &str) -> Result<()> {
    set_link(root, CANDIDATE, id)
}

/// Removes `root/candidate` and every pin (each is a canary of this
/// candidate or of one it replaced: backing out sends every canary back
/// to current): the id the candidate named (None when there was none)
/// and the nodes unpinned.
pub fn drop_candidate(root: &Path) -> Result<(Option<String>, Vec<Name>)> {
    let _lock = lock(root)?;
    let old = read_link(root, CANDIDATE)?;
    if old.is_some() {
        fs::remove_file(root.join(CANDIDATE))
            .with_context(|| format!("cannot remove {}", root.join(CANDIDATE).display()))?;
        fs::File::open(root).and_then(|d| d.sync_all())?;
    }
    let mut unpinned = Vec::new();
    for node in pins(root)?.into_keys() {
        let p = root.join(PINNED).join(node.as_str());
        fs::remove_file(&p).with_context(|| format!("cannot remove the pin {}", p.display()))?;
        unpinned.push(node);
    }
    Ok((old.map(|o| o.id), unpinned))
}

/// Every pin: node → the snapshot it is pinned to. A pin that does not
/// resolve (its snapshot gone, a stray file) is an error naming it.
pub fn pins(root: &Path) -> Result<BTreeMap<Name, Linked>> {
    let dir = root.join(PINNED);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = BTreeMap::new();
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        let raw = e.file_name().to_string_lossy().into_owned();
        if raw.starts_with('.') {
            continue;
        }
        let node = Name::parse(&raw, format!("{}/{raw}", dir.display()))?;
        if let Some(l) = read_link(root, &format!("{PINNED}/{raw}"))? {
            out.insert(node, l);
        }
    }
    Ok(out)
}

/// The snapshot ids a link names (current, candidate, every pin): never
/// pruned. Links that do not resolve name nothing.
pub fn linked_ids(root: &Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for rel in [CURRENT, CANDIDATE] {
        if let Ok(Some(l)) = read_link(root, rel) {
            ids.insert(l.id);
        }
    }
    if let Ok(entries) = fs::read_dir(root.join(PINNED)) {
        for e in entries.flatten() {
            let rel = format!("{PINNED}/{}", e.file_name().to_string_lossy());
            if let Ok(Some(l)) = read_link(root, &rel) {
                ids.insert(l.id);
            }
        }
    }
    ids
}

/// Which nodes a promotion moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promote {
    /// Every node: the candidate becomes `current`, pins removed.
    All,
    /// The nodes of these groups (directly or through another group).
    Groups(Vec<Name>),
    /// These nodes.
    Nodes(Vec<Name>),
}

/// Where each node stands after a promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promoted {
    /// The candidate promoted.
    pub candidate: String,
    /// The nodes this promotion moved (all of them for a full one).
    pub moved: Vec<Name>,
    /// Every node of the candidate and of current, and pinned ones: the
    /// snapshot it now runs and whether that is a pin.
    pub nodes: BTreeMap<Name, (String, bool)>,
    /// A full promotion: the snapshot `current` named before.
    pub replaced: Option<String>,
}

/// Promotes the candidate of `root` (DESIGN §4): for all nodes, renames
/// `candidate` over `current` and removes every pin; for groups or
/// nodes, pins each of them to the candidate. Idempotent: pinning a node
/// already pinned there changes nothing. Errors: no candidate, a group
/// with no node, a name that is no node of the candidate. `noop`: the
/// same answer, nothing changed.
pub fn promote(root: &Path, which: &Promote, noop: bool) -> Result<Promoted> {
    promote_with(root, which, noop, |_, _| ())
}

/// [`promote`], calling `before` with the candidate's id and the nodes
/// it moves once they are known and before anything changes, the links'
/// lock held (`disco promote` warns there of what the previews say).
pub fn promote_with(
    root: &Path,
    which: &Promote,
    noop: bool,
    before: impl FnOnce(&str, &[Name]),
) -> Result<Promoted> {
    let _lock = lock(root)?;
    let Some(candidate) = read_link(root, CANDIDATE)? else {
        bail!(
            "no candidate is published in {}: disco publish SRC --root {} --candidate first",
            root.display(),
            root.display()
        );
    };
    let tree = ServerTree::open(&candidate.path)
        .with_context(|| format!("the candidate snapshot {}", candidate.id))?;
    let nodes = nodes_of(&tree, &candidate.path)
        .with_context(|| format!("the candidate snapshot {}", candidate.id))?;
    let moved = match which {
        Promote::All => nodes.clone(),
        Promote::Groups(groups) => members(&tree, &nodes, groups, &candidate.id)?,
        Promote::Nodes(wanted) => {
            known(&tree, &nodes, wanted, &candidate.id)?;
            wanted.clone()
        }
    };
    before(&candidate.id, &moved);
    let replaced = match which {
        Promote::All => read_link(root, CURRENT)?.map(|c| c.id),
        _ => None,
    };
    let mut standing = standing(root, nodes)?;
    if noop {
        for (n, runs) in standing.iter_mut() {
            if *which == Promote::All || moved.contains(n) {
                *runs = (candidate.id.clone(), *which != Promote::All);
            }
        }
        return Ok(Promoted {
            candidate: candidate.id,
            moved,
            nodes: standing,
            replaced,
        });
    }
    match which {
        Promote::All => {
            fs::rename(root.join(CANDIDATE), root.join(CURRENT)).with_context(|| {
                format!(
                    "cannot rename the candidate over {}/current",
                    root.display()
                )
            })?;
            fs::File::open(root).and_then(|d| d.sync_all())?;
            remove_pins(root)?;
        }
        _ => pin(root, &moved, &candidate.id)?,
    }
    let nodes = standing.into_keys().collect();
    Ok(Promoted {
        candidate: candidate.id,
        moved,
        nodes: self::standing(root, nodes)?,
        replaced,
    })
}

/// Refuses a name of `wanted` that is no node of the candidate (`nodes`
/// of `tree`, snapshot `id`): a group, or nothing at all.
fn known(tree: &ServerTree, nodes: &[Name], wanted: &[Name], id: &str) -> Result<()> {
    for n in wanted {
        if nodes.contains(n) {
            continue;
        }
        match tree.layer_dir(n) {
            Ok(Some(_)) => bail!(
                "'{n}' is a group in the candidate snapshot {id}, not a node: use --group {n}"
            ),
            _ => bail!("unknown node '{n}': the candidate snapshot {id} has no parameters/{n}"),
        }
    }
    Ok(())
}

/// The nodes of the tree at `dir`: its `parameters/*` entries that no
/// layer lists as a group (as `disco lint` decides).
fn nodes_of(tree: &ServerTree, dir: &Path) -> Result<Vec<Name>> {
    let mut layers = Vec::new();
    let params = dir.join("parameters");
    for e in fs::read_dir(&params).with_context(|| format!("cannot read {}", params.display()))? {
        let e = e.with_context(|| format!("cannot read {}", params.display()))?;
        let raw = e.file_name().to_string_lossy().into_owned();
        if let Ok(n) = Name::parse(&raw, "a layer") {
            layers.push(n);
        }
    }
    layers.sort();
    Ok(tree.nodes(&layers))
}

/// The nodes among `nodes` in any of `groups` (directly or through
/// another group); a group with no node is an error.
fn members(tree: &ServerTree, nodes: &[Name], groups: &[Name], id: &str) -> Result<Vec<Name>> {
    let mut chosen = BTreeSet::new();
    for g in groups {
        let mut found = false;
        for n in nodes {
            let spec = tree
                .node(n)
                .with_context(|| format!("the candidate snapshot {id}: node {n}"))?;
            if spec.layers.iter().any(|l| l == g && l != n) {
                chosen.insert(n.clone());
                found = true;
            }
        }
        if !found && nodes.contains(g) {
            bail!("'{g}' is a node in the candidate snapshot {id}, not a group: use --nodes {g}");
        }
        if !found {
            bail!("no node of the candidate snapshot {id} is in group '{g}' (parameters/NODE/groups/{g})");
        }
    }
    Ok(chosen.into_iter().collect())
}

/// Pins each of `nodes` to snapshot `id` (`pinned/NODE`, one rename each).
/// `pinned/` is 0700 and, run as root, the served directory's owner's
/// (the user `disco serve` runs as must read it).
fn pin(root: &Path, nodes: &[Name], id: &str) -> Result<()> {
    let dir = root.join(PINNED);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("cannot create {}", dir.display()))
        }
        _ => {}
    }
    let owner = fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    let have =
        fs::symlink_metadata(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if (have.uid(), have.gid()) != (owner.uid(), owner.gid()) {
        std::os::unix::fs::lchown(&dir, Some(owner.uid()), Some(owner.gid())).with_context(
            || {
                format!(
                    "cannot give {} to the served directory's owner",
                    dir.display()
                )
            },
        )?;
    }
    for n in nodes {
        let rel = format!("{PINNED}/{n}");
        if read_link(root, &rel)
            .ok()
            .flatten()
            .is_some_and(|l| l.id == id)
        {
            continue;
        }
        set_link(root, &rel, id)?;
    }
    Ok(())
}

/// Removes every pin (after a full promotion).
fn remove_pins(root: &Path) -> Result<()> {
    let dir = root.join(PINNED);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for e in entries {
        let p = e
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        fs::remove_file(&p).with_context(|| format!("cannot remove the pin {}", p.display()))?;
    }
    fs::File::open(&dir).and_then(|d| d.sync_all())?;
    Ok(())
}

/// What each node runs now: `nodes` (the candidate's), current's nodes
/// and every pinned node, each with its snapshot and whether it is pinned.
fn standing(root: &Path, mut nodes: Vec<Name>) -> Result<BTreeMap<Name, (String, bool)>> {
    let current = read_link(root, CURRENT)?;
    if let Some(c) = &current {
        if let Ok(tree) = ServerTree::open(&c.path) {
            nodes.extend(nodes_of(&tree, &c.path).unwrap_or_default());
        }
    }
    let pins = pins(root)?;
    nodes.extend(pins.keys().cloned());
    let mut out = BTreeMap::new();
    for n in nodes {
        let runs = match pins.get(&n) {
            Some(p) => (p.id.clone(), true),
            None => (current.as_ref().map_or("-".into(), |c| c.id.clone()), false),
        };
        out.insert(n, runs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_trusted_only_into_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("snapshots/A")).unwrap();
        fs::create_dir_all(root.join("elsewhere/B")).unwrap();
        set_current(root, "A").unwrap();
        assert_eq!(read_link(root, CURRENT).unwrap().unwrap().id, "A");
        assert_eq!(read_link(root, CANDIDATE).unwrap(), None);
        std::os::unix::fs::symlink("elsewhere/B", root.join(CANDIDATE)).unwrap();
        let e = read_link(root, CANDIDATE).unwrap_err().to_string();
        assert!(e.contains("points outside"), "{e}");
        fs::remove_file(root.join(CANDIDATE)).unwrap();
        std::os::unix::fs::symlink("snapshots/A/..", root.join(CANDIDATE)).unwrap();
        let e = read_link(root, CANDIDATE).unwrap_err().to_string();
        assert!(e.contains("points outside"), "{e}");
        fs::remove_file(root.join(CANDIDATE)).unwrap();
        fs::write(root.join(CANDIDATE), "").unwrap();
        let e = read_link(root, CANDIDATE).unwrap_err().to_string();
        assert!(e.contains("is not a symlink to a snapshot"), "{e}");
        fs::create_dir(root.join(PINNED)).unwrap();
        set_link(root, &format!("{PINNED}/n"), "A").unwrap();
        assert_eq!(
            fs::read_link(root.join("pinned/n")).unwrap(),
            Path::new("../snapshots/A")
        );
        let pins = pins(root).unwrap();
        assert_eq!(pins.len(), 1);
        assert_eq!(pins.values().next().unwrap().id, "A");
    }
}
