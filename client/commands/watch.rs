//! `disco watch`: the trigger spool's watcher for nodes without systemd
//! (and, with `--once`, what the packaged disco-trigger.service runs).
//!
//! Owns the loop: inotify on `STATE/trigger`, one `disco dance` child at
//! a time for the waiting requests of one mode (the oldest request's),
//! the requests a dance could not take ended as failed, and a clean stop
//! on SIGTERM, SIGINT or SIGHUP (forwarded to the running dance, which
//! ends with its report). The dance is a child process, never a call: its
//! own mount namespace, watchdog and exit stay its own, and a dance that
//! dies leaves the watcher running. The spool's files are
//! [`crate::trigger`]'s; the dance claims and ends its requests itself.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

use super::require_root;
use crate::cli::{Given, WatchArgs};
use crate::config::Config;
use crate::output;
use crate::trigger::{Mode, Spool};

/// The write end of the stop pipe, for the signal handler.
static STOP_PIPE: AtomicI32 = AtomicI32::new(-1);
/// The last stop signal received (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = STOP_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe only drops a wake-up.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// SIGTERM, SIGINT and SIGHUP, each a byte in a pipe `poll` can wait on.
struct Stop {
    read: OwnedFd,
    _write: OwnedFd,
}

impl Stop {
    fn install() -> Result<Stop> {
        let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
        let (read, write) = nix::unistd::pipe2(flags).context("cannot make a pipe")?;
        STOP_PIPE.store(write.as_raw_fd(), Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(on_stop),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            // SAFETY: the handler only stores an integer and writes one byte.
            unsafe { signal::sigaction(sig, &action) }
                .with_context(|| format!("cannot handle {sig}"))?;
        }
        Ok(Stop {
            read,
            _write: write,
        })
    }

    /// The stop signal received, if one was.
    fn signal(&self) -> Option<Signal> {
        Signal::try_from(STOP_SIGNAL.load(Ordering::SeqCst)).ok()
    }

    /// How many signals arrived since the last call (the pipe emptied).
    fn take(&self) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok(got @ 1..) = nix::unistd::read(self.read.as_raw_fd(), &mut buf) {
            n += got;
        }
        n
    }
}

/// Runs `disco watch`; returns the exit code. `given` are its flags,
/// passed on to each dance it starts.
pub fn run(config: &Config, args: &WatchArgs, given: &Given) -> Result<i32> {
    require_root(
        "disco watch",
        "it runs dances and reads root's trigger spool",
    )?;
    let spool = Spool::open(&config.state_dir.value)?;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .context("cannot start inotify")?;
    inotify
        .add_watch(
            &spool.path,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_CLOSE_WRITE,
        )
        .with_context(|| format!("cannot watch {}", spool.path.display()))?;
    let stop = Stop::install()?;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    if !args.once {
        output::info(&format!(
            "watching {} for trigger requests",
            spool.path.display()
        ));
    }
    loop {
        spool.end_interrupted();
        // Each event is a reason to look; the look below sees them all.
        let _ = inotify.read_events();
        stop.take();
        if stop.signal().is_some() {
            break;
        }
        let pending = spool.pending()?;
        let Some(mode) = pending.first().map(|p| p.mode) else {
            if args.once {
                break;
            }
            wait(&inotify, &stop, &spool.path)?;
            continue;
        };
        let names: Vec<String> = pending
            .iter()
            .filter(|p| p.mode == mode)
            .map(|p| p.name.clone())
            .collect();
        let code = dance(&exe, given, args, mode, names.len(), &stop)?;
        let why = format!(
            "the dance (exit {code}) ended before it took this request: see what it said (the log of disco watch or disco-trigger.service)"
        );
        spool.fail_unclaimed(&names, code, &why);
        let stuck: Vec<String> = spool
            .pending()?
            .into_iter()
            .filter(|p| names.contains(&p.name))
            .map(|p| p.name)
            .collect();
        if !stuck.is_empty() {
            // Never the same dance again and again for requests that stay.
            bail!(
                "the requests {} in {} could be neither claimed nor ended: is it writable?",
                stuck.join(", "),
                spool.path.display()
            );
        }
    }
    if let Some(sig) = stop.signal() {
        output::info(&format!("watch: stopped by {sig}"));
    }
    Ok(0)
}

/// Sleeps until the spool changes or a stop signal comes. A spool that
/// is removed ends the watch with an error (a service manager starts it
/// again, and it makes the spool anew).
fn wait(inotify: &Inotify, stop: &Stop, spool: &Path) -> Result<()> {
    let mut fds = [
        PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
        PollFd::new(stop.read.as_fd(), PollFlags::POLLIN),
    ];
    // A look every minute anyway: an overflowed event queue loses nothing.
    match nix::poll::poll(&mut fds, PollTimeout::from(60_000u16)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => bail!("cannot wait on {}: {e}", spool.display()),
    }
    let gone = fds[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLIN))
        && inotify.read_events().is_ok_and(|events| {
            events
                .iter()
                .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
        });
    if gone {
        bail!(
            "the trigger spool {} was removed: watch ends (started again, it makes the spool anew)",
            spool.display()
        );
    }
    Ok(())
}

/// Runs one `disco dance` of `mode` with watch's own flags and waits for
/// it, passing on a stop signal; returns its exit code (128 + the signal
/// that killed it).
fn dance(
    exe: &Path,
    given: &Given,
    args: &WatchArgs,
    mode: Mode,
    requests: usize,
    stop: &Stop,
) -> Result<i32> {
    let mut cmd = Command::new(exe);
    for (flag, value) in [
        ("--config", &given.config),
        ("--state-dir", &given.state_dir),
        ("--root", &given.root),
    ] {
        if let Some(v) = value {
            cmd.arg(flag).arg(v);
        }
    }
    for (flag, value) in [("--server", &given.server), ("--node", &given.node)] {
        if let Some(v) = value {
            cmd.arg(flag).arg(v);
        }
    }
    cmd.args(["dance", "--detailed-exitcodes"]);
    if args.quiet {
        cmd.arg("--quiet");
    }
    if args.run_actions {
        cmd.arg("--run-actions");
    }
    // The request's mode, over the config's `noop` (env over files).
    cmd.env("NOOP", if mode == Mode::Noop { "true" } else { "false" })
        .stdin(Stdio::null())
        // Its own process group: a terminal's Ctrl-C reaches watch, which
        // passes it on once (two would kill the dance at once).
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} dance", exe.display()))?;
    output::info(&format!(
        "watch: {requests} {} request(s): dance (pid {})",
        mode.as_str(),
        child.id()
    ));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the dance")? {
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            output::info(&format!("watch: the dance (pid {pid}) exited {code}"));
            return Ok(code);
        }
        let mut fds = [PollFd::new(stop.read.as_fd(), PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(200u16));
        for _ in 0..stop.take() {
            if let Some(sig) = stop.signal() {
                let _ = signal::kill(pid, sig);
            }
        }
    }
}
