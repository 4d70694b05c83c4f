//! `disco publish SRC --root DIR`: makes a server tree available to nodes
//! atomically. SRC is copied into `DIR/snapshots/ID/` with the manifest of
//! its hash tree, then `DIR/current` is swapped to it by one rename, so a
//! node never fetches a half-edited tree. Old snapshots beyond `keep` are
//! pruned, except one a running `disco serve` still holds (it keeps a
//! shared lock on its snapshot for the whole session).

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::manifest::Manifest;
use super::PUBLISHED_MANIFEST;
use crate::output;

/// Noop: how many files of `src` differ from those `root/current` serves
/// (added, changed or removed), without publishing anything.
pub fn differing_files(src: &Path, root: &Path) -> Result<usize> {
    let manifest_of = |dir: &Path| -> Result<std::collections::BTreeMap<String, String>> {
        let mut m = Manifest::default();
        for sub in ["parameters", "modules"] {
            if dir.join(sub).is_dir() {
                m.add_tree(&dir.join(sub), sub, sub)?;
            }
        }
        Ok(m.files()
            .into_iter()
            .map(|(p, e)| (p, e.hash.clone()))
            .collect())
    };
    let new = manifest_of(src)?;
    let old = match fs::canonicalize(root.join("current")) {
        Ok(cur) => manifest_of(&cur)?,
        Err(_) => Default::default(),
    };
    let changed = new.iter().filter(|(p, h)| old.get(*p) != Some(h)).count();
    let removed = old.keys().filter(|p| !new.contains_key(*p)).count();
    Ok(changed + removed)
}

/// Makes everything of snapshot `tree` belong to the owner of the served
/// directory `root` (the user `disco serve` runs as), so a snapshot
/// published by root can be served. Nothing to do when they are the same.
fn give_to_owner_of(root: &Path, tree: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    let (uid, gid) = (owner.uid(), owner.gid());
    if uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    fn walk(p: &Path, uid: u32, gid: u32) -> Result<()> {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).with_context(|| {
            format!(
                "cannot give {} to the served directory's owner",
                p.display()
            )
        })?;
        if fs::symlink_metadata(p)?.is_dir() {
            for e in fs::read_dir(p)? {
                walk(&e?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    walk(tree, uid, gid)
}

/// Publishes `src` under `root`; returns the new snapshot id.
pub fn publish(src: &Path, root: &Path, keep: usize) -> Result<String> {
    for sub in ["parameters", "modules"] {
        if !src.join(sub).is_dir() {
            bail!(
                "{} is not a server tree: it has no {sub}/ directory",
                src.display()
            );
        }
    }
    let snapshots = root.join("snapshots");
    fs::create_dir_all(&snapshots)
        .with_context(|| format!("cannot create {}", snapshots.display()))?;
    let id = crate::run::new_run_id();
    let tmp = snapshots.join(format!(".tmp-{id}"));
    let result = (|| -> Result<()> {
        fs::create_dir(&tmp)?;
        let mut m = Manifest::default();
        let mut top = Vec::new();
        for sub in ["parameters", "modules"] {
            super::copy_tree(&src.join(sub), &tmp.join(sub), sub, u64::MAX, None)?;
            top.push(m.add_tree(&tmp.join(sub), sub, sub)?);
        }
        m.set_dir("", "", 0o755, top);
        fs::write(tmp.join(PUBLISHED_MANIFEST), serde_json::to_vec(&m)?)?;
        give_to_owner_of(root, &tmp)?;
        let dir = fs::File::open(&tmp)?;
        nix::unistd::syncfs(dir.as_raw_fd()).context("syncfs of the new snapshot")?;
        fs::rename(&tmp, snapshots.join(&id))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "cannot publish {} into {}",
            src.display(),
            snapshots.display()
        )));
    }
    let link_tmp = root.join(".current.tmp");
    let _ = fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(Path::new("snapshots").join(&id), &link_tmp)?;
    fs::rename(&link_tmp, root.join("current")).context("cannot swap current")?;
    fs::File::open(root).and_then(|d| d.sync_all())?;
    prune(&snapshots, &id, keep)?;
    Ok(id)
}

/// Removes the oldest snapshots beyond `keep`, skipping any a session holds.
fn prune(snapshots: &Path, newest: &str, keep: usize) -> Result<()> {
    let mut ids: Vec<String> = fs::read_dir(snapshots)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != newest)
        .collect();
    ids.sort();
    let excess = (ids.len() + 1).saturating_sub(keep.max(1));
    for id in ids.iter().take(excess) {
        let p = snapshots.join(id);
        let Ok(dir) = fs::File::open(&p) else {
            continue;
        };
        // SAFETY: flock on a descriptor we own.
        match unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } {
            0 => fs::remove_dir_all(&p).with_context(|| format!("cannot prune {}", p.display()))?,
            _ => output::info(&format!(
                "kept snapshot {id}: a session is still serving it"
            )),
        }
    }
    Ok(())
}
