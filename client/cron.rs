//! Stage 2 and the cron companions (DESIGN §3.2, §6): the dance lock, the
//! status file, and the splay.
//!
//! Owns: `flock` on `/run/disco/dance.lock` (or `STATE/dance.lock` when a
//! state dir is given), which a crashed dance cannot leave held because the
//! kernel drops it with the process; `STATE/status`, replaced atomically at
//! each transition so `cat` tells what disco is doing; the random sleep
//! that spreads a fleet's cron runs.

use std::fs;
use std::io::{IsTerminal, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::output;

/// The held dance lock; released when dropped (or when the process dies).
pub struct Lock {
    file: fs::File,
    /// Removed when the lock is released (a root lock: one file per root
    /// ever danced would otherwise pile up in `/run/disco`).
    remove: Option<PathBuf>,
}

impl Drop for Lock {
    /// Unlinks a removable lock file while still holding it; a waiter that
    /// then gets the unlinked inode sees it is no longer the path's and
    /// takes the lock again on the path (see [`lock_at`]).
    fn drop(&mut self) {
        if let Some(path) = &self.remove {
            if same_inode(path, &self.file) {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// Whether `path` still names the inode open as `file`.
fn same_inode(path: &Path, file: &fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(p), Ok(f)) => p.dev() == f.dev() && p.ino() == f.ino(),
        _ => false,
    }
}

/// Where the lock lives: `/run/disco/dance.lock` for the default state
/// dir, else beside the state dir — keyed on the directory itself, so every
/// way of naming the default state dir takes the same lock.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    let default = Path::new(crate::config::DEFAULT_STATE_DIR);
    let same = |a: &Path, b: &Path| {
        fs::canonicalize(a)
            .ok()
            .zip(fs::canonicalize(b).ok())
            .is_some_and(|(a, b)| a == b)
    };
    if state_dir == default || same(state_dir, default) {
        PathBuf::from("/run/disco/dance.lock")
    } else {
        state_dir.join("dance.lock")
    }
}

/// The lock of one root, keyed by its device and inode (the same root
/// under two paths is one lock): `/run/disco/root-DEV-INO.lock`.
pub fn root_lock_path(root: &fs::Metadata) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    PathBuf::from(format!(
        "/run/disco/root-{:x}-{}.lock",
        root.dev(),
        root.ino()
    ))
}

/// Takes the lock; waits (saying so once) unless `no_wait`.
pub fn lock(path: &Path, no_wait: bool) -> Result<Lock> {
    lock_at(path, no_wait, false)
}

/// Takes the lock at `path`; with `remove`, the file is unlinked when the
/// lock is released, and a lock taken on a file that was meanwhile
/// unlinked (or replaced) by its previous holder is taken again on the
/// file the path now names — so two holders never hold two inodes of one
/// path.
fn lock_at(path: &Path, no_wait: bool, remove: bool) -> Result<Lock> {
    let mut said = false;
    loop {
        let file = lock_once(path, no_wait, &mut said)?;
        if !remove || same_inode(path, &file) {
            let mut lock = Lock { file, remove: None };
            lock.file.set_len(0)?;
            lock.file.rewind()?;
            write!(lock.file, "{}", std::process::id())?;
            lock.remove = remove.then(|| path.to_path_buf());
            return Ok(lock);
        }
    }
}

/// One open and `flock` of `path`, waiting (saying so once, `said`)
/// unless `no_wait`.
fn lock_once(path: &Path, no_wait: bool, said: &mut bool) -> Result<fs::File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open the lock {}", path.display()))?;
    let fd = file.as_raw_fd();
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() {
            "another disco".to_string()
        } else {
            format!("pid {holder}")
        };
        if no_wait {
            bail!(
                "another dance is running ({who}, lock {}); not waiting (--no-wait)",
                path.display()
            );
        }
        if !std::mem::replace(said, true) {
            output::warning(&format!(
                "another dance is running ({who}); waiting for it to finish"
            ));
        }
        // SAFETY: as above; blocks until the holder ends.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            bail!(
                "cannot take the lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(file)
}

/// `STATE/status` as it truly is: a `running since … (pid N)` whose pid
/// is gone (disco was killed) is rewritten as interrupted, so neither the
/// file nor `disco report` claims a dead dance is running. Returns the
/// line, if any.
pub fn current_status(state_dir: &Path) -> Option<String> {
    let line = fs::read_to_string(state_dir.join("status")).ok()?;
    let line = line.trim().to_string();
    let pid = line
        .strip_prefix("running since ")
        .and_then(|r| r.rsplit_once("(pid "))
        .and_then(|(_, p)| p.trim_end_matches(')').parse::<i32>().ok());
    if let Some(pid) = pid {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let fixed = format!(
                "interrupted: the dance {} ended without finishing (killed?)",
                line.trim_start_matches("running ")
            );
            set_status(state_dir, &fixed);
            return Some(fixed);
        }
    }
    Some(line)
}

/// The status line of a dance that ended with `report`.
pub fn ended(report: &crate::report::RunReport) -> String {
    match report.status.as_str() {
        "failed" => format!(
            "failed at {}: {}",
            report.ended,
            report.error.as_deref().unwrap_or("see disco report")
        ),
        _ => format!(
            "done at {} ({} change(s){})",
            report.ended,
            report.change_count(),
            if report.noop { ", noop" } else { "" }
        ),
    }
}

/// Replaces `STATE/status` with `line` (through the process's mask)
/// atomically, 0600.
pub fn set_status(state_dir: &Path, line: &str) {
    let path = state_dir.join("status");
    let line = crate::masks::text(line);
    let written = fs::create_dir_all(state_dir)
        .and_then(|_| crate::fsutil::write_private(&path, format!("{line}\n").as_bytes()));
    match written {
        // A full disk: the dance's own error says so, in one line.
        Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {}
        Err(e) => output::warning(&format!("cannot write {}: {e}", path.display())),
        Ok(()) => {}
    }
}

/// Makes the state dir (0700) and tightens what earlier versions left
/// readable by others: the dir itself (0755 before) and the files in it
/// that can carry a value (`status`, `failed-actions.json`, reports).
pub fn private_state_dir(state_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let tighten = |p: &Path, mode: u32| -> Result<()> {
        match fs::symlink_metadata(p) {
            Ok(m) if !m.file_type().is_symlink() && m.permissions().mode() & 0o7777 != mode => {
                fs::set_permissions(p, fs::Permissions::from_mode(mode))
                    .with_context(|| format!("cannot chmod {:o} {}", mode, p.display()))
            }
            _ => Ok(()),
        }
    };
    tighten(state_dir, 0o700)?;
    for f in [
        "status",
        "failed-actions.json",
        "actions-journal.json",
        "hashes.json",
    ] {
        tighten(&state_dir.join(f), 0o600)?;
    }
    let reports = state_dir.join("reports");
    tighten(&reports, 0o700)?;
    for e in fs::read_dir(&reports).into_iter().flatten().flatten() {
        tighten(&e.path(), 0o600)?;
    }
    Ok(())
}

/// Sleeps a random 0..`seconds`, unless stdout is a terminal (an admin
/// waiting) and `always` is not set.
pub fn splay(seconds: u64, always: bool) {
    if seconds == 0 || (std::io::stdout().is_terminal() && !always) {
        return;
    }
    let mut b = [0u8; 8];
    let _ = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    let ms = u64::from_le_bytes(b) % (seconds * 1000 + 1);
    output::info(&format!("splay: sleeping {:.1} s", ms as f64 / 1000.0));
    std::thread::sleep(Duration::from_millis(ms));
}

/// The dance lock of the state dir of `config`.
pub fn take_lock(config: &crate::config::Config, no_wait: bool) -> Result<Lock> {
    lock(&lock_path(&config.state_dir.value), no_wait)
}

/// The lock of the root a dance or undo writes, whatever its state dir:
/// two state dirs on one root must not merge at once.
pub fn take_root_lock(config: &crate::config::Config, no_wait: bool) -> Result<Lock> {
    let root = &config.root.value;
    let meta = fs::metadata(root).with_context(|| format!("root {}", root.display()))?;
    lock_at(&root_lock_path(&meta), no_wait, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_without_waiting_and_names_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dance.lock");
        let held = lock(&p, true).unwrap();
        // flock locks belong to the open file description: a second open conflicts.
        let err = lock(&p, true).err().unwrap().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        assert!(lock(&p, true).is_ok());
    }

    #[test]
    fn a_root_lock_leaves_no_file_and_a_waiter_follows_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("root.lock");
        let held = lock_at(&p, true, true).unwrap();
        assert!(p.exists());
        let err = lock_at(&p, true, true).err().unwrap().to_string();
        assert!(err.contains("another dance is running"), "{err}");
        // A waiter blocked on the held inode gets it once it is unlinked,
        // and must take the lock again on the path.
        let waiter = std::thread::spawn({
            let p = p.clone();
            move || lock_at(&p, false, true).map(|l| same_inode(&p, &l.file))
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(held);
        assert!(
            waiter.join().unwrap().unwrap(),
            "the waiter holds the path's inode"
        );
        assert!(!p.exists(), "released: no file left");
    }
}
