//! The noop sandboxes' network (DESIGN §5): owns the one network namespace
//! per dance that every noop sandbox enters, and, with
//! `noop_network = "host"`, the helper that routes it outward.
//!
//! `"none"`: the namespace has loopback only. `"host"`: it also has a tap
//! interface served by pasta (Debian's package passt), started with every
//! port forward off (`-t/-u/-T/-U none`) and `--no-map-gw` (the gateway
//! is the real one, not the host's loopback): the namespace reaches what
//! the host reaches through its non-loopback routes, and nothing of the
//! host's own — its loopback, its abstract Unix sockets, its traffic —
//! is in it. DNS: pasta forwards queries sent to [`DNS_FORWARD`] to the
//! host's resolver; 127.0.0.1 (the C library's default) and the
//! loopback resolvers the root's `resolv.conf` names are answered by a
//! relay living in the namespace that passes each UDP query on to the
//! host's resolver.
//!
//! pasta and the relay run in a PID namespace of their own whose init is
//! the relay, a child of a helper that dies with disco (`PR_SET_PDEATHSIG`
//! on both): when disco ends, however it ends, the init dies and the
//! kernel kills pasta with it. [`NoopNet`]'s drop kills the helper; a
//! pasta that ends on its own ends the relay and the helper, which disco,
//! waiting for the network to come up, says in one line with pasta's last.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// The address in the namespace whose port 53 pasta forwards to the
/// host's resolver (link-local: nothing else answers there).
pub const DNS_FORWARD: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 53);

/// How long pasta may take to bring the namespace's interface up.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// The noop network namespace of a dance and, routed, its helper.
#[derive(Debug)]
pub struct NoopNet {
    ns: OwnedFd,
    /// The helper (pasta's PID namespace's parent), killed on drop.
    helper: Option<Pid>,
}

impl NoopNet {
    /// The namespace, for `setns`.
    pub fn ns(&self) -> &OwnedFd {
        &self.ns
    }

    /// `noop_network = "none"`: loopback only.
    pub fn loopback() -> Result<NoopNet> {
        Ok(NoopNet {
            ns: loopback_namespace()?,
            helper: None,
        })
    }

    /// `noop_network = "host"`: loopback and a route outward through
    /// pasta; DNS as the root's `resolv.conf` asks (see the module doc).
    /// `log` is where pasta's own messages go (in the run directory).
    pub fn routed(root: &Path, log: &Path) -> Result<NoopNet> {
        let pasta = find_pasta().ok_or_else(|| {
            anyhow!("noop_network = \"host\" needs pasta, which is not installed: install the Debian package passt (or set noop_network = \"none\")")
        })?;
        let ns = loopback_namespace()?;
        let resolvers = loopback_resolvers(root);
        // The host's resolver: through pasta like any address, or, when
        // it is on the host's loopback, through pasta's DNS forward (which
        // makes its answers come from DNS_FORWARD: not asked for when the
        // resolver is reachable, or a script asking it directly would get
        // its answers from the wrong address).
        let host_dns = fs::read_to_string("/etc/resolv.conf")
            .map(|t| nameservers(&t))
            .unwrap_or_default()
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let dns_forward = host_dns.is_loopback();
        let upstream = if dns_forward {
            SocketAddr::from((DNS_FORWARD, 53))
        } else {
            SocketAddr::new(host_dns, 53)
        };
        // The relay's sockets, made in the namespace (a socket stays in
        // the namespace it was made in).
        let sockets = in_namespace(&ns, || {
            let mut down = Vec::new();
            for ip in &resolvers {
                // One the namespace cannot have (::1 with IPv6 off) is left out.
                if let Ok(s) = UdpSocket::bind(SocketAddr::new(*ip, 53)) {
                    down.push(s);
                }
            }
            // (Not connected: the route to it comes with pasta, later.)
            let any = if upstream.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let up = UdpSocket::bind(any).context("the DNS relay's socket")?;
            Ok(Relay { down, up, upstream })
        })?;
        let log_file =
            fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let _ = std::io::Write::flush(&mut std::io::stderr());
        // SAFETY: the children run only this process's Rust code and end
        // with _exit (or exec pasta); disco's one other thread (the
        // deadline's) holds no lock while it waits.
        let helper = match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                let code = helper((&pasta, dns_forward), &ns, log_file, sockets);
                // SAFETY: leaving the forked child without the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => child,
        };
        drop(sockets);
        let mut net = NoopNet {
            ns,
            helper: Some(helper),
        };
        net.wait_ready(log)?;
        Ok(net)
    }

    /// Until pasta has put a default route in the namespace.
    fn wait_ready(&mut self, log: &Path) -> Result<()> {
        let start = Instant::now();
        loop {
            let routed = in_namespace(&self.ns, || {
                Ok(fs::read_to_string("/proc/thread-self/net/route")
                    .unwrap_or_default()
                    .lines()
                    .skip(1)
                    .any(|l| l.split_whitespace().nth(1) == Some("00000000")))
            })?;
            if routed {
                return Ok(());
            }
            let said = || {
                let text = fs::read_to_string(log).unwrap_or_default();
                text.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty() && !l.contains("syslog"))
                    .map(|l| format!(": pasta said: {}", l.trim()))
                    .unwrap_or_default()
            };
            if let Some(pid) = self.helper {
                if !matches!(
                    waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                    Ok(WaitStatus::StillAlive)
                ) {
                    // Reaped: its PID is no longer ours to kill.
                    self.helper = None;
                    bail!(
                        "noop_network = \"host\": pasta ended before the noop network was up{}",
                        said()
                    );
                }
            }
            if start.elapsed() > READY_WITHIN {
                bail!(
                    "noop_network = \"host\": pasta did not bring the noop network up within {} s{}",
                    READY_WITHIN.as_secs(),
                    said()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NoopNet {
    fn drop(&mut self) {
        if let Some(pid) = self.helper.take() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// pasta on the usual paths.
fn find_pasta() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("pasta"))
        .find(|p| p.is_file())
}

/// 127.0.0.1, the C library's resolver when `resolv.conf` names none or
/// is not there (systemd-resolved's link points into `/run`, which is the
/// sandbox's own, empty), and the other loopback resolvers the root's
/// `resolv.conf` names.
fn loopback_resolvers(root: &Path) -> Vec<IpAddr> {
    let text = crate::rootpath::resolve(root, Path::new("etc/resolv.conf"), true)
        .ok()
        .and_then(|p| {
            crate::fsutil::read_small(&root.join(p), "etc/resolv.conf", 1 << 16)
                .ok()
                .flatten()
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut out = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    for a in nameservers(&text) {
        if a.is_loopback() && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The `nameserver` addresses of a `resolv.conf`, in order.
fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next()?.split('%').next()?.parse::<IpAddr>().ok())
                .flatten()
        })
        .collect()
}

/// Runs `f` with this thread in `ns`, then back in the network namespace
/// it was in.
fn in_namespace<T>(ns: &OwnedFd, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let host: OwnedFd = fs::File::open("/proc/thread-self/ns/net")
        .context("cannot open /proc/thread-self/ns/net")?
        .into();
    setns(ns, CloneFlags::CLONE_NEWNET).context("cannot enter the noop network namespace")?;
    let r = f();
    setns(&host, CloneFlags::CLONE_NEWNET)
        .context("cannot go back to the host's network namespace")?;
    r
}

/// The forked helper: a new PID namespace whose init starts pasta and
/// then relays DNS. Returns the exit code.
fn helper((pasta, dns_forward): (&Path, bool), ns: &OwnedFd, log: fs::File, sockets: Relay) -> i32 {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // disco may have died between the fork and the line above.
    if nix::unistd::getppid().as_raw() == 1 {
        return 1;
    }
    if unshare(CloneFlags::CLONE_NEWPID).is_err() {
        return 1;
    }
    // SAFETY: as in NoopNet::routed.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let ns = ns.as_raw_fd();
            let mut cmd = std::process::Command::new(pasta);
            cmd.args(["-f", "-q", "--runas", "0:0", "--config-net"])
                .args(["--netns", "/proc/self/fd/3", "--no-netns-quit"])
                .args(["-t", "none", "-u", "none", "-T", "none", "-U", "none"])
                .arg("--no-map-gw")
                .args(
                    dns_forward
                        .then(|| ["--dns-forward".to_string(), DNS_FORWARD.to_string()])
                        .into_iter()
                        .flatten(),
                )
                .stdin(std::process::Stdio::null())
                .stdout(
                    log.try_clone()
                        .map_or(std::process::Stdio::null(), Into::into),
                )
                .stderr(log);
            // SAFETY: dup2 and prctl only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(ns, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let Ok(mut pasta) = cmd.spawn() else {
                return 1;
            };
            relay(sockets, &mut pasta);
            1
        }
        Ok(ForkResult::Parent { child }) => {
            drop(sockets);
            let _ = waitpid(child, None);
            0
        }
        Err(_) => 1,
    }
}

/// The DNS relay's sockets, made in the namespace.
struct Relay {
    /// One per loopback resolver the root names.
    down: Vec<UdpSocket>,
    /// Where the queries go on from.
    up: UdpSocket,
    /// The host's resolver: itself, or [`DNS_FORWARD`].
    upstream: SocketAddr,
}

/// Passes each UDP query that reaches a loopback resolver in the
/// namespace on to the host's resolver (its ID renumbered, so that
/// answers find their way back), and each answer back to who asked.
/// Returns when pasta has ended.
fn relay(Relay { down, up, upstream }: Relay, pasta: &mut std::process::Child) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut asked: Vec<Option<(u16, usize, SocketAddr)>> = vec![None; 1 << 16];
    let mut next: u16 = 0;
    let mut buf = vec![0u8; 65536];
    while matches!(pasta.try_wait(), Ok(None)) {
        let mut fds: Vec<PollFd> = down
            .iter()
            .chain(std::iter::once(&up))
            .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
            .collect();
        // Woken now and then to see whether pasta is still there.
        if poll(&mut fds, PollTimeout::from(200u8)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (i, s) in down.iter().enumerate() {
            if !ready[i] {
                continue;
            }
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                continue;
            };
            if n < 12 {
                continue;
            }
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            asked[usize::from(next)] = Some((id, i, from));
            buf[..2].copy_from_slice(&next.to_be_bytes());
            next = next.wrapping_add(1);
            let _ = up.send_to(&buf[..n], upstream);
        }
        if ready[down.len()] {
            let Ok((n, from)) = up.recv_from(&mut buf) else {
                continue;
            };
            if n < 12 || from != upstream {
                continue;
            }
            let ours = u16::from_be_bytes([buf[0], buf[1]]);
            if let Some((id, i, to)) = asked[usize::from(ours)].take() {
                buf[..2].copy_from_slice(&id.to_be_bytes());
                let _ = down[i].send_to(&buf[..n], to);
            }
        }
    }
}

/// A new network namespace with nothing but loopback, up: made by this
/// thread (`unshare`), which then goes back to the one it was in.
fn loopback_namespace() -> Result<OwnedFd> {
    let open = |p: &str| -> Result<OwnedFd> {
        Ok(fs::File::open(p)
            .with_context(|| format!("cannot open {p}"))?
            .into())
    };
    let host = open("/proc/thread-self/ns/net")?;
    unshare(CloneFlags::CLONE_NEWNET).context("cannot make the noop network namespace")?;
    let made = loopback_up().and_then(|()| open("/proc/thread-self/ns/net"));
    setns(&host, CloneFlags::CLONE_NEWNET)
        .context("cannot go back to the host's network namespace")?;
    made
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_are_127_0_0_1_and_the_named_loopback_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(loopback_resolvers(root), [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/resolv.conf"),
            "# x\nnameserver 127.0.0.53\nnameserver 10.0.0.1\nnameserver ::1\n",
        )
        .unwrap();
        let want: Vec<IpAddr> = ["127.0.0.1", "127.0.0.53", "::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(loopback_resolvers(root), want);
        fs::write(root.join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        assert_eq!(loopback_resolvers(root), [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }
}
