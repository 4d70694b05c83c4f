//! Dancing now: `disco trigger` drops a request in STATE/trigger, `disco
//! watch` (or `watch --once`, what disco-trigger.service runs) starts the
//! dance, which claims the request (`.running`, its run id) and replaces
//! it with its status (`.ok`, `.changed`, `.failed`); requests made
//! during a dance are served by one more; the spool is bounded and never
//! follows a link. Real dances on fixture roots (`--root DIR`); every
//! `disco watch` a test starts is stopped, or killed, when the test ends.
mod common;

use common::root::FixtureRoot;
use common::{run, Fixture};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for what should take seconds.
const GENEROUS: Duration = Duration::from_secs(30);

/// A node `n` with module `m` that installs /etc/from-m, and its root.
fn fixture() -> (Fixture, FixtureRoot) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/from-m", "hello\n", 0o644);
    (f, r)
}

fn spool(f: &Fixture) -> PathBuf {
    f.state().join("trigger")
}

/// `disco trigger [args]`; the request's name without `.request`.
fn trigger(f: &Fixture, args: &[&str]) -> String {
    let (code, out, err) = run(f.disco_without_server().arg("trigger").args(args));
    assert_eq!(code, 0, "{err}");
    let path = PathBuf::from(out.trim());
    assert_eq!(path.parent().unwrap(), spool(f), "{out}");
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    name.strip_suffix(".request")
        .unwrap_or_else(|| panic!("not a request: {out}"))
        .to_string()
}

/// The `key=value` lines of a spool file.
fn fields(path: &Path) -> Vec<(String, String)> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn get<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key}= in {fields:?}"))
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Waits (at most [`GENEROUS`]) until request `name` has ended; its status
/// and lines.
fn ended(f: &Fixture, name: &str, log: &dyn Fn() -> String) -> (String, Vec<(String, String)>) {
    let started = Instant::now();
    loop {
        for status in ["ok", "changed", "failed"] {
            let p = spool(f).join(format!("{name}.{status}"));
            if p.exists() {
                return (status.to_string(), fields(&p));
            }
        }
        assert!(
            started.elapsed() < GENEROUS,
            "request {name} not ended after {} s: {:?}\n{}",
            GENEROUS.as_secs(),
            listing(&spool(f)),
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The saved reports of the state dir, oldest first.
fn reports(f: &Fixture) -> Vec<serde_json::Value> {
    let dir = f.state().join("reports");
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "last.json")
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_slice(&fs::read(p).unwrap()).unwrap())
        .collect()
}

/// `disco watch --once` for node n on `r`: it serves what waits, then exits.
fn watch_once(f: &Fixture, r: &FixtureRoot) -> (i32, String) {
    let ended = common::bounded({
        let mut c = f.process(&f.state(), &r.path);
        c.args(["watch", "--once"]);
        c
    });
    (ended.code, ended.err)
}

/// A `disco watch` running in the background, its output in a file;
/// stopped with SIGTERM by [`Watching::stop`], killed (with the dance it
/// runs) if the test ends otherwise.
struct Watching {
    child: Option<Child>,
    log: PathBuf,
}

impl Watching {
    fn start(f: &Fixture, r: &FixtureRoot) -> Watching {
        let log = f.dir.path().join("watch.log");
        let out = fs::File::create(&log).unwrap();
        let child = f
            .process(&f.state(), &r.path)
            .arg("watch")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap();
        Watching {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; its exit code within [`GENEROUS`], and what it said.
    fn stop(mut self) -> (i32, String) {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), self.log());
            }
            if started.elapsed() > GENEROUS {
                self.child = Some(child);
                panic!(
                    "disco watch still ran {} s after SIGTERM",
                    GENEROUS.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The dance it runs (a process group of its own), then watch.
        let pid = child.id();
        let kids =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for kid in kids
            .split_whitespace()
            .filter_map(|k| k.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(kid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(kid), None);
            common::sweep_cgroups(kid as u32);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-(pid as i32)),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
    }
}

/// Kills every process whose command line holds `marker` (a module's
/// `sleep`, so the script goes on); how many.
fn release(marker: &str) -> usize {
    let mut n = 0;
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(marker) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                n += 1;
            }
        }
    }
    n
}

#[test]
fn a_trigger_starts_a_dance_under_watch_and_ends_changed_with_its_run_id() {
    let (f, r) = fixture();
    let watching = Watching::start(&f, &r);
    let name = trigger(&f, &[]);
    let (status, got) = ended(&f, &name, &|| watching.log());
    assert_eq!(status, "changed", "{got:?}\n{}", watching.log());
    let last: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    assert_eq!(get(&got, "run"), last["id"].as_str().unwrap());
    assert_eq!(get(&got, "exit"), "2"); // the dance's own, --detailed-exitcodes
    assert_eq!(get(&got, "mode"), "live");
    assert_eq!(last["noop"], false);
    assert_eq!(r.read("etc/from-m").as_deref(), Some("hello\n"));
    // The request's file is gone: only its status stays.
    assert_eq!(listing(&spool(&f)), vec![format!("{name}.changed")]);
    // --wait: the status file's path, the exit of the dance (converged now).
    let (code, out, err) =
        run(f
            .disco_without_server()
            .args(["trigger", "--wait", "--detailed-exitcodes"]));
    assert_eq!(code, 0, "{err}\n{}", watching.log());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with(".request") && lines[1].ends_with(".ok"),
        "{out}"
    );
    assert_eq!(get(&fields(Path::new(lines[1])), "exit"), "0");
    let (code, log) = watching.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("watch: stopped by SIGTERM"), "{log}");
}

#[test]
fn requests_made_during_a_dance_are_served_by_one_more_dance() {
    let (f, r) = fixture();
    let marker = format!("1000.{}7", std::process::id());
    f.module_file(
        "m",
        "scripts/10-wait",
        &format!("sleep {marker} || true\n"),
        0o755,
    );
    let watching = Watching::start(&f, &r);
    let first = trigger(&f, &["--noop"]);
    // Its dance runs the script, and waits there.
    let started = Instant::now();
    while !spool(&f).join(format!("{first}.running")).exists() || release_count_of(&marker) == 0 {
        assert!(
            started.elapsed() < GENEROUS,
            "the first dance never reached its script: {:?}\n{}",
            listing(&spool(&f)),
            watching.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let during: Vec<String> = (0..3).map(|_| trigger(&f, &["--noop"])).collect();
    assert!(spool(&f).join(format!("{first}.running")).exists());
    // Now let each dance's script go on as soon as it waits.
    let started = Instant::now();
    let done = |n: &str| {
        ["ok", "changed", "failed"]
            .iter()
            .any(|s| spool(&f).join(format!("{n}.{s}")).exists())
    };
    while !(done(&first) && during.iter().all(|n| done(n))) {
        release(&marker);
        assert!(
            started.elapsed() < GENEROUS,
            "not all ended: {:?}\n{}",
            listing(&spool(&f)),
            watching.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = || watching.log();
    let (status, one) = ended(&f, &first, &log);
    assert_eq!(status, "changed", "{one:?}"); // noop: /etc/from-m would be made
    let runs: Vec<String> = during
        .iter()
        .map(|n| {
            let (status, got) = ended(&f, n, &log);
            assert_eq!(status, "changed", "{got:?}");
            get(&got, "run").to_string()
        })
        .collect();
    assert_ne!(runs[0], get(&one, "run"));
    assert!(runs.iter().all(|r| *r == runs[0]), "{runs:?}");
    // Two dances in all, both noop.
    let all = reports(&f);
    assert_eq!(all.len(), 2, "{}", watching.log());
    assert!(all.iter().all(|r| r["noop"] == true));
    assert_eq!(r.read("etc/from-m"), None);
    let (code, log) = watching.stop();
    assert_eq!(code, 0, "{log}");
}

/// How many processes hold `marker` (without touching them).
fn release_count_of(marker: &str) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .count()
}

#[test]
fn a_noop_request_gets_a_noop_dance_and_the_root_stays_as_it_was() {
    let (f, r) = fixture();
    let before = common::snapshot(&r.path);
    let name = trigger(&f, &["--noop"]);
    let (code, err) = watch_once(&f, &r);
    assert_eq!(code, 0, "{err}");
    let (status, got) = ended(&f, &name, &|| err.clone());
    assert_eq!(status, "changed", "{got:?}");
    assert_eq!(get(&got, "mode"), "noop");
    let last: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    assert_eq!(last["noop"], true);
    assert_eq!(get(&got, "run"), last["id"].as_str().unwrap());
    assert_eq!(common::snapshot(&r.path), before);
    // A live request then: a live dance, which merges.
    let name = trigger(&f, &[]);
    let (code, err) = watch_once(&f, &r);
    assert_eq!(code, 0, "{err}");
    let (status, got) = ended(&f, &name, &|| err.clone());
    assert_eq!((status.as_str(), get(&got, "mode")), ("changed", "live"));
    assert_eq!(r.read("etc/from-m").as_deref(), Some("hello\n"));
}

#[test]
fn a_failed_dance_ends_its_request_failed_and_watch_goes_on() {
    let (f, r) = fixture();
    f.module_file("m", "scripts/10-fail", "echo broken >&2; exit 3\n", 0o755);
    let watching = Watching::start(&f, &r);
    let (code, out, err) = run(f.disco_without_server().args(["trigger", "--wait"]));
    assert_eq!(code, 1, "{out}{err}\n{}", watching.log());
    assert!(
        out.lines().nth(1).is_some_and(|l| l.ends_with(".failed")),
        "{out}"
    );
    assert!(err.contains("failed: m: scripts/10-fail exited 3"), "{err}");
    assert_eq!(r.read("etc/from-m"), None);
    // Fixed on the server: the same watch serves the next request.
    fs::remove_file(f.server().join("modules/m/scripts/10-fail")).unwrap();
    let (code, out, err) =
        run(f
            .disco_without_server()
            .args(["trigger", "--wait", "--detailed-exitcodes"]));
    assert_eq!(code, 2, "{out}{err}\n{}", watching.log());
    assert_eq!(r.read("etc/from-m").as_deref(), Some("hello\n"));
    let (code, log) = watching.stop();
    assert_eq!(code, 0, "{log}");
}

/// A state dir under a directory that does not exist is a typo: said in
/// one line, nothing made (a trial's request waited forever there).
#[test]
fn a_state_dir_under_a_missing_directory_is_refused() {
    let f = Fixture::new();
    let state = f.dir.path().join("nonexist/deep");
    let (code, out, err) = run(f
        .disco_without_server()
        .arg("trigger")
        .arg("--state-dir")
        .arg(&state));
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err,
        format!(
            "error: no directory {} for the state dir {} (a typo in --state-dir or state_dir?); nothing was requested\n",
            state.parent().unwrap().display(),
            state.display()
        )
    );
    assert!(!f.dir.path().join("nonexist").exists());
}

#[test]
fn the_65th_waiting_request_is_refused_in_one_line() {
    let f = Fixture::new();
    for _ in 0..64 {
        let (code, _, err) = run(f.disco_without_server().arg("trigger"));
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(f.disco_without_server().arg("trigger"));
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err,
        format!(
            "error: 64 requests already wait in {} (at most 64): not adding one; is a dance running them (disco.path, disco watch)?\n",
            spool(&f).display()
        )
    );
    assert_eq!(listing(&spool(&f)).len(), 64);
}

#[test]
fn a_symlink_planted_in_the_spool_is_never_followed() {
    let (f, r) = fixture();
    // A link that, followed, would read as a live request…
    r.file("etc/looks-like-a-request", "mode=live\n");
    let target = r.path.join("etc/looks-like-a-request");
    std::os::unix::fs::symlink(&target, spool_made(&f).join("planted.request")).unwrap();
    // …and one where a real request's status is about to be written.
    let name = trigger(&f, &["--noop"]);
    r.file("etc/victim", "untouched\n");
    let victim = r.path.join("etc/victim");
    std::os::unix::fs::symlink(&victim, spool(&f).join(format!("{name}.changed"))).unwrap();
    // …and where its claim renames it.
    r.file("etc/victim2", "untouched too\n");
    let victim2 = r.path.join("etc/victim2");
    std::os::unix::fs::symlink(&victim2, spool(&f).join(format!("{name}.running"))).unwrap();
    let (code, err) = watch_once(&f, &r);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "warning: {}/planted.request is a symlink (never followed): not a request, taken out of the spool",
            spool(&f).display()
        )),
        "{err}"
    );
    // Neither target was written; the links themselves are gone.
    assert_eq!(
        r.read("etc/looks-like-a-request").as_deref(),
        Some("mode=live\n")
    );
    assert_eq!(r.read("etc/victim").as_deref(), Some("untouched\n"));
    assert_eq!(r.read("etc/victim2").as_deref(), Some("untouched too\n"));
    assert!(!spool(&f).join(format!("{name}.running")).exists());
    let status = spool(&f).join(format!("{name}.changed"));
    assert!(fs::symlink_metadata(&status).unwrap().is_file());
    assert_eq!(get(&fields(&status), "mode"), "noop");
    let planted = fields(&spool(&f).join("planted.failed"));
    assert!(get(&planted, "error").contains("is a symlink (never followed)"));
    // One dance ran (the noop one); the link started none.
    assert_eq!(reports(&f).len(), 1);
    assert_eq!(r.read("etc/from-m"), None);
}

/// The spool, made by a first `disco trigger` whose request is then
/// removed.
fn spool_made(f: &Fixture) -> PathBuf {
    let name = trigger(f, &[]);
    fs::remove_file(spool(f).join(format!("{name}.request"))).unwrap();
    spool(f)
}

#[test]
fn a_spool_that_is_a_symlink_or_not_roots_is_refused() {
    let f = Fixture::new();
    let elsewhere = f.dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::create_dir_all(f.state()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, spool(&f)).unwrap();
    common::assert_error(
        run(f.disco_without_server().arg("trigger")),
        &format!(
            "error: the trigger spool {} is a symlink: refused (remove it; disco makes it again, 0700)",
            spool(&f).display()
        ),
    );
    assert!(listing(&elsewhere).is_empty());
    fs::remove_file(spool(&f)).unwrap();
    fs::create_dir(spool(&f)).unwrap();
    let (nobody, _) = common::nobody_ids();
    nix::unistd::chown(&spool(&f), Some(nix::unistd::Uid::from_raw(nobody)), None).unwrap();
    common::assert_error(
        run(f.disco_without_server().arg("trigger")),
        &format!(
            "error: the trigger spool {} belongs to uid {nobody}, not root: refused (chown root: it, or remove it)",
            spool(&f).display()
        ),
    );
}

/// Waits until a process holds `marker` (a module's `sleep` runs).
fn wait_for_process(marker: &str, what: &dyn Fn() -> String) {
    let started = Instant::now();
    while release_count_of(marker) == 0 {
        assert!(started.elapsed() < GENEROUS, "never started: {}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stopped_watch_stops_its_dance_which_ends_its_request_failed() {
    let (f, r) = fixture();
    let marker = format!("1000.{}8", std::process::id());
    f.module_file("m", "scripts/10-wait", &format!("sleep {marker}\n"), 0o755);
    let watching = Watching::start(&f, &r);
    let name = trigger(&f, &[]);
    wait_for_process(&marker, &|| watching.log());
    let (code, log) = watching.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("watch: stopped by SIGTERM"), "{log}");
    // Stopped once (not killed: a second stop would have): its report
    // and its request's status say so, nothing is left running.
    assert_eq!(release(&marker), 0, "the module's sleep outlived the dance");
    let status = spool(&f).join(format!("{name}.failed"));
    let got = fields(&status);
    assert!(
        get(&got, "error").contains("the dance was stopped by SIGTERM"),
        "{got:?}\n{log}"
    );
    assert_eq!(get(&got, "exit"), "1");
    assert_eq!(listing(&spool(&f)), vec![format!("{name}.failed")]);
    assert_eq!(r.read("etc/from-m"), None);
}

#[test]
fn a_dance_killed_outright_ends_its_request_interrupted_and_watch_goes_on() {
    let (f, r) = fixture();
    let marker = format!("1000.{}9", std::process::id());
    f.module_file("m", "scripts/10-wait", &format!("sleep {marker}\n"), 0o755);
    let watching = Watching::start(&f, &r);
    let name = trigger(&f, &["--noop"]);
    wait_for_process(&marker, &|| watching.log());
    let running = fields(&spool(&f).join(format!("{name}.running")));
    let pid: i32 = get(&running, "pid").parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (status, got) = ended(&f, &name, &|| watching.log());
    common::sweep_cgroups(pid as u32);
    assert_eq!(status, "failed");
    assert_eq!(get(&got, "run"), get(&running, "run"));
    assert!(
        get(&got, "error").starts_with("interrupted: the dance (run "),
        "{got:?}"
    );
    // The same watch serves the next request.
    f.module_file("m", "scripts/10-wait", "true\n", 0o755);
    let next = trigger(&f, &["--noop"]);
    let (status, _) = ended(&f, &next, &|| watching.log());
    assert_eq!(status, "changed", "{}", watching.log());
    let (code, log) = watching.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn only_the_newest_64_ended_requests_are_kept() {
    let (f, r) = fixture();
    let older: Vec<String> = (0..60).map(|_| trigger(&f, &["--noop"])).collect();
    let (code, err) = watch_once(&f, &r);
    assert_eq!(code, 0, "{err}");
    // Names start with their second: the next ones sort after these.
    std::thread::sleep(Duration::from_millis(1100));
    let newer: Vec<String> = (0..10).map(|_| trigger(&f, &["--noop"])).collect();
    let (code, err) = watch_once(&f, &r);
    assert_eq!(code, 0, "{err}");
    let kept = listing(&spool(&f));
    assert_eq!(kept.len(), 64, "{kept:?}");
    assert!(kept.iter().all(|n| n.ends_with(".changed")), "{kept:?}");
    for n in &newer {
        assert!(kept.contains(&format!("{n}.changed")), "{n} not kept");
    }
    let gone = older
        .iter()
        .filter(|n| !kept.contains(&format!("{n}.changed")))
        .count();
    assert_eq!(gone, 6);
    // Two dances served the 70 requests.
    assert_eq!(reports(&f).len(), 2);
}

#[test]
fn a_dance_by_hand_serves_its_modes_requests_even_when_its_last_resort_ends_it() {
    let (f, r) = fixture();
    fs::write(f.config(), "dance_timeout = 2\n").unwrap();
    let noop = trigger(&f, &["--noop"]);
    let live = trigger(&f, &[]);
    // A noop dance by hand, stuck where no kill reaches: the deadline's
    // last resort ends it, and its (noop) request with it.
    let ended_by_hand = common::bounded({
        let mut c = f.process(&f.state(), &r.path);
        c.env("NOOP", "true")
            .env("DISCO_FAILPOINT", "hang:facts")
            .arg("dance");
        c
    });
    assert_eq!(ended_by_hand.code, 1, "{}", ended_by_hand.err);
    let (status, got) = ended(&f, &noop, &|| ended_by_hand.err.clone());
    assert_eq!(status, "failed");
    assert!(
        get(&got, "error").starts_with("the dance ran past dance_timeout (2 s)"),
        "{got:?}"
    );
    assert_eq!(get(&got, "exit"), "1");
    // The live request was not its to serve: it still waits.
    assert!(spool(&f).join(format!("{live}.request")).exists());
    assert_eq!(r.read("etc/from-m"), None);
}
