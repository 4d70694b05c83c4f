//! The standard modules of `stdlib/` (services, sysctl, cron, hosts,
//! motd) on a real Debian 12 root (`debootstrap --variant=minbase`), as
//! a node runs them: noop shows exactly what the live dance then does
//! (files and deferred commands) and leaves the root as it was; live
//! lands it; a second dance changes nothing and runs nothing; a parameter
//! change lands only its consequences; undo gives back the pristine root.
//!
//! Deferred commands never reach the host: without `--run-actions` a
//! `--root` dance runs none; with it they run chrooted into the root,
//! where `systemctl` and `sysctl` are test doubles that log their argv.
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::root::{deep_snapshot, pristine_view};
use common::{run, Fixture};

const MODULES: &[&str] = &["services", "sysctl", "cron", "hosts", "motd"];
/// What `cron` pulls in (`after users`, and users `after groups`): on the
/// server with it, in every plan that has cron.
const PULLED: &[&str] = &["users", "groups"];

/// Everything below the root (mtimes included) but disco's own state dir.
fn noop_view(root: &Path) -> Vec<String> {
    deep_snapshot(root)
        .into_iter()
        .filter(|l| !l.starts_with("var/lib/disco"))
        .collect()
}

/// Copies `stdlib/M` (README.md included) into the fixture's `modules/`.
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

/// Sets the node parameter KEY to `value` (None removes KEY, a whole
/// directory too).
fn param(f: &Fixture, key: &str, value: Option<&str>) {
    let p = f.server().join("parameters/n/parameters").join(key);
    match value {
        Some(v) => {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, v).unwrap();
        }
        None if p.is_dir() => fs::remove_dir_all(&p).unwrap(),
        None => fs::remove_file(&p).unwrap(),
    }
}

/// Writes ROOT/REL with `mode`, parents created.
fn root_file(root: &Path, rel: &str, content: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// `disco --node n --root ROOT dance --detailed-exitcodes [extra]`, state
/// dir inside the root as on a node.
fn dance(f: &Fixture, root: &Path, noop: bool, extra: &[&str]) -> (i32, String, String) {
    let mut c = f.disco_with_state(&root.join("var/lib/disco"));
    c.arg("--server").arg(f.server());
    if noop {
        c.env("NOOP", "1");
    }
    run(c
        .args(["--node", "n", "--root"])
        .arg(root)
        .args(["dance", "--detailed-exitcodes"])
        .args(extra))
}

/// The `File: PATH : KIND` part of every change line, sorted.
fn changes(err: &str) -> BTreeSet<String> {
    err.lines()
        .filter_map(|l| l.strip_prefix("info: File: "))
        .map(|l| {
            let mut parts = l.splitn(3, " : ");
            format!(
                "{} : {}",
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("")
            )
        })
        .collect()
}

fn set(lines: &[&str]) -> BTreeSet<String> {
    lines.iter().map(|s| s.to_string()).collect()
}

/// The lines of `err` that say a command would run or was deferred.
fn deferred(err: &str, prefix: &str) -> Vec<String> {
    err.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(String::from)
        .collect()
}

/// `facts/KEY` of this host as disco sees it for `root`.
fn fact(f: &Fixture, root: &Path, key: &str) -> String {
    let (code, out, err) = run(f
        .disco_with_state(&root.join("var/lib/disco"))
        .arg("--root")
        .arg(root)
        .args(["facts", "--json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[key].as_str().unwrap_or("").to_string()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn undo(f: &Fixture, root: &Path) {
    let (code, _, err) = run(f
        .disco_with_state(&root.join("var/lib/disco"))
        .arg("--root")
        .arg(root)
        .args(["undo", "--yes"]));
    assert_eq!(code, 0, "{err}");
}

/// The Debian root with a small unit and logging doubles of `systemctl`
/// and `sysctl` (minbase has neither), plus the fixture's server tree
/// using the standard modules.
fn setup(f: &Fixture) -> Option<PathBuf> {
    let root = common::debian::root(f.dir.path())?;
    fs::create_dir_all(root.join("var/lib/disco")).unwrap();
    root_file(
        &root,
        "etc/systemd/system/hello.service",
        "[Unit]\nDescription=hello\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    let double = "#!/bin/sh\necho \"${0##*/} $*\" >> /var/log/disco-test-actions\n";
    root_file(&root, "usr/bin/systemctl", double, 0o755);
    root_file(&root, "usr/sbin/sysctl", double, 0o755);
    use_stdlib(f, MODULES);
    use_stdlib(f, PULLED);
    Some(root)
}

#[test]
fn standard_modules_go_noop_live_converged_changed_and_back() {
    let f = Fixture::new();
    let Some(root) = setup(&f) else {
        return; // said why on stderr
    };
    let log = root.join("var/log/disco-test-actions");
    let mut node: Vec<&str> = MODULES.to_vec();
    node.push("hello-config");
    f.node("n", &node)
        .module("hello-config", "before services\n")
        .module_file(
            "hello-config",
            "files/etc/hello.conf",
            "greeting=hi\n",
            0o644,
        );
    param(&f, "services/hello/enabled", Some("true\n"));
    param(&f, "services/hello/running", Some("true\n"));
    param(&f, "services/hello/restart_on", Some("/etc/hello.conf\n"));
    param(&f, "services/fstrim.timer/enabled", Some("false\n"));
    param(&f, "sysctl/vm.swappiness", Some("10\n"));
    param(&f, "sysctl/net.ipv4.ip_forward", Some("1\n"));
    param(&f, "cron/backup/schedule", Some("30 2 * * *\n"));
    param(
        &f,
        "cron/backup/command",
        Some("/usr/local/bin/backup --quiet\n"),
    );
    param(&f, "cron/cleanup/schedule", Some("@daily\n"));
    param(&f, "cron/cleanup/user", Some("nobody\n"));
    param(
        &f,
        "cron/cleanup/command",
        Some("find /tmp -mtime +7 -delete\n"),
    );
    param(&f, "hosts/entries/db", Some("10.0.0.5 db.example.org db\n"));
    param(&f, "motd/text", Some("Authorized use only.\n"));
    let host = fact(&f, &root, "hostname");
    let fqdn = fact(&f, &root, "fqdn");
    let pristine = pristine_view(&root);
    let before = noop_view(&root);
    let actions = ["--run-actions"];

    let first = set(&[
        "/etc/cron.d/backup : Created",
        "/etc/cron.d/cleanup : Created",
        "/etc/hello.conf : Created",
        "/etc/hosts : Created",
        "/etc/motd : Modified",
        "/etc/sysctl.d : Created",
        "/etc/sysctl.d/60-disco.conf : Created",
        "/etc/systemd/system/multi-user.target.wants/hello.service : Created",
        "/etc/systemd/system/timers.target.wants/fstrim.timer : Deleted",
        "/var/lib/disco-services : Created",
        "/var/lib/disco-services/fstrim.timer : Created",
        "/var/lib/disco-services/hello.service : Created",
    ]);
    let first_actions = vec![
        "systemctl daemon-reload".to_string(),
        "systemctl restart hello.service".to_string(),
    ];

    // Noop: exactly these changes and deferred commands; the root unchanged.
    let (code, _, err) = dance(&f, &root, true, &actions);
    assert_eq!(code, 2, "{err}");
    let noop_changes = changes(&err);
    assert_eq!(noop_changes, first, "{err}");
    assert_eq!(
        deferred(&err, "warning: would execute: "),
        first_actions,
        "{err}"
    );
    assert!(
        err.contains("info: would run handler sysctl/handlers/10-apply\n"),
        "{err}"
    );
    assert_eq!(noop_view(&root), before, "noop changed the root");

    // Live: the same changes land, the same commands run (in the root).
    let (code, _, err) = dance(&f, &root, false, &actions);
    assert_eq!(code, 2, "{err}");
    assert_eq!(changes(&err), first, "noop said exactly this: {err}");
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "systemctl daemon-reload\nsystemctl restart hello.service\nsysctl -p /etc/sysctl.d/60-disco.conf\n",
        "{err}"
    );
    let etc = root.join("etc");
    assert_eq!(
        fs::read_link(etc.join("systemd/system/multi-user.target.wants/hello.service")).unwrap(),
        Path::new("/etc/systemd/system/hello.service")
    );
    assert!(
        fs::symlink_metadata(etc.join("systemd/system/timers.target.wants/fstrim.timer")).is_err()
    );
    assert!(
        fs::symlink_metadata(etc.join("systemd/system/timers.target.wants/apt-daily.timer"))
            .is_ok(),
        "other units stay enabled"
    );
    assert_eq!(
        fs::read_to_string(etc.join("sysctl.d/60-disco.conf")).unwrap(),
        "# Managed by disco's sysctl module (parameters sysctl/KEY); edits are lost.\n\
         net.ipv4.ip_forward = 1\nvm.swappiness = 10\n"
    );
    let header = "# Managed by disco's cron module (parameters cron/NAME); edits are lost.\n\
                  SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin\n";
    assert_eq!(
        fs::read_to_string(etc.join("cron.d/backup")).unwrap(),
        format!("{header}30 2 * * * root /usr/local/bin/backup --quiet\n")
    );
    assert_eq!(
        fs::read_to_string(etc.join("cron.d/cleanup")).unwrap(),
        format!("{header}@daily nobody find /tmp -mtime +7 -delete\n")
    );
    for p in [
        "cron.d/backup",
        "cron.d/cleanup",
        "hosts",
        "motd",
        "sysctl.d/60-disco.conf",
    ] {
        assert_eq!(mode(&etc.join(p)), 0o644, "{p}");
        assert_eq!(fs::metadata(etc.join(p)).unwrap().uid(), 0, "{p}");
    }
    let me = if fqdn.is_empty() || fqdn == host {
        format!("127.0.1.1\t{host}\n")
    } else {
        format!("127.0.1.1\t{fqdn} {host}\n")
    };
    assert_eq!(
        fs::read_to_string(etc.join("hosts")).unwrap(),
        format!(
            "127.0.0.1\tlocalhost\n{me}\n# hosts/entries\n10.0.0.5\tdb.example.org db\n\n\
             # The following lines are desirable for IPv6 capable hosts\n\
             ::1     localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n"
        )
    );
    assert_eq!(
        fs::read_to_string(etc.join("motd")).unwrap(),
        format!(
            "{}: debian 12 (bookworm), managed by disco\n\nAuthorized use only.\n",
            if fqdn.is_empty() { &host } else { &fqdn }
        )
    );

    // Converged: no change, nothing run.
    let (code, _, err) = dance(&f, &root, false, &actions);
    assert_eq!(code, 0, "the second dance changes nothing: {err}");
    assert!(!err.contains("File: "), "{err}");
    assert!(!err.contains("deferred until after the merge"), "{err}");
    assert!(!err.contains("running "), "{err}");
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 3);

    // A parameter change: one cron job gone, one sysctl changed, the
    // watched config changed (restart), a Debian unit enabled again (its
    // link as Debian made it, and a daemon-reload).
    param(&f, "cron/cleanup", None);
    param(&f, "services/fstrim.timer/enabled", Some("true\n"));
    param(&f, "sysctl/vm.swappiness", Some("20\n"));
    f.module_file(
        "hello-config",
        "files/etc/hello.conf",
        "greeting=hello\n",
        0o644,
    );
    let second = set(&[
        "/etc/cron.d/cleanup : Deleted",
        "/etc/hello.conf : Modified",
        "/etc/sysctl.d/60-disco.conf : Modified",
        "/etc/systemd/system/timers.target.wants/fstrim.timer : Created",
        "/var/lib/disco-services/fstrim.timer : Modified",
        "/var/lib/disco-services/hello.service : Modified",
    ]);
    let before = noop_view(&root);
    let (code, _, err) = dance(&f, &root, true, &actions);
    assert_eq!(code, 2, "{err}");
    assert_eq!(changes(&err), second, "{err}");
    assert_eq!(
        deferred(&err, "warning: would execute: "),
        ["systemctl daemon-reload", "systemctl restart hello.service"],
        "{err}"
    );
    assert!(
        err.contains("-vm.swappiness = 10\n+vm.swappiness = 20\n"),
        "{err}"
    );
    assert_eq!(noop_view(&root), before, "noop changed the root");
    let (code, _, err) = dance(&f, &root, false, &actions);
    assert_eq!(code, 2, "{err}");
    assert_eq!(changes(&err), second, "{err}");
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "systemctl daemon-reload\nsystemctl restart hello.service\nsysctl -p /etc/sysctl.d/60-disco.conf\n\
         systemctl daemon-reload\nsystemctl restart hello.service\nsysctl -p /etc/sysctl.d/60-disco.conf\n"
    );
    assert_eq!(
        fs::read_link(etc.join("systemd/system/timers.target.wants/fstrim.timer")).unwrap(),
        Path::new("/lib/systemd/system/fstrim.timer")
    );
    assert!(!etc.join("cron.d/cleanup").exists());
    assert!(etc.join("cron.d/backup").exists());
    assert!(
        etc.join("cron.d/e2scrub_all").exists(),
        "a drop-in the module did not make stays"
    );
    let (code, _, err) = dance(&f, &root, false, &actions);
    assert_eq!(code, 0, "converged again: {err}");

    // Two merged dances with changes: two undos give back the pristine root.
    undo(&f, &root);
    undo(&f, &root);
    assert_eq!(
        pristine_view(&root),
        pristine,
        "undo gives back the pristine root"
    );
}

#[test]
fn without_run_actions_a_root_dance_runs_no_command() {
    let f = Fixture::new();
    let Some(root) = setup(&f) else {
        return;
    };
    f.node("n", &["services", "sysctl"]);
    param(&f, "services/hello/enabled", Some("true\n"));
    param(&f, "services/hello/running", Some("false\n"));
    param(&f, "sysctl/kernel.panic", Some("10\n"));
    let (code, _, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        deferred(&err, "info: deferred until after the merge: "),
        ["systemctl daemon-reload", "systemctl stop hello.service"],
        "{err}"
    );
    for what in [
        "systemctl daemon-reload",
        "systemctl stop hello.service",
        "handler sysctl/handlers/10-apply",
    ] {
        assert!(
            err.contains(&format!(
                "info: not run (the root is {}, not /; --run-actions runs it there): {what}\n",
                root.display()
            )),
            "{what}: {err}"
        );
    }
    assert!(!root.join("var/log/disco-test-actions").exists());
    let (code, _, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn standard_modules_refuse_bad_parameters_with_one_clear_line() {
    let f = Fixture::new();
    let Some(root) = setup(&f) else {
        return;
    };
    f.node("n", MODULES);
    let before = noop_view(&root);
    let cases: &[(&str, &str, &str)] = &[
        (
            "cron/backup/schedule",
            "61 * * * *\n",
            "error: cron: parameter cron/backup/schedule: '61 * * * *' is not a cron schedule",
        ),
        (
            "cron/backup/schedule",
            "* * * * * *\n",
            "error: cron: parameter cron/backup/schedule: '* * * * * *' is not a cron schedule",
        ),
        (
            "cron/backup/user",
            "nosuchuser\n",
            "error: cron: parameter cron/backup/user: no user 'nosuchuser' on this node",
        ),
        (
            "cron/a.b/command",
            "true\n",
            "error: cron: parameter cron/a.b: cron ignores /etc/cron.d names outside [A-Za-z0-9_-]",
        ),
        (
            "services/hello/enabled",
            "maybe\n",
            "error: services: parameter services/hello/enabled: 'maybe' is not a boolean (true, yes, 1 or an empty file; false, no, 0)",
        ),
        (
            "hosts/ipv6",
            "on\n",
            "error: hosts: parameter hosts/ipv6: 'on' is not a boolean (true, yes, 1 or an empty file; false, no, 0)",
        ),
        (
            "services/nosuch/running",
            "true\n",
            "error: services: parameter services/nosuch: no unit nosuch.service in /etc/systemd/system /usr/local/lib/systemd/system /lib/systemd/system /usr/lib/systemd/system",
        ),
        (
            "services/apt-daily/enabled",
            "true\n",
            "error: services: parameter services/apt-daily/enabled: /lib/systemd/system/apt-daily.service has no WantedBy=, RequiredBy= or Alias= in [Install]: it cannot be enabled",
        ),
        (
            "sysctl/net/ipv4",
            "1\n",
            "error: sysctl: parameter sysctl/net: is a directory; give the key whole, with dots (sysctl/net.ipv4.ip_forward)",
        ),
        (
            "hosts/entries/db",
            "10.0.0.300 db\n",
            "error: hosts: parameter hosts/entries/db: '10.0.0.300' is not an IP address",
        ),
        (
            "motd/facts",
            "maybe\n",
            "error: motd: parameter motd/facts: 'maybe' is not a boolean (true, yes, 1 or an empty file; false, no, 0)",
        ),
    ];
    for (key, value, want) in cases {
        // A valid job beside the bad value, so only the bad one is refused.
        param(&f, "cron/backup/schedule", Some("@hourly\n"));
        param(&f, "cron/backup/command", Some("true\n"));
        param(&f, key, Some(value));
        let (code, _, err) = dance(&f, &root, true, &[]);
        assert_eq!(code, 1, "{key}: {err}");
        assert!(
            err.lines().any(|l| l == *want),
            "{key}: want {want:?} in:\n{err}"
        );
        let top = key.split('/').take(2).collect::<Vec<_>>().join("/");
        param(&f, &top, None);
    }
    assert_eq!(noop_view(&root), before, "a refused dance changes nothing");
}

#[test]
fn restart_on_counts_symlinks_and_their_targets_and_an_empty_boolean_is_true() {
    let f = Fixture::new();
    let Some(root) = setup(&f) else {
        return;
    };
    f.node("n", &["services"]);
    // A directory of links, as /etc/nginx/sites-enabled.
    root_file(&root, "etc/hello/sites-available/a", "a=1\n", 0o644);
    root_file(&root, "etc/hello/sites-available/b", "b=1\n", 0o644);
    fs::create_dir_all(root.join("etc/hello/sites-enabled")).unwrap();
    std::os::unix::fs::symlink(
        "../sites-available/a",
        root.join("etc/hello/sites-enabled/a"),
    )
    .unwrap();
    // An empty file is true, as in every standard module.
    param(&f, "services/hello/enabled", Some(""));
    param(&f, "services/hello/running", Some("yes\n"));
    param(
        &f,
        "services/hello/restart_on",
        Some("/etc/hello/sites-enabled\n"),
    );
    let restart = ["systemctl daemon-reload", "systemctl restart hello.service"];
    let (code, _, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        deferred(&err, "info: deferred until after the merge: "),
        restart,
        "{err}"
    );
    assert_eq!(
        fs::read_link(root.join("etc/systemd/system/multi-user.target.wants/hello.service"))
            .unwrap(),
        Path::new("/etc/systemd/system/hello.service"),
        "enabled (an empty file)"
    );
    let (code, _, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 0, "converged: {err}");

    // The linked file's content changes: noop says the restart, live defers it.
    fs::write(root.join("etc/hello/sites-available/a"), "a=2\n").unwrap();
    let (code, _, err) = dance(&f, &root, true, &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        deferred(&err, "warning: would execute: "),
        ["systemctl restart hello.service"],
        "{err}"
    );
    let (code, _, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        changes(&err),
        set(&["/var/lib/disco-services/hello.service : Modified"]),
        "{err}"
    );
    assert_eq!(
        deferred(&err, "info: deferred until after the merge: "),
        ["systemctl restart hello.service"],
        "{err}"
    );
    let (code, _, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 0, "converged: {err}");

    // A site enabled: a new link, no new file.
    std::os::unix::fs::symlink(
        "../sites-available/b",
        root.join("etc/hello/sites-enabled/b"),
    )
    .unwrap();
    let (code, _, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        deferred(&err, "info: deferred until after the merge: "),
        ["systemctl restart hello.service"],
        "{err}"
    );
    let (code, _, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 0, "converged: {err}");
}

#[test]
fn cron_runs_after_users_and_never_replaces_a_foreign_drop_in() {
    let f = Fixture::new();
    let Some(root) = setup(&f) else {
        return;
    };
    // cron alone pulls users (and groups) in, before it: a job may run as
    // a user made in the same dance.
    f.node("n", &["cron"]);
    param(&f, "users/reporter/shell", Some("/bin/sh\n"));
    param(&f, "cron/report/schedule", Some("@daily\n"));
    param(&f, "cron/report/user", Some("reporter\n"));
    param(&f, "cron/report/command", Some("true\n"));
    let (code, out, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("info: Discovered dependency: cron -> users"),
        "{err}"
    );
    assert!(out.contains("users: created user reporter"), "{out}");
    let job = fs::read_to_string(root.join("etc/cron.d/report")).unwrap();
    assert!(job.ends_with("\n@daily reporter true\n"), "{job}");
    let (code, _, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 0, "converged: {err}");

    // A package's drop-in of the same name is refused, never replaced.
    let foreign = root.join("etc/cron.d/e2scrub_all");
    let before = fs::read_to_string(&foreign).unwrap();
    param(&f, "cron/e2scrub_all/schedule", Some("@hourly\n"));
    param(&f, "cron/e2scrub_all/command", Some("true\n"));
    for noop in [true, false] {
        let (code, _, err) = dance(&f, &root, noop, &[]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.lines().any(|l| l
                == "error: cron: parameter cron/e2scrub_all: /etc/cron.d/e2scrub_all exists and was not written by disco (a package's?); choose another name"),
            "{err}"
        );
    }
    assert_eq!(fs::read_to_string(&foreign).unwrap(), before);
}
