//! Stage 5, sandbox: the cgroup each sandbox runs in (DESIGN §5.4), which
//! bounds how many processes (`max_processes`, `pids.max`) and how much
//! memory (`max_memory`, `memory.max`, swap included) a module's
//! sandbox — its init and everything the templates, scripts and handlers
//! start — may take, and tells which limit a killed step hit.
//!
//! Written on the cgroup filesystem directly rather than through
//! `cgroups-rs` or youki's `libcgroups`: disco needs four files per
//! controller (make, limit, join, read the events) on both trees, and
//! those crates bring a D-Bus systemd driver, a dozen controllers and
//! their dependency trees for it.
//!
//! Where the cgroups go:
//! - **cgroup v2** (Debian 12): when disco's own cgroup is delegated to it
//!   (`Delegate=yes` in `disco.service`: systemd marks the directory with
//!   the `trusted.delegate` xattr) or is the root of the tree (a
//!   container's cgroup namespace), under that cgroup — disco moves the
//!   unit's processes into a `supervisor` leaf so the unit's cgroup may
//!   enable `pids` and `memory` for its children (the v2 rule: no
//!   processes where controllers are delegated). Otherwise (a cron line:
//!   `cron.service` is not disco's to split) under `/sys/fs/cgroup/disco`.
//! - **cgroup v1 / hybrid** (this project's CI machine): under disco's own
//!   cgroup of the `pids` and of the `memory` hierarchy, so an outer limit
//!   on disco still holds over its sandboxes.
//!
//! One cgroup per sandbox, `disco-PID-NONCE.LAYER` (a random nonce: the
//! PID namespaces of containers sharing one cgroup tree reuse PIDs), made
//! before the sandbox's first process forks and removed when its init has
//! been reaped (the PID namespace has then taken every process with it).
//! A dance killed outright leaves an empty directory at worst; a later
//! dance removes those of processes that are gone, once an hour old.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// `max_processes` when not set.
pub const DEFAULT_MAX_PROCESSES: u64 = 4096;
/// The cap of `max_memory`'s default (half the RAM, at most this).
pub const DEFAULT_MAX_MEMORY_CAP: u64 = 4 << 30;
/// `oom_score_adj` of every sandbox process: a machine out of memory
/// kills a module's processes before any of its own.
pub const OOM_SCORE_ADJ: &str = "1000";

const ROOT: &str = "/sys/fs/cgroup";

/// `max_memory` when not set: half the machine's RAM, at most 4 GiB.
pub fn default_max_memory() -> u64 {
    let total = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    match total {
        Some(t) => (t / 2).min(DEFAULT_MAX_MEMORY_CAP),
        None => DEFAULT_MAX_MEMORY_CAP,
    }
}

/// The limits of every sandbox of a run; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub processes: u64,
    pub memory: u64,
}

impl Limits {
    /// Nothing to bound: no cgroup is made.
    pub fn none(&self) -> bool {
        self.processes == 0 && self.memory == 0
    }

    /// `more than 4096 processes (max_processes)`
    pub fn processes_hit(&self) -> String {
        format!("more than {} processes (max_processes)", self.processes)
    }

    /// `killed at the memory limit of 2.0 GiB (max_memory)`
    pub fn memory_hit(&self) -> String {
        format!(
            "killed at the memory limit of {} (max_memory)",
            gib(self.memory)
        )
    }
}

/// `2.0 GiB`, `512 MiB`
pub fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// Which tree the host has, and where this run's cgroups go.
#[derive(Debug)]
enum Tree {
    /// The parent of the sandboxes' cgroups.
    V2(PathBuf),
    /// The parents in the `pids` and the `memory` hierarchy.
    V1 { pids: PathBuf, memory: PathBuf },
}

/// The cgroups of one run's sandboxes.
#[derive(Debug)]
pub struct Cgroups {
    tree: Tree,
    pub limits: Limits,
    /// `PID-NONCE`, this run's part of its cgroups' names: a PID alone is
    /// not unique where containers' PID namespaces share one cgroup tree.
    run: String,
}

/// The cgroup path of this process in the hierarchy named by `key` (`""`
/// for v2's `0::`, `pids`, `memory`).
fn own_path(key: &str) -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        if controllers.split(',').any(|c| c == key) || (key.is_empty() && controllers.is_empty()) {
            return Ok(PathBuf::from(path.trim_start_matches('/')));
        }
    }
    bail!("this process is in no {key} cgroup (/proc/self/cgroup)")
}

/// Whether systemd delegated `dir` (`Delegate=yes`).
fn delegated(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 8];
    for name in [c"trusted.delegate", c"user.delegate"] {
        // SAFETY: valid C strings and a buffer of the given length.
        let n = unsafe {
            libc::getxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n > 0 && buf[0] == b'1' {
            return true;
        }
    }
    false
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Enables `pids` and `memory` for the children of `dir` (v2).
fn enable_controllers(dir: &Path) -> Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let have = fs::read_to_string(&file).unwrap_or_default();
    for c in ["pids", "memory"] {
        if !have.split_whitespace().any(|h| h == c) {
            write(&file, &format!("+{c}")).with_context(|| {
                format!("cannot enable the {c} controller in {}", file.display())
            })?;
        }
    }
    Ok(())
}

/// Fails unless disco may make cgroups in `dir`.
fn writable(dir: &Path) -> Result<()> {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
        .with_context(|| format!("cannot make cgroups in {}", dir.display()))
}

/// Removes the `disco-PID-NONCE.*` cgroups in `parent` left by a dance
/// killed outright: those of a process that is gone, untouched for an
/// hour (where containers share this tree, a PID seen gone here may be
/// another container's live dance, whose cgroup is never that old and
/// empty); a cgroup still holding processes stays anyway (rmdir refuses).
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("disco-"))
            .and_then(|n| n.split(['-', '.']).next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < hour_ago);
        if old && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// 32 random bits (the kernel's), for [`Cgroups::run`]'s name.
fn nonce() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom into a buffer of its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    }
}

impl Cgroups {
    /// Finds where this run's sandboxes' cgroups go; `None` when `limits`
    /// bound nothing, or when this machine gives disco no cgroup to write
    /// (a container whose controllers are mounted read-only): then one
    /// warning says the sandboxes run without the limits, and how to say
    /// so in the config.
    pub fn new(limits: Limits) -> Option<Cgroups> {
        if limits.none() {
            return None;
        }
        match Self::locate(limits) {
            Ok(tree) => Some(Cgroups {
                tree,
                limits,
                run: format!("{}-{:08x}", std::process::id(), nonce()),
            }),
            Err(e) => {
                crate::output::warning(&format!(
                    "the sandboxes run without max_processes and max_memory: {e:#} (set both to 0 to run without them and silence this)"
                ));
                None
            }
        }
    }

    fn locate(limits: Limits) -> Result<Tree> {
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").exists() {
            let own = root.join(own_path("")?);
            let base = if own == root {
                own
            } else if delegated(&own) {
                // Everything of the unit into a leaf of its own, so the
                // unit's cgroup may hand controllers to its children.
                let leaf = own.join("supervisor");
                match fs::create_dir(&leaf) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(e).with_context(|| format!("cannot create {}", leaf.display()))
                    }
                    _ => {}
                }
                let procs = fs::read_to_string(own.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines() {
                    // A process gone meanwhile is no error.
                    let _ = write(&leaf.join("cgroup.procs"), pid);
                }
                own
            } else {
                let base = root.join("disco");
                match fs::create_dir(&base) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(e).with_context(|| format!("cannot create {}", base.display()))
                    }
                    _ => {}
                }
                enable_controllers(root)?;
                base
            };
            enable_controllers(&base)?;
            writable(&base)?;
            remove_stale(&base);
            return Ok(Tree::V2(base));
        }
        let hierarchy = |name: &str| -> Result<PathBuf> {
            let mount = root.join(name);
            if !mount.join("cgroup.procs").exists() {
                bail!("neither cgroup v2 nor the v1 {name} controller is mounted under {ROOT}");
            }
            Ok(mount.join(own_path(name)?))
        };
        let pids = if limits.processes > 0 {
            hierarchy("pids")?
        } else {
            PathBuf::new()
        };
        let memory = if limits.memory > 0 {
            hierarchy("memory")?
        } else {
            PathBuf::new()
        };
        for p in [&pids, &memory] {
            if !p.as_os_str().is_empty() {
                writable(p)?;
                remove_stale(p);
            }
        }
        Ok(Tree::V1 { pids, memory })
    }

    /// Makes the cgroup of one sandbox, limits set, ready to join.
    pub fn make(&self, layer: usize) -> Result<Cgroup> {
        let name = format!("disco-{}.{layer}", self.run);
        let mut cg = Cgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            events: Events::default(),
            v2: matches!(self.tree, Tree::V2(_)),
            limits: self.limits,
        };
        let mkdir = |dir: &Path| -> Result<()> {
            match fs::create_dir(dir) {
                // Left by an earlier sandbox of a PID now reused: its
                // processes are gone with that process.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                r => r.with_context(|| format!("cannot create the cgroup {}", dir.display())),
            }
        };
        let set = |dir: &Path, file: &str, value: u64| -> Result<()> {
            write(&dir.join(file), &value.to_string())
                .with_context(|| format!("cannot set {} to {value}", dir.join(file).display()))
        };
        let open = |dir: &Path, file: &str, w: bool| -> Result<OwnedFd> {
            let f = fs::OpenOptions::new()
                .read(!w)
                .write(w)
                .custom_flags(libc::O_CLOEXEC)
                .open(dir.join(file))
                .with_context(|| format!("cannot open {}", dir.join(file).display()))?;
            Ok(f.into())
        };
        let (lim, memory_max) = (self.limits, "memory.max");
        match &self.tree {
            Tree::V2(base) => {
                let dir = base.join(&name);
                mkdir(&dir)?;
                cg.dirs.push(dir.clone());
                if lim.processes > 0 {
                    set(&dir, "pids.max", lim.processes)?;
                    cg.events.pids = Some(open(&dir, "pids.events", false)?);
                }
                if lim.memory > 0 {
                    set(&dir, memory_max, lim.memory)?;
                    // Swap would let a hog go on past the limit, slowly.
                    if dir.join("memory.swap.max").exists() {
                        set(&dir, "memory.swap.max", 0)?;
                    }
                    cg.events.memory = Some(open(&dir, "memory.events", false)?);
                }
                cg.procs.push(open(&dir, "cgroup.procs", true)?);
            }
            Tree::V1 { pids, memory } => {
                if lim.processes > 0 {
                    let dir = pids.join(&name);
                    mkdir(&dir)?;
                    cg.dirs.push(dir.clone());
                    set(&dir, "pids.max", lim.processes)?;
                    cg.events.pids = Some(open(&dir, "pids.events", false)?);
                    cg.procs.push(open(&dir, "tasks", true)?);
                }
                if lim.memory > 0 {
                    let dir = memory.join(&name);
                    mkdir(&dir)?;
                    cg.dirs.push(dir.clone());
                    set(&dir, "memory.limit_in_bytes", lim.memory)?;
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        set(&dir, "memory.memsw.limit_in_bytes", lim.memory)?;
                    }
                    cg.events.memory = Some(open(&dir, "memory.oom_control", false)?);
                    cg.procs.push(open(&dir, "tasks", true)?);
                }
            }
        }
        Ok(cg)
    }
}

/// The counters a sandbox's limits leave: how often a fork was refused
/// at `pids.max`, how many processes the OOM killer took at the memory
/// limit. Read through descriptors opened before the sandbox's root was
/// built (the cgroup filesystem is not in the sandbox).
#[derive(Debug, Default)]
pub struct Events {
    pids: Option<OwnedFd>,
    memory: Option<OwnedFd>,
}

/// What [`Events::read`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub refused_forks: u64,
    pub oom_kills: u64,
}

fn counter(fd: RawFd, key: &str) -> u64 {
    let mut buf = [0u8; 512];
    // SAFETY: pread into a buffer of its length from a descriptor we own.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n <= 0 {
        return 0;
    }
    String::from_utf8_lossy(&buf[..n as usize])
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

impl Events {
    pub fn read(&self) -> Counts {
        Counts {
            refused_forks: self
                .pids
                .as_ref()
                .map_or(0, |f| counter(f.as_raw_fd(), "max")),
            oom_kills: self
                .memory
                .as_ref()
                .map_or(0, |f| counter(f.as_raw_fd(), "oom_kill")),
        }
    }

    /// The descriptors, released, for the init to keep across
    /// [`super::security::detach`]: `pids.events` first when there is one.
    pub fn into_raw(self) -> (Vec<RawFd>, bool) {
        use std::os::fd::IntoRawFd;
        let has_pids = self.pids.is_some();
        let fds = self
            .pids
            .into_iter()
            .chain(self.memory)
            .map(IntoRawFd::into_raw_fd)
            .collect();
        (fds, has_pids)
    }

    /// The counters again, from what [`Events::into_raw`] gave.
    ///
    /// # Safety
    /// `fds` are open, owned by the caller, and in [`Events::into_raw`]'s
    /// order and shape.
    pub unsafe fn from_raw(fds: &[RawFd], has_pids: bool, has_memory: bool) -> Events {
        use std::os::fd::FromRawFd;
        let mut it = fds.iter().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) });
        let pids = if has_pids { it.next() } else { None };
        let memory = if has_memory { it.next() } else { None };
        Events { pids, memory }
    }
}

/// The limits hit since `before`, as the step's error.
pub fn hit(limits: &Limits, before: Counts, now: Counts) -> Option<String> {
    if now.oom_kills > before.oom_kills {
        Some(limits.memory_hit())
    } else if now.refused_forks > before.refused_forks {
        Some(limits.processes_hit())
    } else {
        None
    }
}

/// The one sandbox's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    /// What [`Cgroup::join`] writes to, open for writing: `cgroup.procs`
    /// on v2, `tasks` of each directory on v1.
    procs: Vec<OwnedFd>,
    pub events: Events,
    v2: bool,
    pub limits: Limits,
}

/// In a sandbox's init: its cgroup's counters and limits, for the steps'
/// watchdogs (`crate::exec::Watchdog`).
static IN_SANDBOX: OnceLock<(Events, Limits)> = OnceLock::new();

/// Makes `events` the counters [`current`] reads (in a sandbox's init).
pub fn set_current(events: Events, limits: Limits) {
    let _ = IN_SANDBOX.set((events, limits));
}

/// The counters and limits of the sandbox this process is the init of.
pub fn current() -> Option<&'static (Events, Limits)> {
    IN_SANDBOX.get()
}

impl Cgroup {
    /// In the sandbox's first process, before anything else forks: moves
    /// it into the cgroup and marks it first for a machine's OOM killer.
    /// Only plain syscalls (it runs in a fork of a threaded process).
    ///
    /// On v1 it writes `0` (the caller) to `tasks`: the kernel moves one
    /// thread then — the whole process, a fork being single-threaded —
    /// without taking the write side of `cgroup_threadgroup_rwsem`, which
    /// a write to `cgroup.procs` (or of a PID) takes and which waits for
    /// an RCU grace period: 2.5–17 ms a write on this machine, two per
    /// sandbox, against 0.03–0.07 ms (`cgroup_procs_write_start`: the
    /// lock is skipped only for `current` and one thread). v2 refuses a
    /// thread's move between domain cgroups (EOPNOTSUPP), so it writes
    /// the PID to `cgroup.procs` and pays the grace period.
    pub fn join(&self) -> io::Result<()> {
        let mut buf = [0u8; 16];
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let text: &[u8] = if self.v2 {
            itoa(pid as u64, &mut buf)
        } else {
            b"0"
        };
        for fd in &self.procs {
            // SAFETY: a write of a buffer of its length to our descriptor.
            if unsafe { libc::write(fd.as_raw_fd(), text.as_ptr().cast(), text.len()) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let adj = fs::OpenOptions::new()
            .write(true)
            .open("/proc/self/oom_score_adj");
        adj.and_then(|mut f| f.write_all(OOM_SCORE_ADJ.as_bytes()))
    }
}

impl Drop for Cgroup {
    /// Kills what is left in the cgroup (`cgroup.kill` on v2; on v1, where
    /// the init's PID namespace has already taken its processes, a
    /// SIGKILL to any straggler) and removes it.
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.procs));
        let first = self.dirs.first().cloned();
        if let Some(dir) = &first {
            if self.v2 && dir.join("cgroup.kill").exists() {
                let _ = write(&dir.join("cgroup.kill"), "1");
            }
        }
        for dir in &self.dirs {
            // The PID namespace has taken every process by now; a loaded
            // machine may still be tearing them down: up to 5 s.
            let mut last = None;
            for attempt in 0..250 {
                match fs::remove_dir(dir) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        if !self.v2 || !dir.join("cgroup.kill").exists() {
                            let procs = fs::read_to_string(dir.join("cgroup.procs"));
                            for pid in procs.unwrap_or_default().lines() {
                                if let Ok(pid) = pid.parse::<i32>() {
                                    // SAFETY: plain kill of a sandbox process.
                                    unsafe { libc::kill(pid, libc::SIGKILL) };
                                }
                            }
                        }
                        let ms = if attempt < 50 { 2 } else { 20 };
                        std::thread::sleep(std::time::Duration::from_millis(ms));
                    }
                }
            }
            if let Some(e) = last {
                let left = fs::read_to_string(dir.join("cgroup.procs"))
                    .map(|p| p.lines().count())
                    .unwrap_or(0);
                crate::output::warning(&format!(
                    "cannot remove the sandbox's cgroup {} ({e}; {left} process(es) in it): the next dance removes it",
                    dir.display()
                ));
            }
        }
    }
}

/// `n` in decimal, without allocating.
fn itoa(mut n: u64, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names() {
        let mut b = [0u8; 16];
        assert_eq!(itoa(0, &mut b), b"0");
        assert_eq!(itoa(4096, &mut b), b"4096");
        assert_eq!(gib(2 << 30), "2.0 GiB");
        assert_eq!(gib(512 << 20), "512 MiB");
        let l = Limits {
            processes: 64,
            memory: 1 << 30,
        };
        let zero = Counts::default();
        assert_eq!(hit(&l, zero, zero), None);
        let forks = Counts {
            refused_forks: 3,
            oom_kills: 0,
        };
        assert_eq!(
            hit(&l, zero, forks).unwrap(),
            "more than 64 processes (max_processes)"
        );
        let oom = Counts {
            refused_forks: 3,
            oom_kills: 1,
        };
        assert_eq!(
            hit(&l, forks, oom).unwrap(),
            "killed at the memory limit of 1.0 GiB (max_memory)"
        );
    }
}
