//! The squashed lower layers (DESIGN §3.5): chunks of the upper layers of
//! a module's requires closure, each folded into one directory in
//! overlayfs' own format, so module *i* mounts `upper(i)` over a few
//! squashes and at most 31 uppers instead of over its whole closure. A
//! path lookup then costs about the same at the 2,000th module of a chain
//! as at the 40th; the per-module uppers stay as they are, for the diff's
//! attribution, `disco diff`, the merge and undo.
//!
//! Owns the fold: every entry of an upper replaces the same path of the
//! squash (regular files, symlinks, whiteouts and special files as hard
//! links — no data is copied, the cost is one link per changed entry);
//! a directory is merged into the squash's, taking its mode, owner,
//! extended attributes and mtime; an opaque directory, or a directory
//! where the squash had a file or a whiteout, replaces what was there and
//! is opaque — in both stacks nothing of ROOT shows through it.
//!
//! The squash holds extra names for the uppers' inodes; it is removed
//! before the merge, which counts links (hard links kept).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fsutil::{is_opaque, is_whiteout, MAX_DEPTH};

const OPAQUE: &str = "trusted.overlay.opaque";

/// Folds the upper layer `upper` (none: nothing to fold) into `squash`
/// (created if missing), over the layers `below` it (the shim layer, if
/// any, and the filesystem's directory in ROOT). An error leaves the
/// squash unusable: the caller falls back to stacking.
///
/// A whiteout is kept only where a layer below has something to hide: overlayfs
/// filters whiteouts out of a listing only in a directory that more than
/// one layer holds, and a directory that only the squash holds (new, or
/// opaque) would list the name of a file it does not have.
pub fn fold(upper: &Path, squash: &Path, below: &[PathBuf]) -> Result<()> {
    if !squash.exists() {
        fs::create_dir(squash).with_context(|| format!("cannot create {}", squash.display()))?;
    }
    if !upper.exists() {
        return Ok(());
    }
    // Directories whose mtime is set last (linking into them changes it).
    let mut times: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    // (upper dir, squash dir, the same dir in the layers below that show
    // through here).
    let mut work = vec![(
        upper.to_path_buf(),
        squash.to_path_buf(),
        below.to_vec(),
        0usize,
    )];
    while let Some((u, s, below, depth)) = work.pop() {
        if depth > MAX_DEPTH {
            anyhow::bail!("{}: more than {MAX_DEPTH} levels", u.display());
        }
        let entries = fs::read_dir(&u).with_context(|| format!("cannot read {}", u.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("cannot read {}", u.display()))?;
            let (up, sp) = (e.path(), s.join(e.file_name()));
            let um = fs::symlink_metadata(&up)
                .with_context(|| format!("cannot stat {}", up.display()))?;
            let sm = fs::symlink_metadata(&sp).ok();
            if um.is_dir() {
                let below = fold_dir(&up, &sp, (&um, sm.as_ref()), &below)?;
                times.push((sp.clone(), um));
                work.push((up, sp, below, depth + 1));
            } else {
                fold_other(&up, &sp, (&um, sm.as_ref()), &below)?;
            }
        }
    }
    for (dir, meta) in times.iter().rev() {
        set_times(dir, meta)?;
    }
    Ok(())
}

/// Folds directory `up` (`um`) of an upper into `sp` of the squash (`sm`
/// what is there): merged into the squash's directory, or replacing what
/// was there (opaque then); returns the same directory in the layers
/// `below` that still show through it.
fn fold_dir(
    up: &Path,
    sp: &Path,
    (um, sm): (&fs::Metadata, Option<&fs::Metadata>),
    below: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let opaque = is_opaque(up);
    let merge_into = sm.is_some_and(|m| m.is_dir()) && !opaque;
    if !merge_into {
        if let Some(m) = sm {
            remove(sp, m)?;
        }
        fs::create_dir(sp).with_context(|| format!("cannot create {}", sp.display()))?;
        if opaque || sm.is_some() {
            xattr::set(sp, OPAQUE, b"y")
                .with_context(|| format!("cannot mark {} opaque", sp.display()))?;
        }
    }
    attributes(up, sp, um)?;
    if is_opaque(sp) {
        return Ok(Vec::new());
    }
    let name = up.file_name().expect("an entry has a name");
    Ok(below
        .iter()
        .map(|b| b.join(name))
        .filter(|b| fs::symlink_metadata(b).is_ok_and(|m| m.is_dir()))
        .collect())
}

/// Folds a file, symlink, whiteout or special file `up` of an upper into
/// the squash as a hard link at `sp`, replacing what was there (`sm`); a
/// whiteout only where a layer `below` has something to hide.
fn fold_other(
    up: &Path,
    sp: &Path,
    (um, sm): (&fs::Metadata, Option<&fs::Metadata>),
    below: &[PathBuf],
) -> Result<()> {
    if let Some(m) = sm {
        remove(sp, m)?;
    }
    let name = up.file_name().expect("an entry has a name");
    let hides = below
        .iter()
        .any(|b| fs::symlink_metadata(b.join(name)).is_ok());
    if is_whiteout(um) && !hides {
        return Ok(());
    }
    let linked = fs::hard_link(up, sp);
    if is_whiteout(um) && linked.is_err() {
        // Overlayfs shares one whiteout inode per work dir: past the
        // filesystem's link limit, a whiteout of its own.
        nix::sys::stat::mknod(
            sp,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .with_context(|| format!("cannot make the whiteout {}", sp.display()))?;
        return Ok(());
    }
    linked.with_context(|| format!("cannot link {} to {}", up.display(), sp.display()))
}

/// Gives directory `dir` the access and modification times of `meta`
/// (set once everything was linked into it, which changes them).
fn set_times(dir: &Path, meta: &fs::Metadata) -> Result<()> {
    let t = |s: i64, ns: i64| libc::timespec {
        tv_sec: s as libc::time_t,
        tv_nsec: ns as _,
    };
    let ts = [
        t(meta.atime(), meta.atime_nsec()),
        t(meta.mtime(), meta.mtime_nsec()),
    ];
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
        .with_context(|| format!("{}: a NUL in the path", dir.display()))?;
    // SAFETY: a valid C string and two timespecs.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Ok(())
}

/// Gives directory `s` the mode, owner and extended attributes of `u`
/// (overlayfs' own attributes aside: `s` keeps its opacity, which a
/// directory merged over it does not lift).
fn attributes(u: &Path, s: &Path, um: &fs::Metadata) -> Result<()> {
    let ctx = || {
        format!(
            "cannot give {} the attributes of {}",
            s.display(),
            u.display()
        )
    };
    std::os::unix::fs::lchown(s, Some(um.uid()), Some(um.gid())).with_context(ctx)?;
    fs::set_permissions(s, fs::Permissions::from_mode(um.mode() & 0o7777)).with_context(ctx)?;
    let want = crate::fsutil::xattrs(u);
    for (name, _) in crate::fsutil::xattrs(s) {
        if !want.iter().any(|(n, _)| *n == name) {
            xattr::remove(s, &name).with_context(ctx)?;
        }
    }
    for (name, value) in want {
        xattr::set(s, &name, &value).with_context(ctx)?;
    }
    Ok(())
}

fn remove(p: &Path, m: &fs::Metadata) -> Result<()> {
    if m.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    }
    .with_context(|| format!("cannot remove {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{mknod, Mode, SFlag};

    fn whiteout(p: &Path) {
        mknod(p, SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn fold_keeps_whiteouts_only_over_root_and_opaque_dirs_replace() {
        let t = tempfile::tempdir().unwrap();
        let (root, q, u1, u2) = (
            t.path().join("root"),
            t.path().join("q"),
            t.path().join("u1"),
            t.path().join("u2"),
        );
        for d in [root.join("a"), u1.join("a"), u1.join("d"), u2.join("a")] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(root.join("a/r"), "root").unwrap();
        fs::write(root.join("gone"), "root").unwrap();
        fs::write(u1.join("a/new"), "new").unwrap();
        whiteout(&u1.join("gone"));
        whiteout(&u1.join("a/nothere"));
        whiteout(&u1.join("d/x"));
        fold(&u1, &q, std::slice::from_ref(&root)).unwrap();
        assert_eq!(names(&q), ["a", "d", "gone"]);
        assert!(is_whiteout(&fs::symlink_metadata(q.join("gone")).unwrap()));
        assert_eq!(
            names(&q.join("a")),
            ["new"],
            "no whiteout where ROOT has nothing"
        );
        assert!(names(&q.join("d")).is_empty());
        assert!(!is_opaque(&q.join("a")) && !is_opaque(&q.join("d")));
        assert_eq!(
            fs::metadata(q.join("a/new")).unwrap().ino(),
            fs::metadata(u1.join("a/new")).unwrap().ino(),
            "linked, not copied"
        );
        // A whiteout over a shim (ROOT has no such command) is kept.
        let shim = t.path().join("shim");
        fs::create_dir_all(shim.join("sbin")).unwrap();
        fs::write(shim.join("sbin/telinit"), "#!/bin/sh\n").unwrap();
        let u3 = t.path().join("u3");
        fs::create_dir_all(u3.join("sbin")).unwrap();
        whiteout(&u3.join("sbin/telinit"));
        fold(&u3, &q, &[shim, root.clone()]).unwrap();
        assert!(is_whiteout(
            &fs::symlink_metadata(q.join("sbin/telinit")).unwrap()
        ));
        // An opaque directory replaces what the squash had there.
        xattr::set(u2.join("a"), OPAQUE, b"y").unwrap();
        fs::write(u2.join("a/only"), "only").unwrap();
        fold(&u2, &q, std::slice::from_ref(&root)).unwrap();
        assert_eq!(names(&q.join("a")), ["only"]);
        assert!(is_opaque(&q.join("a")));
    }
}
