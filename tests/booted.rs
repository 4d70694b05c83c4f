//! disco on a real init: a Debian 12 root with systemd booted as a
//! container (`systemd-nspawn -b`, systemd as PID 1, no failed unit), the
//! .deb installed inside with apt, the node enrolled with `disco init`
//! against a real sshd of the test, and every dance run as the packaged
//! unit (`systemctl start disco.service`), its exit status and journal
//! checked: `packages` installs nginx-light, a `site` module writes its
//! config, `services` enables and starts it; nginx then really runs and
//! answers; a second run changes and restarts nothing; a config change
//! restarts nginx exactly once; the timer is enabled and listed; the
//! enabled disco.path turns `disco trigger` into a dance at once.
//!
//! Each run's journal and wall time are shown with
//! `cargo test --test booted -- --nocapture`.
//! When nspawn cannot boot here, a test says `skipped:` and why.
mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::booted::Container;
use common::sshd::Sshd;
use common::Fixture;

/// One `systemctl start disco.service`.
struct UnitRun {
    /// `systemctl start`'s own exit status.
    start: i32,
    /// disco's exit status and the unit's `Result`. systemd keeps a
    /// oneshot's `ExecMainStatus` only when it failed (a success, 0 or a
    /// `SuccessExitStatus=2`, reads 0 once the unit is inactive): then
    /// the status is the one disco saved in its report of the run.
    status: String,
    result: String,
    /// Its journal lines, message only (`-o cat`) and as shown (`-o short-precise`).
    lines: Vec<String>,
    shown: String,
    wall: Duration,
}

/// Starts disco.service and waits for it to end (a oneshot), returning
/// what it did.
fn start_disco(c: &Container, what: &str) -> UnitRun {
    // The journal from now on (the host's clock is the container's).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let since = format!("--since=@{}.{:06}", now.as_secs(), now.subsec_micros());
    let t = Instant::now();
    let o = c.run(&["systemctl", "start", "disco.service"]);
    let wall = t.elapsed();
    c.out(&["journalctl", "--sync"]);
    let journal = |format: &str| {
        c.out(&[
            "journalctl",
            "-q",
            "--no-pager",
            "-u",
            "disco.service",
            &since,
            "-o",
            format,
        ])
    };
    let result = c.said(&["systemctl", "show", "-P", "Result", "disco.service"]);
    let status = if result == "success" {
        let report = c.said(&["disco", "report"]);
        report
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("report: exit: "))
            .unwrap_or("")
            .to_string()
    } else {
        c.said(&["systemctl", "show", "-P", "ExecMainStatus", "disco.service"])
    };
    let run = UnitRun {
        start: o.status.code().unwrap_or(-1),
        status,
        result,
        lines: journal("cat").lines().map(String::from).collect(),
        shown: journal("short-precise"),
        wall,
    };
    eprintln!(
        "--- disco.service, {what}: {:.1} s, exit status {}, Result={}\n{}",
        run.wall.as_secs_f64(),
        run.status,
        run.result,
        run.shown
    );
    run
}

/// The lines systemd itself logs for a oneshot that started and ended.
fn is_start_or_stop(line: &str) -> bool {
    line.starts_with("Starting disco.service")
        || line.starts_with("Finished disco.service")
        || line == "disco.service: Deactivated successfully."
        || line.starts_with("disco.service: Consumed ")
}

/// How often nginx.service was started, from its journal.
fn nginx_starts(c: &Container) -> usize {
    c.out(&["journalctl", "--sync"]);
    c.out(&[
        "journalctl",
        "-q",
        "--no-pager",
        "-u",
        "nginx.service",
        "-o",
        "cat",
    ])
    .lines()
    .filter(|l| l.starts_with("Started nginx.service"))
    .count()
}

/// nginx.service's main PID, as systemd in the container knows it.
fn nginx_pid(c: &Container) -> String {
    c.said(&["systemctl", "show", "-P", "MainPID", "nginx.service"])
}

/// The body nginx answers on 127.0.0.1:`port` (shared network).
fn get(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies `stdlib/M` into the fixture's `modules/`.
fn use_stdlib(f: &Fixture, modules: &[&str]) {
    for m in modules {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("stdlib").join(m);
        let st = Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(f.server().join("modules"))
            .status()
            .unwrap();
        assert!(st.success(), "cannot copy {}", src.display());
    }
}

/// Sets the parameter KEY of node web1.
fn param(f: &Fixture, key: &str, value: &str) {
    f.file(&format!("parameters/web1/parameters/{key}"), value);
}

/// The site: nginx's whole config, on 127.0.0.1:site/port only (the
/// container shares the host's network), answering site/greeting.
const SITE_TEMPLATE: &str = r#"set -euo pipefail
port=$(disco param get site/port)
greeting=$(disco param get site/greeting)
cat <<EOF
# Managed by disco (module site).
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
events {
    worker_connections 64;
}
http {
    access_log off;
    server {
        listen 127.0.0.1:$port;
        location / {
            default_type text/plain;
            return 200 "$greeting\n";
        }
    }
}
EOF
"#;

/// A booted node `web1` (machine `disco-WHAT-PID`) with the .deb installed and enrolled with
/// `disco init` against the test's sshd serving the fixture's tree.
/// `None` (said in one `skipped:` line) when it cannot be made or boot here.
struct Node {
    // Dropped first: powered off before the sshd and the files go.
    c: Container,
    _sshd: Sshd,
}

fn enrolled(f: &Fixture, what: &str) -> Option<Node> {
    let root = common::booted::root(f.dir.path())?;
    let deb = common::deb::build(&f.dir.path().join("out"));
    fs::copy(&deb, root.join("root/disco.deb")).unwrap();
    let sshd = Sshd::start(&f.dir.path().join("sshd"), &[]);
    // Unique on the host: tests of one binary run side by side.
    let name = format!("disco-{what}-{}", std::process::id());
    let c = match Container::boot(&root, &name, &f.dir.path().join("console.log")) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("skipped: the Debian root with systemd does not boot here: {why}");
            return None;
        }
    };
    eprintln!(
        "booted with `{}` in {:.1} s (exec inside: nsenter -t {} -a -- CMD)",
        c.command,
        c.boot_time.as_secs_f64(),
        c.leader
    );
    // On this hybrid host systemd-nspawn mounts the container's v1
    // controllers read-only (a real node, Debian 12, has a cgroup v2 tree
    // that its systemd delegates to disco.service): made writable here,
    // from the host, as the container's own subtree, so disco's sandboxes
    // get their cgroups below disco.service's as on a node.
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        for ctl in ["pids", "memory"] {
            let o = Command::new("nsenter")
                .args(["-t", &c.leader.to_string(), "-m", "--"])
                .args(["mount", "-o", "remount,rw,bind"])
                .arg(format!("/sys/fs/cgroup/{ctl}"))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    }
    // systemd is PID 1 there, and nothing failed.
    assert_eq!(c.out(&["cat", "/proc/1/comm"]).trim(), "systemd");
    assert_eq!(
        c.state,
        "running",
        "failed units: {}",
        c.said(&["systemctl", "--failed", "--no-legend"])
    );

    // The .deb, installed as an admin does.
    let o = c.run(&[
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-q",
        "/root/disco.deb",
    ]);
    assert!(
        o.status.success(),
        "apt-get install disco.deb: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        c.out(&["disco", "--version"]),
        format!("disco {}\n", env!("CARGO_PKG_VERSION"))
    );

    // Enrolment against the test's sshd, its host key's fingerprint given.
    let print = String::from_utf8_lossy(
        &Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(sshd.dir.join("host_key.pub"))
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_string();
    let uri = sshd.uri(&f.server().display().to_string());
    let out = c.out(&[
        "disco",
        "init",
        "--server",
        &uri,
        "--node",
        "web1",
        "--host-key",
        &print,
    ]);
    let line = out
        .lines()
        .find(|l| l.starts_with("command=\"disco serve "))
        .unwrap_or_else(|| panic!("no authorized_keys line in:\n{out}"));
    // The server admin installs it (the test's binary stands for disco).
    let installed = line.replacen(
        "disco serve",
        &format!("{} serve", env!("CARGO_BIN_EXE_disco")),
        1,
    );
    fs::write(sshd.dir.join("authorized_keys"), format!("{installed}\n")).unwrap();
    Some(Node { c, _sshd: sshd })
}

/// The timer, as docs/fleet.md says to enable it: enabled, active, listed.
fn enable_the_timer(c: &Container) {
    c.out(&["systemctl", "enable", "--now", "disco.timer"]);
    assert_eq!(
        c.said(&["systemctl", "is-enabled", "disco.timer"]),
        "enabled"
    );
    assert_eq!(c.said(&["systemctl", "is-active", "disco.timer"]), "active");
    let timers = c.out(&["systemctl", "list-timers", "--all", "--no-pager"]);
    assert!(
        timers
            .lines()
            .any(|l| l.contains(" disco.timer ") && l.contains("disco.service")),
        "{timers}"
    );
}

/// Dancing now, as docs/fleet.md says: the package enabled and started
/// disco.path; `disco trigger` starts disco-trigger.service, whose dance
/// applies the server's change and ends the request `.changed`; the next
/// one, converged, `.ok`.
fn dance_now(c: &Container, f: &Fixture) {
    assert_eq!(
        c.said(&["systemctl", "is-enabled", "disco.path"]),
        "enabled"
    );
    assert_eq!(c.said(&["systemctl", "is-active", "disco.path"]), "active");
    f.module_file("motd", "files/etc/motd", "managed by disco, now\n", 0o644);
    // (A noop dance cannot make its network namespace's loopback in this
    // container: tests/trigger.rs runs the noop requests.)
    for (args, code, status) in [
        (&["--detailed-exitcodes"][..], 2, ".changed"),
        (&["--detailed-exitcodes"][..], 0, ".ok"),
    ] {
        let mut all = vec!["disco", "trigger", "--wait"];
        all.extend(args);
        let o = c.run_with_timeout(&all, 120);
        let out = String::from_utf8_lossy(&o.stdout);
        let journal = c.said(&[
            "journalctl",
            "-q",
            "--no-pager",
            "-u",
            "disco-trigger.service",
        ]);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{all:?}: {out}{}\n{journal}",
            String::from_utf8_lossy(&o.stderr)
        );
        let ended = out.lines().nth(1).unwrap_or_default();
        assert!(
            ended.starts_with("/var/lib/disco/trigger/") && ended.ends_with(status),
            "{out}"
        );
        assert!(
            c.out(&["cat", ended]).contains("\nrun="),
            "{ended}: no run id"
        );
    }
    assert_eq!(c.out(&["cat", "/etc/motd"]), "managed by disco, now\n");
}

/// What works whatever the state of the standard modules: the root boots
/// (systemd PID 1, nothing failed), takes the .deb, `disco init` enrols it
/// over the real sshd, disco.service runs a dance of a small module as the
/// packaged unit (exit 2 with a change, 0 converged), and the timer is
/// enabled and listed.
#[test]
fn a_booted_node_takes_the_deb_enrols_and_dances_as_the_packaged_unit() {
    let f = Fixture::new();
    f.node("web1", &["motd"]).module("motd", "").module_file(
        "motd",
        "files/etc/motd",
        "managed by disco\n",
        0o644,
    );
    let Some(node) = enrolled(&f, "deb") else {
        return; // said why on stderr
    };
    let c = &node.c;
    let first = start_disco(c, "a file");
    assert_eq!(
        (first.start, first.status.as_str(), first.result.as_str()),
        (0, "2", "success"),
        "{}",
        first.shown
    );
    assert_eq!(c.out(&["cat", "/etc/motd"]), "managed by disco\n");
    assert!(
        first
            .lines
            .iter()
            .any(|l| l.starts_with("info: motd: File: /etc/motd : Modified : ")),
        "{}",
        first.shown
    );
    let second = start_disco(c, "converged");
    assert_eq!(
        (second.start, second.status.as_str(), second.result.as_str()),
        (0, "0", "success"),
        "{}",
        second.shown
    );
    let extra: Vec<&String> = second
        .lines
        .iter()
        .filter(|l| !is_start_or_stop(l))
        .collect();
    assert!(extra.is_empty(), "a converged run says nothing: {extra:?}");
    enable_the_timer(c);
    dance_now(c, &f);

    // A fork bomb in a module ends at max_processes, as the packaged unit
    // runs it (the cgroups below the unit's, Delegate=), and leaves none.
    f.node("web1", &["motd", "bomb"])
        .module("bomb", "")
        .module_file(
            "bomb",
            "scripts/10-bomb",
            "#!/bin/bash\nb() { b | b & }\nb\nwait\nsleep 600\n",
            0o755,
        );
    c.out(&[
        "sh",
        "-c",
        "echo 'max_processes = 300' > /etc/disco/disco.d/limits.toml",
    ]);
    let bombed = start_disco(c, "a fork bomb");
    assert_eq!(bombed.status.as_str(), "1", "{}", bombed.shown);
    assert!(
        bombed
            .lines
            .iter()
            .any(|l| l == "error: bomb: scripts/10-bomb: more than 300 processes (max_processes)"),
        "{}",
        bombed.shown
    );
    // This run's disco (`disco[PID]:` in the journal) left no cgroup; the
    // other test's container shares this hybrid host's v1 tree, and its
    // dances' cgroups may be there meanwhile.
    let pid = bombed
        .shown
        .lines()
        .find_map(|l| l.split(" disco[").nth(1)?.split(']').next())
        .expect("disco's PID in the journal")
        .to_string();
    let left = c.run(&[
        "sh",
        "-c",
        &format!("find /sys/fs/cgroup -name 'disco-{pid}-*' -type d"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&left.stdout),
        "",
        "cgroups left:\n{}",
        bombed.shown
    );
}

#[test]
fn a_booted_node_installs_runs_and_restarts_nginx_as_the_packaged_unit() {
    let t0 = Instant::now();
    let f = Fixture::new();
    if !common::debian::mirror_reachable() {
        eprintln!("skipped: the Debian mirror cannot be reached (apt in the container installs nginx-light from it)");
        return;
    }
    // The server tree: packages, a site, services; web1 runs the three.
    use_stdlib(&f, &["packages", "services"]);
    f.node("web1", &["packages", "site", "services"])
        .module("site", "after packages\nbefore services\n")
        .module_file(
            "site",
            "templates/etc/nginx/nginx.conf",
            SITE_TEMPLATE,
            0o644,
        );
    let port = free_port();
    param(&f, "packages/install/nginx-light", "");
    // The template's package lists may be old: the live dance updates them.
    param(&f, "packages/update", "true\n");
    param(&f, "site/port", &format!("{port}\n"));
    param(&f, "site/greeting", "hello from web1\n");
    param(&f, "services/nginx/enabled", "true\n");
    param(&f, "services/nginx/running", "true\n");
    param(&f, "services/nginx/restart_on", "/etc/nginx/nginx.conf\n");
    let Some(node) = enrolled(&f, "nginx") else {
        return; // said why on stderr
    };
    let c = &node.c;

    // First run: nginx installed, configured, enabled, started.
    let first = start_disco(c, "first run");
    assert_eq!(
        (first.start, first.status.as_str(), first.result.as_str()),
        (0, "2", "success"),
        "the first run changes and succeeds:\n{}",
        first.shown
    );
    assert_eq!(
        c.said(&["systemctl", "is-active", "nginx.service"]),
        "active"
    );
    assert_eq!(
        c.said(&["systemctl", "is-enabled", "nginx.service"]),
        "enabled"
    );
    assert_eq!(get(port), "hello from web1\n");
    let starts = nginx_starts(c);
    let pid = nginx_pid(c);

    // Second run: converged, nothing changed or restarted.
    let second = start_disco(c, "second run");
    assert_eq!(
        (second.start, second.status.as_str(), second.result.as_str()),
        (0, "0", "success"),
        "{}",
        second.shown
    );
    let extra: Vec<&String> = second
        .lines
        .iter()
        .filter(|l| !is_start_or_stop(l))
        .collect();
    assert!(extra.is_empty(), "the second run says nothing: {extra:?}");
    assert_eq!(nginx_starts(c), starts, "nothing restarted");
    assert_eq!(nginx_pid(c), pid);

    // A config change: nginx restarted exactly once, with the new config.
    param(&f, "site/greeting", "hello again\n");
    let change = start_disco(c, "config change");
    assert_eq!(
        (change.start, change.status.as_str(), change.result.as_str()),
        (0, "2", "success"),
        "{}",
        change.shown
    );
    assert_eq!(nginx_starts(c), starts + 1, "restarted exactly once");
    assert_ne!(nginx_pid(c), pid, "a new main process");
    assert_eq!(
        c.said(&["systemctl", "is-active", "nginx.service"]),
        "active"
    );
    assert_eq!(get(port), "hello again\n");
    let again = start_disco(c, "converged again");
    assert_eq!(
        (again.status.as_str(), again.result.as_str()),
        ("0", "success")
    );
    assert_eq!(nginx_starts(c), starts + 1);

    enable_the_timer(c);
    eprintln!("booted: whole test {:.1} s", t0.elapsed().as_secs_f64());
}
