//! A Debian 12 root with systemd, booted as a container: `debootstrap
//! --variant=minbase --include=systemd,systemd-sysv,dbus,openssh-client`
//! built once (cached under `target/debian-bookworm-systemd`, shared by
//! every test binary through a lock, as `debian.rs` does), copied per
//! test and booted with `systemd-nspawn -b`, systemd as its PID 1.
//!
//! The container shares the host's network namespace (no
//! `--private-network`): it reaches a test's sshd on 127.0.0.1 and the
//! Debian mirror as the host does. So it must listen on nothing of its
//! own: minbase has no sshd, and the units that would run apt, fstrim or
//! e2scrub behind a test's back are masked in the template. The loop
//! devices of the host are bound in (disco's scratch image is
//! loop-mounted).
//!
//! nspawn runs with `--register=no --keep-unit`: no machined or D-Bus of
//! the host is needed (a host without systemd as PID 1 has neither), and
//! it is put in a cgroup of its own (in each hierarchy the test process
//! is in), so that what it leaves can be killed and removed; killed
//! outright, a test's nspawn gets SIGTERM (its parent-death signal) and
//! halts the container, and the next boot removes the empty cgroups left. Commands run
//! inside with `nsenter -t LEADER -a` (every namespace of the
//! container's PID 1). Dropping a [`Container`] powers it off (SIGTERM to
//! nspawn: systemd halts), kills what is left after 30 s, and removes its
//! cgroups and nspawn's propagation directory, even when a test failed.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Units of the template that would act behind a test's back (apt, disk
/// maintenance) or on a console nobody reads: masked.
const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "getty@tty1.service",
];

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A fresh copy of the systemd root in `dir/booted`, or `None` (said on
/// stderr in one `skipped:` line) when it cannot be made here.
pub fn root(dir: &Path) -> Option<PathBuf> {
    let (template, _lock) = super::debian::cached(
        &super::debian::cache_dir("debian-bookworm-systemd"),
        &["--include=systemd,systemd-sysv,dbus,openssh-client"],
        prepare,
    )?;
    Some(super::debian::copy(&template, &dir.join("booted")))
}

/// What the template needs beyond debootstrap: the masks and a hostname
/// of its own (debootstrap copies the host's).
fn prepare(root: &Path) {
    let etc = root.join("etc/systemd/system");
    for unit in MASKED {
        let link = etc.join(unit);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    }
    fs::write(root.join("etc/hostname"), "booted\n").unwrap();
}

/// A booted container. Powered off, and everything it left removed, on drop.
pub struct Container {
    pub name: String,
    pub root: PathBuf,
    /// The container's PID 1 (systemd) as the host sees it.
    pub leader: i32,
    /// How long the boot took, from nspawn's start to
    /// `systemctl is-system-running --wait`.
    pub boot_time: Duration,
    /// What `systemctl is-system-running --wait` said.
    pub state: String,
    /// The command line that booted it, for reports.
    pub command: String,
    nspawn: Child,
    cgroups: Vec<PathBuf>,
}

/// The cgroups a process of ours may be put in: one new child of our own
/// cgroup in each hierarchy that tracks processes (the v2 one, and
/// name=systemd of a hybrid or legacy host).
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let mount = match (id, ctl) {
            ("0", "") if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() => {
                "/sys/fs/cgroup/unified"
            }
            ("0", "") if Path::new("/sys/fs/cgroup/cgroup.procs").exists() => "/sys/fs/cgroup",
            (_, "name=systemd") => "/sys/fs/cgroup/systemd",
            _ => continue,
        };
        dirs.push(
            Path::new(mount)
                .join(path.trim_start_matches('/'))
                .join(name),
        );
    }
    dirs
}

impl Container {
    /// Boots `root` as machine `name`, its console to `console`, and waits
    /// until systemd says it is up (`running` or not). `Err` says why it
    /// could not boot here.
    pub fn boot(root: &Path, name: &str, console: &Path) -> Result<Container, String> {
        if Command::new("systemd-nspawn")
            .arg("--version")
            .output()
            .is_err()
        {
            return Err("systemd-nspawn is not installed (systemd-container; scripts/install-test-deps installs it)".into());
        }
        let cgroups = cgroup_dirs(name);
        sweep(&cgroups);
        let mut procs = Vec::new();
        for d in &cgroups {
            fs::create_dir_all(d)
                .map_err(|e| format!("cannot make the cgroup {}: {e}", d.display()))?;
            procs
                .push(CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes()).unwrap());
        }
        let mut args: Vec<String> = vec![
            "-b".into(),
            "-D".into(),
            root.display().to_string(),
            format!("--machine={name}"),
            "--register=no".into(),
            "--keep-unit".into(),
            "--console=pipe".into(),
        ];
        // disco's scratch image is loop-mounted: the host's loop devices.
        let mut loops: Vec<String> = fs::read_dir("/dev")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        n == "loop-control"
                            || n.strip_prefix("loop").is_some_and(|k| {
                                !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())
                            })
                    })
                    .collect()
            })
            .unwrap_or_default();
        loops.sort();
        for l in loops {
            args.push(format!("--bind=/dev/{l}"));
        }
        let command = format!("systemd-nspawn {}", args.join(" "));
        let log = fs::File::create(console).unwrap();
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl, open/write/close only, between fork and exec: the
        // child joins its own cgroups ("0" is the writer itself).
        unsafe {
            cmd.pre_exec(move || {
                // A test killed outright: nspawn is told to halt the container.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let nspawn = cmd
            .spawn()
            .map_err(|e| format!("cannot run systemd-nspawn: {e}"))?;
        let mut c = Container {
            name: name.to_string(),
            root: root.to_path_buf(),
            leader: 0,
            boot_time: Duration::ZERO,
            state: String::new(),
            command,
            nspawn,
            cgroups,
        };
        let said = |why: &str| {
            let log = fs::read_to_string(console).unwrap_or_default();
            let last: Vec<&str> = log.lines().rev().take(3).collect();
            format!(
                "{why}: {}",
                last.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )
        };
        // The leader: nspawn's child once it runs systemd.
        loop {
            if let Ok(Some(st)) = c.nspawn.try_wait() {
                return Err(said(&format!(
                    "systemd-nspawn -b exited ({st}) before systemd ran"
                )));
            }
            if let Some(pid) = children(c.nspawn.id() as i32)
                .into_iter()
                .find(|p| comm(*p).as_deref() == Some("systemd"))
            {
                c.leader = pid;
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(said("systemd did not start in the container within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Until systemd has made its socket, systemctl cannot ask it.
        let o = loop {
            let o = c.run_with_timeout(&["systemctl", "is-system-running", "--wait"], 180);
            let early = o.stdout.is_empty()
                && String::from_utf8_lossy(&o.stderr).contains("Failed to connect to bus");
            if !early || started.elapsed() > Duration::from_secs(60) {
                break o;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        c.state = String::from_utf8_lossy(&o.stdout).trim().to_string();
        c.boot_time = started.elapsed();
        if c.state.is_empty() || c.state == "offline" || c.state == "unknown" {
            return Err(said(&format!(
                "systemctl is-system-running --wait in the container said {:?} ({})",
                c.state,
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        Ok(c)
    }

    /// `nsenter -t LEADER -a` (every namespace of the container's PID 1),
    /// a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", "/root")
            .args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(args);
        c
    }

    /// Runs `args` inside.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs `args` inside, killed after `secs` seconds.
    pub fn run_with_timeout(&self, args: &[&str], secs: u32) -> Output {
        let mut all = vec!["timeout".to_string(), format!("{secs}s")];
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.run(&all)
    }

    /// The stdout of `args` run inside, which must succeed.
    pub fn out(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} in the container: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The stdout of `args` run inside, whatever its exit status, trimmed.
    pub fn said(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.run(args).stdout)
            .trim()
            .to_string()
    }

    /// Every process of the container's cgroups, as the host sees them.
    fn processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for d in &self.cgroups {
            walk_procs(d, &mut pids);
        }
        pids.sort();
        pids.dedup();
        pids
    }
}

fn walk_procs(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk_procs(&e.path(), pids);
            }
        }
    }
}

/// The empty cgroups beside `ours` that containers of test processes now
/// gone left (`disco-WHAT-PID`, a test killed outright): removed. A cgroup
/// with a process in it stays (rmdir refuses it).
fn sweep(ours: &[PathBuf]) {
    for dir in ours {
        let Some(parent) = dir.parent() else { continue };
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("disco-")
                .and_then(|r| r.rsplit('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                remove_cgroup(&e.path());
            }
        }
    }
}

/// Removes `dir` and the cgroups below it, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

impl Drop for Container {
    fn drop(&mut self) {
        let nspawn = self.nspawn.id() as i32;
        // SIGTERM: nspawn asks the container's systemd to halt.
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(nspawn, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left (a halt that hung): killed.
        for _ in 0..50 {
            let left = self.processes();
            if left.is_empty() {
                break;
            }
            for pid in left {
                // SAFETY: processes of the container's own cgroups.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        for _ in 0..50 {
            for d in &self.cgroups {
                remove_cgroup(d);
            }
            if self.cgroups.iter().all(|d| !d.exists()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
    }
}
