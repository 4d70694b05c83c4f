//! The dance's deadline (`dance_timeout`, DESIGN §3 "deadline"): one
//! watchdog thread in disco's main process, armed when the pipeline starts
//! and disarmed when its report is written.
//!
//! Owns what happens when a dance runs past `dance_timeout`, whatever
//! stage it is in. The main thread says what it is doing ([`doing`]) and
//! which process it waits on ([`waiting_on`]: a module's sandbox, a
//! deferred action's process group). When the deadline passes the thread
//! kills that process — a sandbox through its PID namespace's init, so
//! every process of the module ends and every pipe disco reads from it
//! closes — and the main thread, unblocked, ends the dance through its
//! normal ending ([`check`] turns into the error). If the main thread is
//! not back within [`GRACE`] (a read that no kill can interrupt: a FIFO in
//! ROOT opened by disco itself), the thread ends the dance itself: the
//! last resort given to [`arm`] writes the report and status and exits the
//! process; the locks are `flock`s and the mounts live in disco's private
//! mount namespace, so both go with the process.
//!
//! A stop asked for while the dance runs (SIGTERM from `systemctl stop`
//! or a shutdown, SIGINT from Ctrl-C, SIGHUP) ends it the same way, its
//! message saying so (`the dance was stopped by SIGTERM: WHAT`): the
//! handler only records the signal, the thread (which looks every
//! [`TICK`]) does the rest; a second such signal kills disco at once.
//!
//! Does not own the step limits (`step_timeout`, inside the sandbox:
//! [`crate::exec`]) nor the fetch's (`fetch_timeout`, its transport).
//!
//! The thread holds no lock while disco forks a sandbox (it sleeps on a
//! condition variable, which releases its mutex), so the forked child,
//! which runs Rust code of this process, never finds a lock held.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the watchdog thread looks for a stop signal.
const TICK: Duration = Duration::from_millis(100);

/// The signals that stop a dance.
const STOPS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The stop signal received while armed, 0 before one.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The stop signals' handler: records the first; a second ends disco
/// as the signal would have (only async-signal-safe calls).
extern "C" fn stop_asked(sig: libc::c_int) {
    if SIGNAL
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // SAFETY: signal and raise are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Sets the stop signals' disposition: [`stop_asked`], or the default.
fn handle_stops(handler: libc::sighandler_t) {
    for sig in STOPS {
        // SAFETY: a zeroed sigaction with a valid handler and an empty
        // mask; SA_RESTART so the main thread's blocking calls resume.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// `SIGTERM`, `SIGINT`, `SIGHUP` (or the number).
fn signal_name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// How long the main thread has to end the dance by itself once the
/// deadline passed and what it waited on was killed.
pub const GRACE: Duration = Duration::from_secs(3);

/// What the main thread waits on, for the watchdog to kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    /// A sandbox: the child disco forked (its one child is the init of the
    /// module's PID namespace).
    Sandbox(i32),
    /// A process group (a deferred action or handler).
    Group(i32),
}

/// The last resort: given the message and whether the merge began, ends
/// the dance (report, status) and exits the process. Never returns.
pub type LastResort = Box<dyn FnOnce(&str, bool) + Send>;

#[derive(Default)]
struct State {
    /// The limit in seconds, when armed.
    limit: Option<u64>,
    doing: String,
    /// Every sandbox (or action) waited on now: several while modules
    /// run side by side.
    victims: Vec<Victim>,
    merge_began: bool,
    /// The message, once the deadline passed.
    passed: Option<String>,
    /// Set by the main thread when the dance ended (or the watchdog is
    /// disarmed).
    done: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    limit: None,
    doing: String::new(),
    victims: Vec::new(),
    merge_began: false,
    passed: None,
    done: false,
});
static WAKE: Condvar = Condvar::new();

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The armed watchdog; disarmed (its thread joined) when dropped.
pub struct Armed {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        handle_stops(libc::SIG_DFL);
        state().done = true;
        WAKE.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *state() = State::default();
    }
}

/// Arms the deadline: `limit` from now. Must be called after disco
/// entered its own mount namespace (`unshare` refuses a process with
/// threads).
pub fn arm(limit: Duration, last_resort: LastResort) -> Armed {
    let deadline = Instant::now() + limit;
    {
        let mut s = state();
        *s = State::default();
        s.limit = Some(limit.as_secs());
        s.doing = "starting".into();
    }
    SIGNAL.store(0, Ordering::SeqCst);
    handle_stops(stop_asked as extern "C" fn(libc::c_int) as libc::sighandler_t);
    let thread = std::thread::Builder::new()
        .name("dance-deadline".into())
        .spawn(move || watch(deadline, last_resort))
        .expect("cannot start the dance_timeout watchdog thread");
    Armed {
        thread: Some(thread),
    }
}

/// Waits on [`WAKE`] until the dance is done or `until` has passed.
fn wait_done(mut s: MutexGuard<'static, State>, until: Instant) -> MutexGuard<'static, State> {
    while !s.done {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s = WAKE
            .wait_timeout(s, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    s
}

fn watch(deadline: Instant, last_resort: LastResort) {
    let mut s = state();
    let msg = loop {
        s = wait_done(s, (Instant::now() + TICK).min(deadline));
        if s.done {
            return;
        }
        match SIGNAL.load(Ordering::SeqCst) {
            0 if Instant::now() >= deadline => {
                break message(s.limit.unwrap_or_default(), &s.doing)
            }
            0 => {}
            sig => break format!("the dance was stopped by {}: {}", signal_name(sig), s.doing),
        }
    };
    s.passed = Some(msg.clone());
    for v in s.victims.clone() {
        kill(v);
    }
    s = wait_done(s, Instant::now() + GRACE);
    if s.done {
        return;
    }
    let merge_began = s.merge_began;
    drop(s);
    // The main thread is stuck where no kill reaches it.
    last_resort(&msg, merge_began);
}

/// `the dance ran past dance_timeout (N s): WHAT`
pub fn message(limit: u64, doing: &str) -> String {
    format!("the dance ran past dance_timeout ({limit} s): {doing}")
}

/// Kills sandbox `pid` (the child disco forked) and its init: a sandbox
/// given up before it ended.
pub fn kill_sandbox(pid: i32) {
    kill(Victim::Sandbox(pid));
}

/// Kills `v`: a sandbox's init first (the kernel then kills every other
/// process of its PID namespace), then the child that forked it; or a
/// whole process group.
fn kill(v: Victim) {
    match v {
        Victim::Sandbox(pid) => {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for init in children.split_whitespace().filter_map(|p| p.parse().ok()) {
                // SAFETY: plain kill calls.
                unsafe { libc::kill(init, libc::SIGKILL) };
            }
            // The init also has SIGKILL as its parent-death signal.
            // SAFETY: as above; `pid` is disco's unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Victim::Group(pgid) => {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// Says what the dance is doing now (the end of the deadline's message).
pub fn doing(what: impl Into<String>) {
    let mut s = state();
    if s.limit.is_some() {
        s.doing = what.into();
    }
}

/// While the returned guard lives, the deadline kills `v`. If the
/// deadline already passed, `v` is killed at once.
pub fn waiting_on(v: Victim) -> Waiting {
    let mut s = state();
    if s.limit.is_none() {
        return Waiting(None);
    }
    s.victims.push(v);
    if s.passed.is_some() {
        kill(v);
    }
    Waiting(Some(v))
}

/// See [`waiting_on`].
pub struct Waiting(Option<Victim>);

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(v) = self.0 {
            state().victims.retain(|w| *w != v);
        }
    }
}

/// Records that the root is about to be touched (exit code 4 from here).
pub fn merge_began() {
    state().merge_began = true;
}

/// The deadline's message, once it passed.
pub fn passed() -> Option<String> {
    state().passed.clone()
}

/// Fails with the deadline's message once it passed: called between
/// stages, so a dance past its deadline starts nothing new.
pub fn check() -> anyhow::Result<()> {
    match passed() {
        Some(msg) => Err(anyhow::anyhow!(msg)),
        None => Ok(()),
    }
}

/// A test hook: with `DISCO_FAILPOINT=hang:STAGE`, the calling thread
/// stops here for good at `stage`, as a read that no kill interrupts
/// would (a FIFO in ROOT): the tests of the last resort need a hang that
/// stays one once every such read is made non-blocking.
pub fn hang_point(stage: &str) {
    let hang =
        std::env::var("DISCO_FAILPOINT").is_ok_and(|v| v.strip_prefix("hang:") == Some(stage));
    if hang {
        loop {
            std::thread::park();
        }
    }
}

/// The dance reached its end (report written): the last resort will not
/// run.
pub fn ended() {
    state().done = true;
    WAKE.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    // One test: the state is the process's.
    #[test]
    fn the_deadline_kills_what_the_dance_waits_on_then_takes_the_last_resort() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .process_group(0)
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let armed = arm(
            Duration::from_millis(200),
            Box::new(move |msg, merge| tx.send((msg.to_string(), merge)).unwrap()),
        );
        doing("module m, in its sandbox");
        let guard = waiting_on(Victim::Group(child.id() as i32));
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed");
        assert_eq!(
            passed().as_deref(),
            Some("the dance ran past dance_timeout (0 s): module m, in its sandbox")
        );
        assert!(check().is_err());
        drop(guard);
        merge_began();
        // The main thread does not come back: the last resort runs.
        let (msg, merge) = rx.recv_timeout(GRACE + Duration::from_secs(5)).unwrap();
        assert!(msg.ends_with("module m, in its sandbox"), "{msg}");
        assert!(merge);
        drop(armed);
        assert!(passed().is_none());
        // Ended in time: nothing fires.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let armed = arm(
            Duration::from_millis(100),
            Box::new(move |_, _| tx.send(()).unwrap()),
        );
        ended();
        std::thread::sleep(Duration::from_millis(300));
        assert!(passed().is_none());
        drop(armed);
        assert!(rx.try_recv().is_err());
    }
}
