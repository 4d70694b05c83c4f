//! The service-manager shims as a module sees them (DESIGN §5, the table
//! in docs/modules.md): every form of a query is answered in the sandbox
//! and never queued, enablement runs the root's own tool in the sandbox
//! (its files in the diff, noop predicting them), state changes are
//! deferred and said by disco from the queue — the noop's `would
//! execute:` lines are exactly the actions the live dance then runs.
//!
//! Deferred actions run only with `--run-actions`, chrooted into the
//! fixture root, where every service tool is a test double that logs its
//! argv: nothing real is ever started.
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::root::{pristine_view, FixtureRoot};
use common::{run, Fixture};

fn dance(f: &Fixture, root: &Path, noop: bool, extra: &[&str]) -> (i32, String, String) {
    let mut c = f.disco();
    if noop {
        c.env("NOOP", "true");
    }
    run(c
        .args(["--node", "n", "--root"])
        .arg(root)
        .args(["dance", "--detailed-exitcodes"])
        .args(extra))
}

/// The lines of `err` after `prefix`.
fn lines(err: &str, prefix: &str) -> Vec<String> {
    err.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(String::from)
        .collect()
}

fn v(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|s| s.to_string()).collect()
}

/// A test double at ROOT/REL that logs `NAME ARGS` to /etc/calls.
fn double(root: &Path, rel: &str, extra: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(
        &p,
        format!("#!/bin/sh\necho \"${{0##*/}} $*\" >> /etc/calls\n{extra}exit 0\n"),
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

const QUERIES: &str = r#"set +e
q() { "$@" >/tmp/o 2>/dev/null; echo "$* -> $? $(tr '\n' ' ' </tmp/o)" >> /etc/answers; }
q systemctl is-active nginx
q systemctl --quiet is-active nginx
q systemctl -q is-active nginx
q systemctl --system is-active --quiet nginx
q systemctl is-failed nginx
q systemctl status nginx
q systemctl --no-pager status nginx
q systemctl show -p ActiveState nginx
q systemctl show --property=ActiveState,SubState --value nginx
q systemctl list-units --type=service
q service nginx status
q invoke-rc.d nginx status
q invoke-rc.d --quiet nginx status
q deb-systemd-invoke is-active nginx.service
q /etc/init.d/nginx status
"#;

const ANSWERS: &str = "systemctl is-active nginx -> 3 inactive 
systemctl --quiet is-active nginx -> 3 
systemctl -q is-active nginx -> 3 
systemctl --system is-active --quiet nginx -> 3 
systemctl is-failed nginx -> 1 inactive 
systemctl status nginx -> 3 
systemctl --no-pager status nginx -> 3 
systemctl show -p ActiveState nginx -> 0 ActiveState=inactive 
systemctl show --property=ActiveState,SubState --value nginx -> 0 inactive dead 
systemctl list-units --type=service -> 0 
service nginx status -> 3 
invoke-rc.d nginx status -> 3 
invoke-rc.d --quiet nginx status -> 3 
deb-systemd-invoke is-active nginx.service -> 3 inactive 
/etc/init.d/nginx status -> 3 
";

const CHANGES: &str = r#"systemctl -q is-enabled app
systemctl --quiet --no-reload enable app
systemctl enable --now web
update-rc.d old defaults
systemctl daemon-reload
systemctl restart nginx
/usr/bin/systemctl --system daemon-reload
service nginx reload
invoke-rc.d --quiet nginx restart
deb-systemd-invoke try-restart nginx.service
/etc/init.d/nginx restart
"#;

/// What the module queues, in order: the `--now` start, one daemon-reload.
const DEFERRED: &[&str] = &[
    "systemctl start web.service",
    "systemctl daemon-reload",
    "systemctl restart nginx",
    "service nginx reload",
    "invoke-rc.d --quiet nginx restart",
    "deb-systemd-invoke try-restart nginx.service",
    "nginx restart",
];

/// What the root's own tools did in the sandbox (their log is a file the
/// diff shows, merged by the live dance).
const IN_SANDBOX: &str = "systemctl -q is-enabled app
systemctl --quiet --no-reload enable app
systemctl enable web
update-rc.d old defaults
";

/// A fixture root with a double for every service tool, and an LSB init
/// script that sources /lib/lsb/init-functions.
fn service_root(dir: &Path) -> FixtureRoot {
    let r = FixtureRoot::new(dir);
    for rel in [
        "usr/bin/systemctl",
        "usr/sbin/service",
        "usr/sbin/invoke-rc.d",
        "usr/sbin/update-rc.d",
        "usr/bin/deb-systemd-invoke",
    ] {
        double(&r.path, rel, "");
    }
    r.file("lib/lsb/init-functions", "# LSB init functions (test)\nfor h in /lib/lsb/init-functions.d/*; do [ -r \"$h\" ] && . \"$h\"; done\n");
    r.file("lib/lsb/init-functions.d/40-other", "");
    r.file(
        "etc/init.d/nginx",
        "#!/bin/sh\n. /lib/lsb/init-functions\necho \"init script ran: $1\" >> /etc/calls\n",
    );
    fs::set_permissions(
        r.path.join("etc/init.d/nginx"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    r
}

#[test]
fn queries_are_answered_changes_deferred_enablement_run_in_the_sandbox() {
    let f = Fixture::new();
    let r = service_root(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-q", QUERIES, 0o755)
        .module_file("m", "scripts/20-c", CHANGES, 0o755);
    let before = pristine_view(&r.path);

    let (code, out, err) = dance(&f, &r.path, true, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(pristine_view(&r.path), before, "noop changes nothing");
    assert_eq!(
        lines(&err, "warning: would execute: "),
        v(DEFERRED),
        "{err}"
    );
    assert!(err.contains("info: File: /etc/answers : Created"), "{err}");
    assert!(err.contains("info: File: /etc/calls : Created"), "{err}");
    assert!(
        err.contains(&format!(
            "noop: 2 change(s) and {} deferred action(s) in 1 module(s)",
            DEFERRED.len()
        )),
        "{err}"
    );

    let (code, out, err) = dance(&f, &r.path, false, &["--run-actions"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        lines(&err, "info: deferred until after the merge: "),
        v(DEFERRED),
        "{err}"
    );
    assert_eq!(
        lines(&err, "info: running deferred action: "),
        v(DEFERRED),
        "noop said exactly what live ran: {err}"
    );
    assert_eq!(
        fs::read_to_string(r.path.join("etc/answers")).unwrap(),
        ANSWERS
    );
    let replayed: String = DEFERRED
        .iter()
        .map(|a| match a.strip_prefix("nginx ") {
            Some(verb) => format!("init script ran: {verb}\n"),
            None => format!("{a}\n"),
        })
        .collect();
    assert_eq!(
        fs::read_to_string(r.path.join("etc/calls")).unwrap(),
        format!("{IN_SANDBOX}{replayed}"),
        "the sandbox's calls (merged), then the replay"
    );
    let report: disco::report::RunReport =
        serde_json::from_str(&fs::read_to_string(f.state().join("reports/last.json")).unwrap())
            .unwrap();
    let queued: Vec<String> = report.modules[0]
        .actions
        .iter()
        .map(|a| a.join(" "))
        .collect();
    assert!(
        queued
            .iter()
            .all(|a| !a.contains("is-") && !a.contains("status") && !a.contains("show")),
        "no query is an action: {queued:?}"
    );
    assert_eq!(queued.len(), DEFERRED.len(), "{queued:?}");
}

#[test]
fn is_enabled_reads_the_links_made_earlier_in_the_dance() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    r.file(
        "lib/systemd/system/a.service",
        "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    );
    f.node("n", &["links", "ask"])
        .module("links", "")
        .module("ask", "after links\n");
    f.module_file(
        "ask",
        "scripts/10-ask",
        "set +e\nsystemctl is-enabled a b > /etc/before; echo \"exit $?\" >> /etc/before\n",
        0o755,
    );
    f.module_file(
        "links",
        "scripts/10-link",
        "mkdir -p /etc/systemd/system/multi-user.target.wants\nln -s /lib/systemd/system/a.service /etc/systemd/system/multi-user.target.wants/a.service\n",
        0o755,
    );
    let (code, out, err) = dance(&f, &r.path, true, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(!err.contains("would execute"), "{err}");
    let (code, out, err) = dance(&f, &r.path, false, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        fs::read_to_string(r.path.join("etc/before")).unwrap(),
        "enabled\nexit 0\n"
    );
    assert!(
        err.contains("Failed to get unit file state for b.service"),
        "{err}"
    );
}

#[test]
fn enablement_without_the_tool_in_the_root_fails_the_step() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-x", "systemctl enable nothing\n", 0o755);
    let (code, _, err) = dance(&f, &r.path, true, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("systemctl enable nothing: systemctl is not installed in this root"),
        "{err}"
    );
}

/// A copy of the Debian root with systemd installed (its unit-file
/// tools), or `None` when the mirror cannot be reached.
fn debian_with_systemd(dir: &Path) -> Option<std::path::PathBuf> {
    let root = common::debian::root(dir)?;
    if !common::debian::mirror_reachable() {
        eprintln!(
            "skipped: the Debian mirror is not reachable (systemd must be installed in the root)"
        );
        return None;
    }
    let resolv = root.join("etc/resolv.conf");
    let lent = fs::symlink_metadata(&resolv).is_err();
    if lent {
        fs::copy("/etc/resolv.conf", &resolv).unwrap();
    }
    let out = Command::new("chroot")
        .arg(&root)
        .args(["apt-get", "-q", "-y", "--no-install-recommends"])
        .args([
            "-o",
            "Dir::Cache::pkgcache=",
            "-o",
            "Dir::Cache::srcpkgcache=",
        ])
        .args(["install", "systemd"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    if lent {
        fs::remove_file(&resolv).unwrap();
    }
    assert!(
        root.join("usr/bin/systemctl").is_file(),
        "apt-get install systemd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(root)
}

const UNIT: &str = "[Unit]\nDescription=app\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n";
const INIT: &str = "#!/bin/sh\n### BEGIN INIT INFO\n# Provides:          oldd\n# Required-Start:    $remote_fs\n# Required-Stop:     $remote_fs\n# Default-Start:     2 3 4 5\n# Default-Stop:      0 1 6\n# Short-Description: old daemon\n### END INIT INFO\nexit 0\n";

#[test]
fn systemctl_enable_and_update_rc_d_run_in_the_sandbox_on_debian() {
    let f = Fixture::new();
    let Some(root) = debian_with_systemd(f.dir.path()) else {
        return;
    };
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/systemd/system/app.service", UNIT, 0o644)
        .module_file("m", "files/etc/init.d/oldd", INIT, 0o755)
        .module_file(
            "m",
            "scripts/10-enable",
            "systemctl --quiet enable app.service\nupdate-rc.d oldd defaults\nsystemctl is-enabled app oldd > /etc/state\n",
            0o755,
        );
    let links = |err: &str| -> Vec<String> {
        let mut l: Vec<String> = err
            .lines()
            .filter_map(|l| l.strip_prefix("info: File: "))
            .filter(|l| l.contains("type=[symbolic link]"))
            .map(|l| l.split(" : ").next().unwrap().to_string())
            .collect();
        l.sort();
        l
    };
    let (code, out, noop_err) = dance(&f, &root, true, &[]);
    assert_eq!(code, 2, "{out}{noop_err}");
    let want: Vec<String> =
        std::iter::once("/etc/systemd/system/multi-user.target.wants/app.service".to_string())
            .chain(
                [
                    "rc0.d/K01oldd",
                    "rc1.d/K01oldd",
                    "rc2.d/S01oldd",
                    "rc3.d/S01oldd",
                    "rc4.d/S01oldd",
                    "rc5.d/S01oldd",
                    "rc6.d/K01oldd",
                ]
                .iter()
                .map(|l| format!("/etc/{l}")),
            )
            .collect();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(links(&noop_err), sorted, "{noop_err}");
    assert!(!noop_err.contains("would execute"), "{noop_err}");
    assert!(!root.join("etc/rc2.d/S01oldd").exists());

    let (code, out, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(links(&err), sorted, "noop predicted the live links: {err}");
    for l in &want {
        assert!(
            fs::symlink_metadata(root.join(l.trim_start_matches('/'))).is_ok(),
            "{l} merged"
        );
    }
    assert_eq!(
        fs::read_to_string(root.join("etc/state")).unwrap(),
        "enabled\nenabled\n"
    );
    let (code, out, err) = dance(&f, &root, false, &[]);
    assert_eq!(code, 0, "converged: {out}{err}");
}

#[test]
fn offline_first_noop_of_a_daemon_is_pending_and_later_modules_run() {
    let f = Fixture::new();
    let Some(root) = common::debian::root(f.dir.path()) else {
        return;
    };
    for m in ["packages", "services"] {
        let st = Command::new("cp")
            .arg("-a")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("stdlib").join(m))
            .arg(f.server().join("modules"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    f.node("n", &["packages", "services", "later"])
        .module("later", "after services\n");
    f.file("modules/services/requires", "after packages\n");
    f.module_file("later", "files/etc/later", "ran\n", 0o644);
    for (k, val) in [
        ("packages/install/nginx-light", ""),
        ("services/nginx/enabled", "true"),
        ("services/nginx/running", "true"),
    ] {
        f.file(&format!("parameters/n/parameters/{k}"), val);
    }
    let (code, out, err) = dance(&f, &root, true, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(!err.contains("error:"), "{err}");
    assert!(
        err.lines().any(|l| l
            .starts_with("info: packages: pending, not made in this noop: install ")
            && l.contains("; install nginx-light ")),
        "{err}"
    );
    assert!(
        err.contains("info: services: pending, not made in this noop: enable, start nginx.service (no unit file yet: it comes with a change pending in an earlier module)\n"),
        "{err}"
    );
    assert!(err.contains("info: File: /etc/later : Created"), "{err}");
}
