//! `disco publish SRC --root DIR`: makes a server tree available to nodes
//! atomically. SRC is copied into `DIR/snapshots/ID/` with the manifest of
//! its hash tree, then `DIR/current` is swapped to it by one rename, so a
//! node never fetches a half-edited tree. Old snapshots beyond `keep` are
//! pruned, except one a running `disco serve` still holds (it keeps a
//! shared lock on its snapshot for the whole session).
//!
//! A snapshot is readable by the served directory's owner only — the user
//! `disco serve` runs as, the one reader it has: directories 0700, files
//! 0600 (0700 when executable, the one bit a node uses). Publishing into a
//! served directory every local account may enter is refused, and
//! snapshots an older disco left with looser modes are made private too.
//!
//! Publish never leaves SRC: a top-level `parameters`, `modules` or
//! `recipients` symlink is refused unless the admin names its target
//! (`--allow-link-to`), symlinks below are copied as symlinks, and a file
//! with a hard link outside SRC is refused. Run as root for a served
//! directory another user owns, publish reads SRC and writes the
//! snapshot as that owner (effective uid, gid and groups), so the kernel
//! refuses any file the owner could not read before — the snapshot can
//! never hand the serving user (and its nodes) a root-only file.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::candidate;
use super::manifest::Manifest;
use super::PUBLISHED_MANIFEST;
use crate::output;

/// Noop: how many files of `src` differ from those `root/current` serves
/// (added, changed or removed), without publishing anything.
pub fn differing_files(src: &Path, root: &Path, allowed: &[PathBuf]) -> Result<usize> {
    crate::tree::check_top_links(src, allowed)?;
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

/// Refuses a served directory that lets every local account in (any
/// "other" permission bit): its snapshots would be theirs to copy. A
/// directory that does not exist yet is fine (publish makes it 0700).
pub fn check_served_dir(root: &Path) -> Result<()> {
    match fs::metadata(root) {
        Ok(m) if m.mode() & 0o007 != 0 => bail!(
            "{} is open to every local account (mode {:04o}): chmod 0700 {} and publish again",
            root.display(),
            m.mode() & 0o7777,
            root.display()
        ),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", root.display())),
    }
}

/// The private mode of a snapshot entry with mode `mode`: 0700 for a
/// directory or an executable file, 0600 for any other file.
fn private_mode(is_dir: bool, mode: u32) -> u32 {
    if is_dir || mode & 0o111 != 0 {
        0o700
    } else {
        0o600
    }
}

/// Whose a snapshot must be: the owner of the served directory `root` (the
/// user `disco serve` runs as), when that is not who publishes (root).
fn owner_to_give(root: &Path) -> Result<Option<(u32, u32)>> {
    let owner = fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    Ok((owner.uid() != nix::unistd::geteuid().as_raw()).then(|| (owner.uid(), owner.gid())))
}

/// Makes `p` (never followed when a symlink) and everything below it
/// private ([`private_mode`]) and, with `owner`, that owner's.
fn make_private(p: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let meta = fs::symlink_metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
    if let Some((uid, gid)) = owner.filter(|&o| o != (meta.uid(), meta.gid())) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).with_context(|| {
            format!(
                "cannot give {} to the served directory's owner",
                p.display()
            )
        })?;
    }
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        for e in fs::read_dir(p).with_context(|| format!("cannot read {}", p.display()))? {
            make_private(&e?.path(), owner)?;
        }
    }
    // Last, so a directory is private only once all it holds is: a walk
    // cut short is done again by the next publish.
    let want = private_mode(meta.is_dir(), meta.mode());
    if meta.mode() & 0o7777 != want {
        fs::set_permissions(p, fs::Permissions::from_mode(want))
            .with_context(|| format!("cannot set mode of {}", p.display()))?;
    }
    Ok(())
}

/// The manifest of the snapshot at `dir`, from what is on disk there.
fn manifest_of_snapshot(dir: &Path) -> Result<Manifest> {
    let mut m = Manifest::default();
    let mut top = Vec::new();
    for sub in ["parameters", "modules"] {
        top.push(m.add_tree(&dir.join(sub), sub, sub)?);
    }
    m.set_dir("", "", 0o700, top);
    Ok(m)
}

/// Makes the served directory (when it does not exist yet) and its
/// `snapshots/`, both private and the served directory's owner's.
fn make_snapshots_dir(root: &Path) -> Result<std::path::PathBuf> {
    if !root.exists() {
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(root) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("cannot create {}", root.display()))
            }
            _ => {}
        }
    }
    let snapshots = root.join("snapshots");
    match fs::DirBuilder::new().mode(0o700).create(&snapshots) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("cannot create {}", snapshots.display()))
        }
        _ => {}
    }
    let meta =
        fs::metadata(&snapshots).with_context(|| format!("cannot read {}", snapshots.display()))?;
    if let Some((uid, gid)) = owner_to_give(root)? {
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::chown(&snapshots, Some(uid), Some(gid)).with_context(|| {
                format!(
                    "cannot give {} to the served directory's owner",
                    snapshots.display()
                )
            })?;
        }
    }
    if meta.mode() & 0o7777 != 0o700 {
        fs::set_permissions(&snapshots, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set mode of {}", snapshots.display()))?;
    }
    Ok(snapshots)
}

/// Refuses a regular file of `src`'s top directories with a hard link
/// outside them (more links than the walk finds inside): its content is
/// some other file's, which publish must not hand out. Symlinks are never
/// followed (the top directories were checked by
/// [`crate::tree::check_top_links`]).
fn check_hard_links(src: &Path) -> Result<()> {
    fn walk(
        p: &Path,
        shown: &str,
        depth: usize,
        seen: &mut HashMap<(u64, u64), (u64, u64, String)>,
    ) -> Result<()> {
        if depth > crate::fsutil::MAX_DEPTH {
            bail!(
                "{shown}: more than {} levels of directories",
                crate::fsutil::MAX_DEPTH
            );
        }
        let mut names: Vec<_> = fs::read_dir(p)
            .with_context(|| format!("cannot read {shown}"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read {shown}"))?;
        names.sort();
        for n in names {
            let child = p.join(&n);
            let shown = format!("{shown}/{}", crate::fsutil::shown(Path::new(&n)));
            let m = fs::symlink_metadata(&child).with_context(|| format!("cannot read {shown}"))?;
            if m.is_dir() {
                walk(&child, &shown, depth + 1, seen)?;
            } else if m.is_file() && m.nlink() > 1 {
                seen.entry((m.dev(), m.ino()))
                    .or_insert((m.nlink(), 0, shown))
                    .1 += 1;
            }
        }
        Ok(())
    }
    let mut seen = HashMap::new();
    for sub in crate::tree::TOP_DIRS {
        if src.join(sub).is_dir() {
            walk(&src.join(sub), sub, 0, &mut seen)?;
        }
    }
    let mut outside: Vec<_> = seen.into_values().filter(|(n, i, _)| i < n).collect();
    outside.sort_by(|a, b| a.2.cmp(&b.2));
    if let Some((links, inside, shown)) = outside.first() {
        bail!(
            "{shown} is a hard link to a file outside {} ({links} links, {inside} inside): publish copies no file that has a name elsewhere; replace it with a copy",
            src.display()
        );
    }
    Ok(())
}

/// Publish running as root, reading the source and writing the snapshot
/// as the served directory's owner (effective ids and groups only: the
/// saved root uid switches back in [`AsOwner::restore`]).
struct AsOwner {
    egid: nix::unistd::Gid,
    groups: Vec<nix::unistd::Gid>,
    restored: bool,
}

impl AsOwner {
    /// Becomes `owner` when running as root for another owner; `None`
    /// otherwise (who runs publish already is the owner, or cannot chown).
    fn become_owner(owner: Option<(u32, u32)>) -> Result<Option<(AsOwner, String)>> {
        use nix::unistd::{self, Gid, Uid, User};
        let Some((uid, gid)) = owner else {
            return Ok(None);
        };
        if !unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let name = user.as_ref().map_or_else(
            || format!("uid {uid}"),
            |u| format!("{} (uid {uid})", u.name),
        );
        let groups = user
            .and_then(|u| std::ffi::CString::new(u.name).ok())
            .and_then(|n| unistd::getgrouplist(&n, Gid::from_raw(gid)).ok())
            .unwrap_or_else(|| vec![Gid::from_raw(gid)]);
        let saved = AsOwner {
            egid: unistd::getegid(),
            groups: unistd::getgroups().context("cannot read publish's own groups")?,
            restored: false,
        };
        let switched = unistd::setgroups(&groups)
            .and_then(|_| unistd::setegid(Gid::from_raw(gid)))
            .and_then(|_| unistd::seteuid(Uid::from_raw(uid)));
        if let Err(e) = switched {
            drop(saved);
            bail!("cannot read the tree as {name}, the served directory's owner: {e}");
        }
        Ok(Some((saved, name)))
    }

    /// Becomes root again (with its own gid and groups).
    fn restore(&mut self) -> Result<()> {
        use nix::unistd::{self, Uid};
        self.restored = true;
        unistd::seteuid(Uid::from_raw(0))
            .and_then(|_| unistd::setegid(self.egid))
            .and_then(|_| unistd::setgroups(&self.groups))
            .context(
                "cannot switch back to root after reading the tree as the served directory's owner",
            )
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        if !self.restored && self.restore().is_err() {
            // Half root, half the owner: nothing publish does next is safe.
            output::warning("cannot switch back to root; stopping");
            std::process::exit(2);
        }
    }
}

/// `src` is a server tree: a directory with `parameters/` and `modules/`,
/// and no top-level link but to the directories `allowed`.
fn check_source(src: &Path, allowed: &[PathBuf]) -> Result<()> {
    if !src.is_dir() {
        bail!("no server tree at {}: not a directory", src.display());
    }
    crate::tree::check_top_links(src, allowed)?;
    for sub in ["parameters", "modules"] {
        if !src.join(sub).is_dir() {
            bail!(
                "{} is not a server tree: it has no {sub}/ directory",
                src.display()
            );
        }
    }
    Ok(())
}

/// Publishes `src` under `root`; returns the new snapshot id. A top-level
/// link of `src` may lead only to one of `allowed`. `as_candidate`: the
/// snapshot becomes the candidate (`root/candidate`, replacing an older
/// one) and `current` is left alone.
pub fn publish(
    src: &Path,
    root: &Path,
    keep: usize,
    allowed: &[PathBuf],
    as_candidate: bool,
) -> Result<String> {
    check_source(src, allowed)?;
    check_served_dir(root)?;
    let snapshots = make_snapshots_dir(root)?;
    let owner = owner_to_give(root)?;
    check_hard_links(src)?;
    // A run id (time and pid) is unique between processes; one process
    // publishing twice in a second takes the next free suffix.
    let base = crate::run::new_run_id();
    let mut id = base.clone();
    for k in 2.. {
        if !snapshots.join(&id).exists() && !snapshots.join(format!(".tmp-{id}")).exists() {
            break;
        }
        id = format!("{base}-{k}");
    }
    let tmp = snapshots.join(format!(".tmp-{id}"));
    let result = (|| -> Result<()> {
        let mut as_owner = AsOwner::become_owner(owner)?;
        let copied = copy_src(src, &tmp).with_context(|| match &as_owner {
            Some((_, name)) => format!(
                "publish reads the tree as {name}, the served directory's owner, and copies only what it may read"
            ),
            None => "cannot copy the tree".into(),
        });
        if let Some((o, _)) = as_owner.as_mut() {
            o.restore()?;
        }
        copied?;
        // The modes the manifest records are the private ones, as on disk:
        // a node fetching the snapshot locally checks them.
        make_private(&tmp, owner)?;
        let m = manifest_of_snapshot(&tmp)?;
        crate::fsutil::write_atomic(
            &tmp.join(PUBLISHED_MANIFEST),
            &serde_json::to_vec(&m)?,
            0o600,
        )?;
        make_private(&tmp.join(PUBLISHED_MANIFEST), owner)?;
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
    // The swap and the prune under the links' lock: a promotion never
    // renames a candidate this publish is replacing, and the prune sees
    // every link as it is.
    let lock = candidate::lock(root)?;
    match as_candidate {
        true => candidate::set_candidate(root, &id)?,
        false => candidate::set_current(root, &id)?,
    }
    prune(root, &id, keep)?;
    drop(lock);
    tighten_kept(&snapshots, &id, owner);
    Ok(id)
}

/// Copies `src`'s parameters, modules and recipients into a new `tmp`.
fn copy_src(src: &Path, tmp: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    for sub in ["parameters", "modules"] {
        super::copy_tree(&src.join(sub), &tmp.join(sub), sub, u64::MAX, None)?;
    }
    // The admins' public keys: nodes never fetch them, but `disco
    // lint` of a snapshot checks the secrets against them.
    let recipients = crate::secrets::ADMINS
        .split_once('/')
        .map_or("recipients", |(d, _)| d);
    if src.join(recipients).is_dir() {
        super::copy_tree(
            &src.join(recipients),
            &tmp.join(recipients),
            recipients,
            1 << 20,
            None,
        )?;
    }
    Ok(())
}

/// Makes the kept snapshots an older disco published with modes others
/// could read (0755/0644) private, with a manifest to match, and says so.
/// A snapshot whose own directory is private is done (it is made so last).
/// A failure is a warning: the new snapshot is published all the same.
fn tighten_kept(snapshots: &Path, newest: &str, owner: Option<(u32, u32)>) {
    let Ok(entries) = fs::read_dir(snapshots) else {
        return;
    };
    let mut tightened = Vec::new();
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        let open = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && m.mode() & 0o077 != 0);
        if id.starts_with('.') || id == newest || !open {
            continue;
        }
        let done = (|| -> Result<()> {
            for sub in ["parameters", "modules"] {
                make_private(&dir.join(sub), owner)?;
            }
            // The manifest records modes (a local fetch checks them): it
            // is made again from the private tree, then the top last.
            let manifest = dir.join(PUBLISHED_MANIFEST);
            if manifest.exists() {
                let m = manifest_of_snapshot(&dir)?;
                crate::fsutil::write_atomic(&manifest, &serde_json::to_vec(&m)?, 0o600)?;
            }
            make_private(&dir, owner)?;
            Ok(())
        })();
        match done {
            Ok(()) => tightened.push(id),
            Err(e) => output::warning(&format!(
                "snapshot {id} stays readable by other accounts: {e:#}; chmod -R go= {}",
                dir.display()
            )),
        }
    }
    if !tightened.is_empty() {
        tightened.sort();
        output::info(&format!(
            "made {} older snapshot(s) readable by the served directory's owner only: {}",
            tightened.len(),
            tightened.join(", ")
        ));
    }
}

/// Removes the oldest snapshots beyond `keep`, skipping any a link names
/// (`current`, `candidate`, a pin: [`candidate::linked_ids`]) and any a
/// session holds.
fn prune(root: &Path, newest: &str, keep: usize) -> Result<()> {
    let snapshots = root.join("snapshots");
    let linked = candidate::linked_ids(root);
    let mut ids: Vec<String> = fs::read_dir(&snapshots)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != newest)
        .collect();
    ids.sort();
    let excess = (ids.len() + 1).saturating_sub(keep.max(1));
    for id in ids.iter().take(excess).filter(|id| !linked.contains(*id)) {
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
