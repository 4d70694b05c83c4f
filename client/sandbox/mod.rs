//! Stage 5, sandbox (DESIGN §5): runs a piece of work for one layer inside
//! a private mount namespace whose root is an overlay stack over ROOT.
//!
//! For layer *i* a child process unshares its namespaces (mount always;
//! PID, network, UTS and IPC too in noop), mounts one overlay per real
//! filesystem of ROOT with `lowerdir = upper(i-1):…:upper(1):[shims]:ROOT`,
//! adds fresh `/proc` (`/proc/sys` read-only), read-only `/sys`, a minimal
//! `/dev`, tmpfs `/tmp` and `/run`, binds disco's own files under
//! `/run/disco`, `pivot_root`s into the result and, in noop, drops the
//! capabilities that reach outside. The work then runs there and sends its
//! result back over a pipe as JSON. Nothing is ever mounted in the host's
//! namespace, so nothing needs unmounting: when the child exits, its
//! namespace and every mount in it are gone; in noop the PID namespace
//! takes every process the work left behind with it.

pub mod mounts;
pub mod shims;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::run::{Layout, Mount, RunDir};
use mounts::{MountOp, RootPlan, SandboxError};

/// Where disco's own files appear inside the sandbox.
pub const DISCO_DIR: &str = "/run/disco";

/// A file or directory of the host bound into the sandbox.
#[derive(Debug, Clone)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute path inside the sandbox (under [`DISCO_DIR`]).
    pub inside: PathBuf,
    pub readonly: bool,
}

/// Everything fixed for the whole run: ROOT, its filesystems, the shim layer.
#[derive(Debug)]
pub struct Sandbox {
    pub run: RunDir,
    /// Canonical ROOT.
    pub root: PathBuf,
    pub mounts: Vec<Mount>,
    shims: Vec<bool>,
    pub noop: bool,
}

/// The result of work done in a sandbox, and what it left behind.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome<T> {
    pub value: Result<T, String>,
    /// Processes still running when the work ended (noop: killed with the
    /// sandbox), as `pid comm: cmdline`.
    pub leftovers: Vec<String>,
}

/// Capabilities that reach outside the sandbox, dropped in noop.
const DROPPED_CAPS: &[caps::Capability] = {
    use caps::Capability::*;
    &[
        CAP_SYS_ADMIN,
        CAP_SYS_MODULE,
        CAP_SYS_BOOT,
        CAP_SYS_TIME,
        CAP_SYS_RAWIO,
        CAP_SYS_PTRACE,
        CAP_NET_ADMIN,
        CAP_MKNOD,
        CAP_SYS_CHROOT,
        CAP_SYS_PACCT,
        CAP_SYS_TTY_CONFIG,
        CAP_SYSLOG,
        CAP_WAKE_ALARM,
        CAP_BLOCK_SUSPEND,
        CAP_MAC_ADMIN,
        CAP_MAC_OVERRIDE,
        CAP_AUDIT_CONTROL,
        CAP_LINUX_IMMUTABLE,
        CAP_BPF,
        CAP_PERFMON,
        CAP_CHECKPOINT_RESTORE,
    ]
};

impl Sandbox {
    /// Inspects ROOT (canonical path, filesystems below it) and builds the
    /// shim layer in the run directory.
    /// On failure the run directory is removed (nothing half-made stays).
    pub fn prepare(run: RunDir, root: &Path, noop: bool, layers: &[String]) -> Result<Sandbox> {
        let path = run.path.clone();
        let prepared = Self::prepare_in(run, root, noop, layers);
        if prepared.is_err() {
            crate::run::unmount_mem(&path);
            let _ = fs::remove_dir_all(&path);
        }
        prepared
    }

    fn prepare_in(run: RunDir, root: &Path, noop: bool, layers: &[String]) -> Result<Sandbox> {
        check_overlayfs()?;
        let root = fs::canonicalize(root).with_context(|| format!("root {}", root.display()))?;
        if !root.is_dir() {
            bail!("root {} is not a directory", root.display());
        }
        for p in [&root, &run.path] {
            mounts::check_option_safe(p).map_err(|e| anyhow!(e))?;
        }
        if layers.len() > 450 {
            bail!(
                "{} modules are more than one overlay stack can hold (450)",
                layers.len()
            );
        }
        let info = fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo")?;
        let mounts = mounts::overlay_mounts(&root, &mounts::parse_mountinfo(&info));
        for m in &mounts {
            mounts::check_option_safe(&root.join(&m.rel)).map_err(|e| anyhow!(e))?;
        }
        fs::DirBuilder::new()
            .mode(0o755)
            .create(run.merged())
            .context("cannot create the merged dir")?;
        if inside_an_overlaid_filesystem(&run.path, &root, &mounts) {
            // The layers cannot live below a lower layer's root on the same
            // filesystem (overlayfs: "overlapping lowerdir"): keep them in a
            // private tmpfs for the run; the merge then takes the copy path.
            let mem = run.path.join(crate::run::MEM);
            fs::DirBuilder::new().mode(0o700).create(&mem)?;
            mount(
                Some("disco-scratch"),
                &mem,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=700"),
            )
            .map_err(|errno| SandboxError::Sys {
                what: format!("cannot mount the in-memory scratch {}", mem.display()),
                errno,
            })?;
        }
        let layers_dir = run.layers();
        for d in ["u", "w", "s"] {
            fs::create_dir(layers_dir.join(d))
                .with_context(|| format!("cannot create {}", layers_dir.join(d).display()))?;
        }
        let shims = shims::build(&run, &root, &mounts, noop)?;
        run.save_layout(&Layout {
            root: root.clone(),
            layers: layers.to_vec(),
            mounts: mounts.clone(),
        })?;
        Ok(Sandbox {
            run,
            root,
            mounts,
            shims,
            noop,
        })
    }

    /// The differ of this sandbox's layers, with ROOT's owner names.
    pub fn differ<'a>(&'a self, owners: &'a crate::diff::Owners) -> crate::diff::Differ<'a> {
        crate::diff::Differ {
            run: &self.run,
            root: &self.root,
            mounts: &self.mounts,
            owners,
        }
    }

    /// Runs `body` inside the sandbox of `layer` (1-based), in a child
    /// process. Errors of the sandbox itself come back as `Err`; the
    /// body's own result is in the [`Outcome`].
    pub fn run_layer<T, F>(&self, layer: usize, binds: &[Bind], body: F) -> Result<Outcome<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Result<T>,
    {
        for (k, m) in self.mounts.iter().enumerate() {
            let upper = self.run.upper(layer, k);
            fs::create_dir(&upper).with_context(|| format!("cannot create {}", upper.display()))?;
            // The overlay's root directory is the upper's: give it ROOT's attributes.
            let meta = fs::metadata(self.root.join(&m.rel))?;
            fs::set_permissions(&upper, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            std::os::unix::fs::lchown(&upper, Some(meta.uid()), Some(meta.gid()))?;
            fs::create_dir(self.run.work(layer, k))?;
        }
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        // SAFETY: disco is single-threaded here; the child only runs Rust
        // code of this process and ends with _exit.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                drop(reader);
                let code = self.child(layer, binds, writer, body);
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(writer);
                let mut buf = Vec::new();
                let read = fs::File::from(reader).read_to_end(&mut buf);
                let status = waitpid(child, None).context("waitpid")?;
                read.context("reading the sandbox's result")?;
                if buf.is_empty() {
                    bail!("the sandbox ended without a result ({})", describe(status));
                }
                serde_json::from_slice(&buf).context("the sandbox's result is damaged")
            }
        }
    }

    /// In the forked child: unshare, then (noop) fork the PID namespace's
    /// init, which builds the root and runs the body.
    fn child<T: Serialize, F: FnOnce() -> Result<T>>(
        &self,
        layer: usize,
        binds: &[Bind],
        out: OwnedFd,
        body: F,
    ) -> i32 {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        let mut flags = CloneFlags::CLONE_NEWNS;
        if self.noop {
            flags |= CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC;
        }
        if let Err(e) = unshare(flags) {
            return send::<T>(
                &out,
                Err(format!("cannot unshare namespaces: {}", e.desc())),
                Vec::new(),
            );
        }
        if !self.noop {
            return self.init(layer, binds, out, body);
        }
        // SAFETY: single-threaded, as above.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let code = self.init(layer, binds, out, body);
                // SAFETY: as above.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { child }) => {
                drop(out);
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => code,
                    _ => 1,
                }
            }
            Err(e) => send::<T>(&out, Err(format!("fork: {}", e.desc())), Vec::new()),
        }
    }

    /// Builds the root, runs the body, reports.
    fn init<T: Serialize, F: FnOnce() -> Result<T>>(
        &self,
        layer: usize,
        binds: &[Bind],
        out: OwnedFd,
        body: F,
    ) -> i32 {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        if !self.noop {
            // Orphans of the body's processes come to us, so none outlives the module.
            let _ = nix::sys::prctl::set_child_subreaper(true);
        }
        let entered = self.enter(layer, binds).map_err(|e| format!("{e:#}"));
        let value = entered
            .clone()
            .and_then(|()| body().map_err(|e| format!("{e:#}")));
        // Only once inside is /proc this PID namespace's own.
        let leftovers = match (self.noop, entered.is_ok()) {
            (true, true) => leftover_processes(),
            (false, true) => kill_orphans(),
            _ => Vec::new(),
        };
        send(&out, value, leftovers)
    }

    /// Mounts the root of `layer` and pivots into it.
    fn enter(&self, layer: usize, binds: &[Bind]) -> Result<()> {
        nix::unistd::chdir(&self.run.layers()).context("chdir to the run's layers")?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|errno| SandboxError::Sys {
            what: "cannot make the mount namespace private".into(),
            errno,
        })?;
        let merged = self.run.merged();
        let mut ops = mounts::root_ops(&RootPlan {
            root: &self.root,
            mounts: &self.mounts,
            layer,
            shims: &self.shims,
            merged: &merged,
        });
        for b in binds {
            ops.push(MountOp::Bind {
                source: b.source.clone(),
                target: merged.join(b.inside.strip_prefix("/").unwrap_or(&b.inside)),
                readonly: b.readonly,
            });
        }
        for op in &ops {
            mounts::apply(op)?;
        }
        if self.noop {
            loopback_up()?;
        }
        nix::unistd::chdir(&merged).context("chdir to the merged root")?;
        nix::unistd::pivot_root(".", ".").map_err(|errno| SandboxError::Sys {
            what: "pivot_root".into(),
            errno,
        })?;
        umount2(".", MntFlags::MNT_DETACH).map_err(|errno| SandboxError::Sys {
            what: "detaching the old root".into(),
            errno,
        })?;
        nix::unistd::chdir("/").context("chdir /")?;
        if self.noop {
            drop_capabilities()?;
        }
        Ok(())
    }
}

/// True when `dir` is inside one of the filesystems the sandbox overlays,
/// below that overlay's lower layer.
fn inside_an_overlaid_filesystem(dir: &Path, root: &Path, mounts: &[Mount]) -> bool {
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
    let Ok(dir) = fs::canonicalize(dir) else {
        return false;
    };
    mounts.iter().any(|m| {
        let lower = root.join(&m.rel);
        dir.starts_with(&lower) && dev(&dir) == dev(&lower) && dev(&dir).is_some()
    })
}

fn send<T: Serialize>(out: &OwnedFd, value: Result<T, String>, leftovers: Vec<String>) -> i32 {
    let ok = value.is_ok();
    let outcome = Outcome { value, leftovers };
    let bytes = serde_json::to_vec(&outcome).unwrap_or_default();
    let mut file = fs::File::from(out.try_clone().expect("dup of the result pipe"));
    let written = file.write_all(&bytes).is_ok();
    if ok && written {
        0
    } else {
        1
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

/// One clear line when the kernel cannot do overlayfs.
fn check_overlayfs() -> Result<()> {
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fss
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return Ok(());
    }
    // It may be a module that is not loaded yet; the first mount loads it.
    let _ = std::process::Command::new("modprobe")
        .arg("overlay")
        .status();
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fss
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        Ok(())
    } else {
        bail!("this kernel has no overlayfs (not in /proc/filesystems, and `modprobe overlay` did not add it); disco's sandbox needs it")
    }
}

/// Brings `lo` up in the new network namespace (nothing else exists there).
fn loopback_up() -> Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed, correctly sized ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            let r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
            libc::close(fd);
            if r != 0 {
                bail!("cannot bring up lo: {}", std::io::Error::last_os_error());
            }
        } else {
            libc::close(fd);
            bail!(
                "cannot read lo's flags: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Drops [`DROPPED_CAPS`] from every set, the bounding set included, so
/// neither this process nor anything it executes can get them back.
fn drop_capabilities() -> Result<()> {
    use caps::CapSet;
    let supported = caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all());
    for cap in DROPPED_CAPS.iter().filter(|c| supported.contains(c)) {
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(|e| anyhow!("cannot drop {cap} from the bounding set: {e}"))?;
    }
    // One capset per set, with everything dropped at once.
    for set in [CapSet::Effective, CapSet::Inheritable, CapSet::Permitted] {
        let mut keep =
            caps::read(None, set).map_err(|e| anyhow!("cannot read capabilities: {e}"))?;
        for cap in DROPPED_CAPS {
            keep.remove(cap);
        }
        caps::set(None, set, &keep).map_err(|e| anyhow!("cannot drop capabilities: {e}"))?;
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| anyhow!("cannot clear ambient capabilities: {e}"))?;
    Ok(())
}

/// Live mode: kills what the body left running (reparented to us, the
/// subreaper) and returns what it was.
fn kill_orphans() -> Vec<String> {
    let me = std::process::id();
    let mut killed = Vec::new();
    for _ in 0..100 {
        let children: Vec<(u32, String)> = fs::read_dir("/proc")
            .map(|e| {
                e.flatten()
                    .filter_map(|e| {
                        let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                        let stat = fs::read_to_string(e.path().join("stat")).ok()?;
                        let after = &stat[stat.rfind(')')? + 2..];
                        let ppid: u32 = after.split(' ').nth(1)?.parse().ok()?;
                        (ppid == me).then(|| (pid, describe_process(&e.path())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if children.is_empty() {
            break;
        }
        for (pid, what) in children {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            killed.push(what);
        }
    }
    killed.sort();
    killed
}

fn describe_process(proc_dir: &Path) -> String {
    let comm = fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    let cmdline = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let cmd: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    format!("{} ({})", cmd.join(" "), comm.trim())
}

/// Other processes still alive in this PID namespace (we are its init).
fn leftover_processes() -> Vec<String> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        out.push(describe_process(&e.path()));
    }
    out.sort();
    out
}
