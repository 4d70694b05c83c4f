//! `disco actions`: the list of deferred actions and handlers that wait to
//! run again, `forget` (by ID, --all, noop, a wrong ID, the report
//! history), and the journal that makes an action or handler cut by
//! disco's death run again exactly once more.
mod common;

use common::root::FixtureRoot;
use common::{run, Fixture};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn live_dance(f: &Fixture, root: &Path, args: &[&str]) -> (i32, String, String) {
    run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(root)
        .arg("dance")
        .args(args))
}

/// `disco actions [ARGS]` on the fixture's state dir.
fn actions(f: &Fixture, args: &[&str]) -> (i32, String, String) {
    run(f.disco_without_server().arg("actions").args(args))
}

/// The ID `disco actions` gives an item: 6 hex digits of the md5 of
/// module, kind and argv (or handler), NUL-separated.
fn id(module: &str, kind: &str, what: &[&str]) -> String {
    let mut text = format!("{module}\0{kind}");
    for w in what {
        text.push('\0');
        text.push_str(w);
    }
    let d = <md5::Md5 as md5::Digest>::digest(text.as_bytes());
    d[..3].iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` with every RFC 3339 time (`2025-01-31T12:00:00Z`) as `TIME`.
fn no_times(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let stamp = b.len() - i >= 20
            && b[i + 4] == b'-'
            && b[i + 10] == b'T'
            && b[i + 19] == b'Z'
            && b[i..i + 4].iter().all(u8::is_ascii_digit);
        if stamp {
            out.push_str("TIME");
            i += 20;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn exe(r: &FixtureRoot, rel: &str, content: &str) {
    r.file(rel, content);
    fs::set_permissions(r.path.join(rel), fs::Permissions::from_mode(0o755)).unwrap();
}

/// A module whose action (`systemctl restart x`, the root's fake
/// systemctl: exit 5) and handler (exit 4) fail.
fn failing(f: &Fixture, r: &FixtureRoot) {
    exe(r, "usr/sbin/systemctl", "#!/bin/sh\nexit 5\n");
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/x", "x\n", 0o644)
        .module_file("m", "scripts/10-x", "systemctl restart x\n", 0o755)
        .module_file("m", "handlers/10-check", "exit 4\n", 0o755);
}

#[test]
fn actions_lists_each_failed_item_with_its_id_and_record() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let (code, out, err) = actions(&f, &[]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(
        err,
        "info: nothing waits to run again: no deferred action or handler failed\n"
    );
    failing(&f, &r);
    let (code, _, err) = live_dance(&f, &r.path, &["--run-actions"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = live_dance(&f, &r.path, &["--run-actions"]);
    assert_eq!(code, 1, "{err}");
    let (a, h) = (
        id("m", "action", &["/usr/sbin/systemctl", "restart", "x"]),
        id("m", "handler", &["10-check"]),
    );
    let (code, out, err) = actions(&f, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        no_times(&out),
        format!(
            "{a}  m  action systemctl restart x\n        failed 2 time(s), first TIME, last TIME: action systemctl restart x exited 5\n\
             {h}  m  handler handlers/10-check\n        failed 2 time(s), first TIME, last TIME: handler m/handlers/10-check exited 4\n"
        )
    );
    assert_eq!(
        err,
        "info: 2 deferred action(s) or handler(s) run again at the end of the next dance; `disco actions forget ID` drops one, `--all` every one\n"
    );
}

#[test]
fn forget_by_id_all_noop_and_a_wrong_id() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    failing(&f, &r);
    let (code, _, err) = live_dance(&f, &r.path, &["--run-actions"]);
    assert_eq!(code, 1, "{err}");
    let (a, h) = (
        id("m", "action", &["/usr/sbin/systemctl", "restart", "x"]),
        id("m", "handler", &["10-check"]),
    );
    let listed = || actions(&f, &[]).1;
    let before = listed();
    // A wrong ID: one line naming what exists; nothing dropped.
    let (code, out, err) = actions(&f, &["forget", "abcdef"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!("error: no pending action or handler has ID abcdef; pending: {a} (m action systemctl restart x), {h} (m handler handlers/10-check)\n")
    );
    // Noop, by flag and by env: says what it would drop, drops nothing.
    let (code, _, err) = actions(&f, &["forget", "--all", "--noop"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        format!("info: noop: would forget {a} (m action systemctl restart x)\ninfo: noop: would forget {h} (m handler handlers/10-check)\ninfo: noop: nothing was dropped\n")
    );
    let (code, _, err) = run(f
        .disco_without_server()
        .env("NOOP", "true")
        .args(["actions", "forget", &a]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("noop: would forget"), "{err}");
    assert_eq!(listed(), before);
    // One by its ID; the next dance runs only the other again.
    let (code, _, err) = actions(&f, &["forget", &a]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        format!("info: forgot {a} (m action systemctl restart x)\n")
    );
    assert!(
        listed().starts_with(&format!("{h}  m  handler")),
        "{}",
        listed()
    );
    assert_eq!(listed().lines().count(), 2);
    let (code, _, err) = live_dance(&f, &r.path, &["--run-actions"]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("running deferred action"), "{err}");
    assert!(err.contains("running handler m/handlers/10-check"), "{err}");
    // Every one.
    let (code, _, err) = actions(&f, &["forget", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        format!("info: forgot {h} (m handler handlers/10-check)\n")
    );
    assert_eq!(listed(), "");
    assert!(!f.state().join("failed-actions.json").exists());
    let (code, _, err) = live_dance(&f, &r.path, &["--run-actions", "--detailed-exitcodes"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("running"), "{err}");
    // Both forgets are in the history, who and what; last.json is the dance's.
    let (code, out, err) = run(f.disco_without_server().args(["report", "--history"]));
    assert_eq!(code, 0, "{err}");
    let forgets: Vec<&str> = out.lines().filter(|l| l.contains("forgot")).collect();
    assert_eq!(forgets.len(), 2, "{out}");
    assert!(
        forgets[0].contains(&format!(
            "forgot   1 action(s)/handler(s) by root: {a} (m action systemctl restart x)"
        )),
        "{out}"
    );
    assert!(
        forgets[1].contains(&format!("by root: {h} (m handler handlers/10-check)")),
        "{out}"
    );
    let last: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    assert_eq!(last["status"], "ok");
}

/// Kills what an interrupted-handler test started, even when it fails:
/// disco, and the handler's process group (its pid is its group).
struct Reaper {
    disco: Option<std::process::Child>,
    pid_file: PathBuf,
}

impl Reaper {
    fn handler_group(&self) {
        if let Some(pid) = fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = &mut self.disco {
            common::kill_dance(c);
        }
        self.handler_group();
    }
}

/// A handler that blocks while disco is killed with `signal` (its process
/// group then killed too, as systemd kills a unit's cgroup): the next
/// dance runs it exactly once more, the one after not at all.
fn interrupted_handler_runs_once_more(signal: nix::sys::signal::Signal) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::create_dir_all(r.path.join("var/log")).unwrap();
    r.file("etc/block", "");
    f.node("n", &["m"]).module("m", "");
    // Handlers run chrooted into the root: its /var/log is in the test's dir.
    f.module_file("m", "files/etc/app.conf", "v1\n", 0o644)
        .module_file(
            "m",
            "handlers/10-restart",
            "echo ran >> /var/log/handler-runs\nif [ -e /etc/block ]; then echo $$ > /var/log/handler.pid; sleep 600; fi\n",
            0o755,
        );
    let mut reaper = Reaper {
        disco: None,
        pid_file: r.path.join("var/log/handler.pid"),
    };
    let log = fs::File::create(f.dir.path().join("killed.log")).unwrap();
    let child = f
        .process(&f.state(), &r.path)
        .args(["dance", "--run-actions"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    reaper.disco = Some(child);
    let until = Instant::now() + Duration::from_secs(120);
    while !reaper.pid_file.exists() {
        assert!(
            Instant::now() < until,
            "the handler never started: {}",
            fs::read_to_string(f.dir.path().join("killed.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(pid, signal).unwrap();
    let status = reaper.disco.as_mut().unwrap().wait().unwrap();
    assert!(!status.success(), "disco was killed");
    reaper.disco = None;
    reaper.handler_group();
    fs::remove_file(r.path.join("etc/block")).unwrap();
    assert_eq!(r.read("var/log/handler-runs").as_deref(), Some("ran\n"));
    // Listed as interrupted (SIGKILL: found by the next disco in the
    // actions' journal) or killed by the stop (SIGTERM: the dance ended
    // itself, killing the handler) before the next dance.
    let h = id("m", "handler", &["10-restart"]);
    let (code, out, err) = actions(&f, &[]);
    assert_eq!(code, 0, "{err}");
    let why = match signal {
        nix::sys::signal::Signal::SIGKILL => "interrupted: disco was killed while it ran".to_string(),
        s => format!("handler m/handlers/10-restart was killed: the dance was stopped by {s}: the deferred actions and handlers"),
    };
    assert_eq!(
        no_times(&out),
        format!("{h}  m  handler handlers/10-restart\n        failed 1 time(s), first TIME, last TIME: {why}\n")
    );
    // The next dance changes nothing, yet runs the handler once more.
    let (code, _, err) = live_dance(&f, &r.path, &["--run-actions", "--detailed-exitcodes"]);
    assert_eq!(code, 0, "{err}");
    if signal == nix::sys::signal::Signal::SIGKILL {
        assert!(
            err.contains("disco was killed while running deferred actions or handlers: 1 of them"),
            "{err}"
        );
    }
    assert!(
        err.contains("running again what failed before in m"),
        "{err}"
    );
    assert_eq!(
        r.read("var/log/handler-runs").as_deref(),
        Some("ran\nran\n")
    );
    assert!(!f.state().join("actions-journal.json").exists());
    assert!(!f.state().join("failed-actions.json").exists());
    // And the one after does not.
    let (code, _, err) = live_dance(&f, &r.path, &["--run-actions", "--detailed-exitcodes"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("running"), "{err}");
    assert_eq!(
        r.read("var/log/handler-runs").as_deref(),
        Some("ran\nran\n")
    );
}

#[test]
fn a_handler_running_when_disco_is_sigkilled_runs_once_more() {
    interrupted_handler_runs_once_more(nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn a_handler_running_when_disco_is_sigtermed_runs_once_more() {
    interrupted_handler_runs_once_more(nix::sys::signal::Signal::SIGTERM);
}
