//! The trigger spool `STATE/trigger/` (DESIGN §3, "Dancing now"): how a
//! request to dance now is dropped (`disco trigger`), claimed by the dance
//! that serves it, and replaced by its status.
//!
//! Owns the spool directory (0700, root's; a symlink or a directory of
//! anyone else refused), every file in it and their life:
//! `NAME.request` → `NAME.running` (claimed by a dance of the request's
//! mode, the run id written in) → `NAME.ok` / `NAME.changed` /
//! `NAME.failed` (the run id, the exit code, the error). Every file is
//! opened through the directory's descriptor with `O_NOFOLLOW` (a link
//! planted there is removed, never followed), written whole beside its
//! name and renamed into place, so a reader never sees half of one. At
//! most [`MAX_PENDING`] requests wait; [`KEPT_STATUSES`] ended ones are
//! kept. Running dances, inotify and signals are not here: the dance
//! claims and ends its requests in [`crate::pipeline`], `disco watch`
//! (`client/commands/watch.rs`) starts dances.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::Mode as Perm;
use nix::unistd::UnlinkatFlags;

use crate::output;

/// The spool's name in the state dir.
pub const SPOOL: &str = "trigger";
/// How many requests may wait at once; one more is refused.
pub const MAX_PENDING: usize = 64;
/// How many ended requests' status files are kept (the newest).
pub const KEPT_STATUSES: usize = 64;
/// The most a request or status file holds (they hold a few lines).
const MAX_FILE: u64 = 4096;
/// The most of a dance's error a status file keeps (`disco report` has it all).
const MAX_ERROR: usize = 1024;
/// The endings of a request's ended status.
pub const ENDED: [&str; 3] = ["ok", "changed", "failed"];

/// What dance a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    Noop,
}

impl Mode {
    pub fn of(noop: bool) -> Mode {
        if noop {
            Mode::Noop
        } else {
            Mode::Live
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Noop => "noop",
        }
    }
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "live" => Some(Mode::Live),
            "noop" => Some(Mode::Noop),
            _ => None,
        }
    }
}

/// A request waiting in the spool.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its name without `.request` (`20261206T010203-1234`).
    pub name: String,
    pub mode: Mode,
    /// Its lines as written (`mode=`, `requested=`, …).
    fields: Vec<(String, String)>,
}

/// How the dance that claimed a request ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `ok`, `changed` or `failed`.
    pub status: String,
    pub exit: i32,
    pub error: Option<String>,
}

/// The spool directory, held open: every name in it is resolved through
/// this descriptor, never through a path that a link could redirect.
pub struct Spool {
    dir: fs::File,
    /// `STATE/trigger`, for messages.
    pub path: PathBuf,
}

impl Spool {
    /// Opens `STATE/trigger`, made (0700) when missing — the state dir too.
    /// Refused in one line: a symlink, not a directory, not root's.
    pub fn open(state: &Path) -> Result<Spool> {
        crate::cron::private_state_dir(state)?;
        let path = state.join(SPOOL);
        match nix::unistd::mkdir(&path, Perm::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => bail!("cannot make the trigger spool {}: {e}", path.display()),
        }
        Self::open_existing(&path)?
            .with_context(|| format!("the trigger spool {} vanished", path.display()))
    }

    /// Opens `STATE/trigger` if it exists (`None` if not), with the same
    /// refusals as [`Spool::open`].
    pub fn open_existing(path: &Path) -> Result<Option<Spool>> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::open(path, flags, Perm::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                let what = match fs::symlink_metadata(path) {
                    Ok(m) if m.file_type().is_symlink() => "a symlink",
                    _ => "not a directory",
                };
                bail!(
                    "the trigger spool {} is {what}: refused (remove it; disco makes it again, 0700)",
                    path.display()
                )
            }
            Err(e) => bail!("cannot open the trigger spool {}: {e}", path.display()),
        };
        // SAFETY: a descriptor we just opened and own.
        let dir = unsafe { fs::File::from_raw_fd(fd) };
        let meta = dir
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            bail!(
                "the trigger spool {} belongs to uid {}, not root: refused (chown root: it, or remove it)",
                path.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o7777 != 0o700 {
            dir.set_permissions(fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot chmod 700 {}", path.display()))?;
        }
        Ok(Some(Spool {
            dir,
            path: path.to_path_buf(),
        }))
    }

    fn fd(&self) -> i32 {
        self.dir.as_raw_fd()
    }

    /// Drops a request of `mode`; returns its name (`NAME.request`).
    /// Refused when [`MAX_PENDING`] already wait.
    pub fn request(&self, mode: Mode) -> Result<String> {
        let _held = self.lock()?;
        let waiting = self.names_ending(".request")?.len();
        if waiting >= MAX_PENDING {
            bail!(
                "{waiting} requests already wait in {} (at most {MAX_PENDING}): not adding one; is a dance running them (disco.path, disco watch)?",
                self.path.display()
            );
        }
        let stamp: String = now().chars().filter(|c| *c != '-' && *c != ':').collect();
        let stamp = stamp.trim_end_matches('Z');
        let base = format!("{stamp}-{}", std::process::id());
        let body = format!("mode={}\nrequested={}\n", mode.as_str(), now());
        for n in 0..100 {
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            match self.place(
                &name,
                "request",
                body.as_bytes(),
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => return Ok(format!("{name}.request")),
                Err(e) if e.downcast_ref::<Errno>() == Some(&Errno::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
        bail!("cannot name a new request in {}", self.path.display())
    }

    /// An exclusive `flock` on the spool while a request is counted and added.
    fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>> {
        let dup = self.dir.try_clone()?;
        nix::fcntl::Flock::lock(dup, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", self.path.display()))
    }

    /// Writes `body` as `NAME.ENDING`: a new hidden file (`O_EXCL`,
    /// `O_NOFOLLOW`, 0600) renamed onto the name with `flags`.
    fn place(&self, name: &str, ending: &str, body: &[u8], flags: RenameFlags) -> Result<()> {
        let tmp = format!(".{name}.{ending}.tmp-{}", std::process::id());
        let _ = nix::unistd::unlinkat(Some(self.fd()), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        let oflags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(
            Some(self.fd()),
            tmp.as_str(),
            oflags,
            Perm::from_bits_truncate(0o600),
        )
        .with_context(|| format!("cannot create {}/{tmp}", self.path.display()))?;
        // SAFETY: a descriptor we just opened and own.
        let mut f = unsafe { fs::File::from_raw_fd(fd) };
        let target = format!("{name}.{ending}");
        let placed = f
            .write_all(body)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                nix::fcntl::renameat2(
                    Some(self.fd()),
                    tmp.as_str(),
                    Some(self.fd()),
                    target.as_str(),
                    flags,
                )
                .map_err(anyhow::Error::from)
            });
        if placed.is_err() {
            let _ =
                nix::unistd::unlinkat(Some(self.fd()), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        placed
    }

    /// Every name in the spool (read through its descriptor), sorted:
    /// oldest first, as names start with their time.
    fn names(&self) -> Result<Vec<OsString>> {
        let fd = nix::fcntl::openat(
            Some(self.fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Perm::empty(),
        )
        .with_context(|| format!("cannot read {}", self.path.display()))?;
        let mut dir = nix::dir::Dir::from_fd(fd)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let mut names: Vec<OsString> = dir
            .iter()
            .flatten()
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        Ok(names)
    }

    /// The names ending in `ending` (without it), hidden ones aside, sorted.
    fn names_ending(&self, ending: &str) -> Result<Vec<OsString>> {
        Ok(self
            .names()?
            .into_iter()
            .filter_map(|n| {
                let b = n.as_bytes();
                (!b.starts_with(b".") && b.ends_with(ending.as_bytes()))
                    .then(|| OsStr::from_bytes(&b[..b.len() - ending.len()]).to_os_string())
            })
            .collect())
    }

    /// Reads `NAME.ENDING` without following a link: a regular file of
    /// ours, at most [`MAX_FILE`] bytes, as `key=value` lines.
    fn read(&self, name: &OsStr, ending: &str) -> Result<Vec<(String, String)>, String> {
        use std::os::unix::fs::MetadataExt;
        let mut file_name = name.to_os_string();
        file_name.push(ending);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(Some(self.fd()), file_name.as_os_str(), flags, Perm::empty())
            .map_err(|e| match e {
            Errno::ELOOP => "is a symlink (never followed)".to_string(),
            e => format!("cannot be opened: {e}"),
        })?;
        // SAFETY: a descriptor we just opened and own.
        let f = unsafe { fs::File::from_raw_fd(fd) };
        let meta = f.metadata().map_err(|e| format!("cannot be read: {e}"))?;
        if !meta.is_file() {
            return Err(format!(
                "is a {}, not a file",
                crate::fsutil::kind_name(&meta)
            ));
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(format!("is owned by uid {}, not root", meta.uid()));
        }
        let mut text = String::new();
        f.take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot be read: {e}"))?;
        if text.len() as u64 > MAX_FILE {
            return Err(format!("is over {MAX_FILE} bytes"));
        }
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The requests waiting, oldest first. One that is no request (a
    /// link, not a regular file, not root's, no mode) is ended `.failed`
    /// with why, and its entry removed: never followed, never run.
    pub fn pending(&self) -> Result<Vec<Pending>> {
        let mut out = Vec::new();
        for name in self.names_ending(".request")? {
            let shown = name.to_string_lossy().into_owned();
            let read = self.read(&name, ".request").and_then(|fields| {
                let mode = field(&fields, "mode").and_then(Mode::parse);
                match (mode, name.to_str()) {
                    (Some(mode), Some(n)) if !n.contains(['\n', '/']) => Ok(Pending {
                        name: n.to_string(),
                        mode,
                        fields,
                    }),
                    (None, _) => Err("has no mode=live or mode=noop line".to_string()),
                    _ => Err("has a name that is not UTF-8".to_string()),
                }
            });
            match read {
                Ok(p) => out.push(p),
                Err(why) => self.reject(&name, &shown, &why),
            }
        }
        Ok(out)
    }

    /// Ends what is no request: its entry removed (a link itself, never
    /// what it points to), `NAME.failed` saying why.
    fn reject(&self, name: &OsStr, shown: &str, why: &str) {
        let mut entry = name.to_os_string();
        entry.push(".request");
        if nix::unistd::unlinkat(
            Some(self.fd()),
            entry.as_os_str(),
            UnlinkatFlags::NoRemoveDir,
        )
        .is_err()
        {
            // A directory: out of the way under a hidden name, never listed.
            let mut hidden = OsString::from(".");
            hidden.push(&entry);
            hidden.push(".rejected");
            let _ = nix::fcntl::renameat(
                Some(self.fd()),
                entry.as_os_str(),
                Some(self.fd()),
                hidden.as_os_str(),
            );
        }
        let line = format!(
            "{}/{shown}.request {why}: not a request, taken out of the spool",
            self.path.display()
        );
        output::warning(&output::printable(&line));
        if let Some(n) = name.to_str().filter(|n| !n.contains(['\n', '/'])) {
            let body = format!(
                "status=failed\nexit=1\nended={}\nerror={}\n",
                now(),
                one_line(&line)
            );
            let _ = self.place(n, "failed", body.as_bytes(), RenameFlags::empty());
        }
    }

    /// Claims for run `run` every request of `mode`: each renamed
    /// `NAME.request` → `NAME.running` (one rename: two claimers never
    /// both get one), then its lines rewritten with `run=`, `pid=`,
    /// `started=`. Called holding the dance lock: a `.running` found then
    /// is a dead dance's, ended first. Returns the names claimed.
    pub fn claim(&self, mode: Mode, run: &str) -> Result<Vec<String>> {
        self.end_running();
        let mut claimed = Vec::new();
        for p in self.pending()?.into_iter().filter(|p| p.mode == mode) {
            if !self.take(&p.name)? {
                continue; // another claimer took it
            }
            let mut body = p.body();
            body.push_str(&format!(
                "run={run}\npid={}\nstarted={}\n",
                std::process::id(),
                now()
            ));
            self.place(&p.name, "running", body.as_bytes(), RenameFlags::empty())?;
            claimed.push(p.name);
        }
        Ok(claimed)
    }

    /// Renames `NAME.request` → `NAME.running` (`RENAME_NOREPLACE`: of two
    /// takers one gets it); false when it is gone (taken). What stands at
    /// `NAME.running` before it (planted: a request's names are its own)
    /// is taken out of the way first, never followed.
    fn take(&self, name: &str) -> Result<bool> {
        let (from, to) = (format!("{name}.request"), format!("{name}.running"));
        for _ in 0..2 {
            match nix::fcntl::renameat2(
                Some(self.fd()),
                from.as_str(),
                Some(self.fd()),
                to.as_str(),
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => return Ok(true),
                Err(Errno::ENOENT) => return Ok(false),
                Err(Errno::EEXIST) => self.set_aside(&to),
                Err(e) => bail!("cannot claim {}/{from}: {e}", self.path.display()),
            }
        }
        bail!(
            "cannot claim {}/{from}: {to} stands in the way",
            self.path.display()
        )
    }

    /// Removes the entry `name` (a link itself, never what it points to);
    /// a directory goes under a hidden name, never listed again.
    fn set_aside(&self, name: &str) {
        if nix::unistd::unlinkat(Some(self.fd()), name, UnlinkatFlags::NoRemoveDir).is_err() {
            let hidden = format!(".{name}.rejected");
            let _ = nix::fcntl::renameat(Some(self.fd()), name, Some(self.fd()), hidden.as_str());
        }
    }

    /// Ends every request run `run` claimed with `outcome`: `NAME.STATUS`
    /// written whole, then `NAME.running` removed. Then prunes.
    pub fn finish(&self, run: &str, outcome: &Outcome) -> Vec<String> {
        let mut ended = Vec::new();
        for name in self.names_ending(".running").unwrap_or_default() {
            let Ok(fields) = self.read(&name, ".running") else {
                continue;
            };
            if field(&fields, "run") != Some(run) {
                continue;
            }
            if let Some(n) = name.to_str() {
                self.end(n, &fields, outcome);
                ended.push(n.to_string());
            }
        }
        self.prune();
        ended
    }

    /// `NAME.running` (with `fields`) → `NAME.STATUS`.
    fn end(&self, name: &str, fields: &[(String, String)], outcome: &Outcome) {
        let mut body: String = fields
            .iter()
            .filter(|(k, _)| k != "pid")
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        body.push_str(&format!(
            "status={}\nexit={}\nended={}\n",
            outcome.status,
            outcome.exit,
            now()
        ));
        if let Some(e) = &outcome.error {
            // Cut so the file stays under what a reader takes (MAX_FILE).
            let mut e = one_line(&crate::masks::text(e));
            if e.len() > MAX_ERROR {
                let mut cut = MAX_ERROR;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
                e.push_str(" …");
            }
            body.push_str(&format!("error={e}\n"));
        }
        match self.place(name, &outcome.status, body.as_bytes(), RenameFlags::empty()) {
            Ok(()) => {
                let running = format!("{name}.running");
                let _ = nix::unistd::unlinkat(
                    Some(self.fd()),
                    running.as_str(),
                    UnlinkatFlags::NoRemoveDir,
                );
            }
            Err(e) => output::warning(&format!(
                "cannot end the request {}/{name}: {e:#}",
                self.path.display()
            )),
        }
    }

    /// Ends `.failed` (interrupted) every `NAME.running` when no dance
    /// runs: a dance killed outright never ended its requests. "No dance
    /// runs" is the state dir's dance lock being free (taken and let go
    /// at once), never a pid: a claim is a rename, then a rewrite.
    pub fn end_interrupted(&self) {
        let state = self.path.parent().unwrap_or(Path::new("/"));
        let free = match fs::File::open(crate::cron::lock_path(state)) {
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            Ok(f) => {
                // SAFETY: flock on a descriptor we own, dropped at once.
                let got = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                got == 0
            }
        };
        if free {
            self.end_running();
        }
    }

    /// Ends `.failed` (interrupted) every `NAME.running`: called when no
    /// dance of this spool can be running but the caller's.
    fn end_running(&self) {
        for name in self.names_ending(".running").unwrap_or_default() {
            let (Ok(fields), Some(n)) = (self.read(&name, ".running"), name.to_str()) else {
                continue;
            };
            let run = field(&fields, "run").unwrap_or("?");
            let error =
                format!("interrupted: the dance (run {run}) ended without finishing (killed?)");
            self.end(
                n,
                &fields,
                &Outcome {
                    status: "failed".into(),
                    exit: 1,
                    error: Some(error),
                },
            );
        }
    }

    /// Ends `.failed` each of `names` still waiting after a dance that
    /// did not claim it (it failed before it could: no server, bad
    /// config), so a request is never run again and again.
    pub fn fail_unclaimed(&self, names: &[String], exit: i32, why: &str) {
        for name in names {
            if !self.take(name).unwrap_or(false) {
                continue; // claimed meanwhile, or gone
            }
            let fields = self.read(OsStr::new(name), ".running").unwrap_or_default();
            self.end(
                name,
                &fields,
                &Outcome {
                    status: "failed".into(),
                    exit,
                    error: Some(why.to_string()),
                },
            );
        }
        self.prune();
    }

    /// Keeps the newest [`KEPT_STATUSES`] ended requests; removes
    /// temporary files a killed writer left (an hour old).
    pub fn prune(&self) {
        let mut ended: Vec<(OsString, &str)> = ENDED
            .iter()
            .flat_map(|e| {
                let ending = format!(".{e}");
                self.names_ending(&ending)
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |n| (n, *e))
            })
            .collect();
        ended.sort();
        let excess = ended.len().saturating_sub(KEPT_STATUSES);
        for (name, e) in ended.into_iter().take(excess) {
            let mut n = name;
            n.push(format!(".{e}"));
            let _ =
                nix::unistd::unlinkat(Some(self.fd()), n.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
        self.remove_stale_temporaries();
    }

    fn remove_stale_temporaries(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for n in self.names().unwrap_or_default() {
            let b = n.as_bytes();
            if !(b.starts_with(b".") && b.windows(5).any(|w| w == b".tmp-")) {
                continue;
            }
            let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
            let old = nix::sys::stat::fstatat(Some(self.fd()), n.as_os_str(), flags)
                .is_ok_and(|st| now - st.st_mtime > 3600);
            if old {
                let _ = nix::unistd::unlinkat(
                    Some(self.fd()),
                    n.as_os_str(),
                    UnlinkatFlags::NoRemoveDir,
                );
            }
        }
    }

    /// Where request `name` stands: `request`, `running`, or its ended
    /// status with its lines; `None` when none of its files is there.
    pub fn state_of(&self, name: &str) -> Option<(String, Vec<(String, String)>)> {
        for ending in ENDED.iter().chain(&["running", "request"]) {
            if let Ok(fields) = self.read(OsStr::new(name), &format!(".{ending}")) {
                return Some((ending.to_string(), fields));
            }
        }
        None
    }
}

impl Pending {
    /// Its lines as they were written.
    fn body(&self) -> String {
        self.fields
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }
}

/// The value of `key` in `fields`.
pub fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// At a dance's start (after its locks; not for `--only`): claims the
/// requests of its mode in `STATE/trigger`, if that spool exists. A
/// spool that cannot be read warns: requests never stop a dance.
pub fn claim_for_dance(state: &Path, noop: bool, run: &str) {
    let claimed = Spool::open_existing(&state.join(SPOOL))
        .and_then(|s| s.map(|s| s.claim(Mode::of(noop), run)).transpose());
    match claimed {
        Ok(Some(names)) if !names.is_empty() => output::info(&format!(
            "this dance serves {} trigger request(s): {}",
            names.len(),
            names.join(", ")
        )),
        Ok(_) => {}
        Err(e) => output::warning(&format!("{e:#}; its requests wait")),
    }
}

/// At a dance's end (its report written): ends the requests run `run`
/// claimed with the dance's status and exit code.
pub fn finish_for_dance(state: &Path, report: &crate::report::RunReport, code: i32) {
    let outcome = Outcome {
        status: report.status.clone(),
        exit: code,
        error: report.error.clone(),
    };
    if let Ok(Some(spool)) = Spool::open_existing(&state.join(SPOOL)) {
        spool.finish(&report.id, &outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool() -> (tempfile::TempDir, Spool) {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(&d.path().join("state")).unwrap();
        (d, s)
    }

    fn stem(name: &str) -> &str {
        name.strip_suffix(".request").unwrap()
    }

    #[test]
    fn a_claim_takes_its_mode_only_and_its_end_replaces_the_running_file() {
        let (_d, s) = spool();
        let live = s.request(Mode::Live).unwrap();
        let noop = s.request(Mode::Noop).unwrap();
        assert_eq!(s.claim(Mode::Live, "r1").unwrap(), vec![stem(&live)]);
        let (state, fields) = s.state_of(stem(&live)).unwrap();
        assert_eq!(
            (state.as_str(), field(&fields, "run")),
            ("running", Some("r1"))
        );
        assert_eq!(s.state_of(stem(&noop)).unwrap().0, "request");
        let outcome = Outcome {
            status: "changed".into(),
            exit: 2,
            error: None,
        };
        assert_eq!(s.finish("r1", &outcome), vec![stem(&live)]);
        let (state, fields) = s.state_of(stem(&live)).unwrap();
        assert_eq!(state, "changed");
        assert_eq!(field(&fields, "exit"), Some("2"));
        assert_eq!(field(&fields, "mode"), Some("live"));
        assert!(field(&fields, "pid").is_none());
        assert!(!s.path.join(format!("{}.running", stem(&live))).exists());
        // A long error is cut: the file stays readable.
        s.claim(Mode::Noop, "r3").unwrap();
        let outcome = Outcome {
            status: "failed".into(),
            exit: 1,
            error: Some("é".repeat(5000)),
        };
        s.finish("r3", &outcome);
        let (state, fields) = s.state_of(stem(&noop)).unwrap();
        assert_eq!(state, "failed");
        assert!(field(&fields, "error").unwrap().ends_with(" …"));
        // The next dance finds nothing left of that mode.
        assert!(s.claim(Mode::Live, "r2").unwrap().is_empty());
    }

    #[test]
    fn temporaries_a_killed_writer_left_go_after_an_hour() {
        let (_d, s) = spool();
        let old = s.path.join(".x.request.tmp-1");
        let fresh = s.path.join(".y.request.tmp-2");
        for p in [&old, &fresh] {
            fs::write(p, "mode=live\n").unwrap();
        }
        let two_hours_ago = SystemTime::now() - std::time::Duration::from_secs(7200);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        s.prune();
        assert!(!old.exists());
        assert!(fresh.exists());
        // Never listed as requests.
        assert!(s.pending().unwrap().is_empty());
    }
}
