//! Modules as sysadmins write them: `requires` pulls modules in, modes and
//! owners come from `attributes` (never from the checkout), only real
//! scripts run, editors' leftovers are refused.
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::root::FixtureRoot;
use common::{run, Fixture};

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn live(f: &Fixture, server: &Path, root: &Path) -> (i32, String, String) {
    run(f
        .disco_without_server()
        .arg("--server")
        .arg(server)
        .args(["--node", "n", "--root"])
        .arg(root)
        .arg("dance"))
}

#[test]
fn a_secret_kept_in_git_lands_with_the_mode_and_owner_of_attributes() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["users", "app"])
        .module("users", "")
        .module("app", "after users\n");
    // An earlier module creates the service user; a later one's file is its.
    f.module_file(
        "users",
        "scripts/10-user",
        "grep -q '^svc:' /etc/passwd || { echo 'svc:x:990:990::/:/bin/false' >> /etc/passwd; echo 'svc:x:990:' >> /etc/group; }\n",
        0o755,
    );
    f.module_file("app", "files/etc/app/secret", "s3cret\n", 0o600)
        .module_file("app", "files/etc/app/run", "#!/bin/sh\n", 0o755)
        .module_file("app", "files/etc/app/plain", "p\n", 0o664)
        .module_file("app", "templates/etc/app/motd", "echo hi\n", 0o755)
        .module_file("app", "templates/etc/app/svc.conf", "echo svc\n", 0o644)
        .module_file(
            "app",
            "attributes",
            "# secrets\n/etc/app/secret 0600 root:adm\n/etc/app/svc.conf 0640 svc\n",
            0o644,
        );
    // The server tree as a node gets it: a clone of the admin's git repo.
    git(&f.server(), &["init", "-q"]);
    git(&f.server(), &["add", "-A"]);
    git(&f.server(), &["commit", "-qm", "tree"]);
    let clone = f.dir.path().join("clone");
    git(
        f.dir.path(),
        &["clone", "-q", f.server().to_str().unwrap(), "clone"],
    );
    let (code, _, err) = live(&f, &clone, &r.path);
    assert_eq!(code, 0, "{err}");
    let m = |p: &str| fs::metadata(r.path.join(p)).unwrap();
    assert_eq!(
        (
            m("etc/app/secret").mode() & 0o7777,
            m("etc/app/secret").uid(),
            m("etc/app/secret").gid()
        ),
        (0o600, 0, 4)
    );
    assert_eq!(m("etc/app/run").mode() & 0o7777, 0o755, "executable: 0755");
    assert_eq!(
        m("etc/app/plain").mode() & 0o7777,
        0o644,
        "0644 whatever git kept"
    );
    assert_eq!(
        m("etc/app/motd").mode() & 0o7777,
        0o644,
        "a template's output is 0644"
    );
    assert_eq!(
        (m("etc/app/svc.conf").uid(), m("etc/app/svc.conf").gid()),
        (990, 990)
    );
    assert!(
        err.contains(
            "File: /etc/app/svc.conf : Created : type=[regular file] mode=[0640] owner=[svc:svc]"
        ),
        "owners by name, as the root stands after the earlier module: {err}"
    );
}

#[test]
fn a_bad_attributes_line_is_an_error_before_anything_runs() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-x", "touch /etc/ran\n", 0o755)
        .module_file("m", "files/etc/a", "a\n", 0o644);
    for (line, why) in [
        (
            "/etc/a 0999\n",
            "error: modules/m/attributes:1: mode \"0999\" is not octal (like 0640)",
        ),
        (
            "/etc/b 0600\n",
            "error: modules/m/attributes:1: no file or template of this module makes /etc/b",
        ),
        (
            "/etc/a 0600 nosuchuser\n",
            "error: m: modules/m/attributes:1: no user \"nosuchuser\" in the root's /etc/passwd",
        ),
    ] {
        f.module_file("m", "attributes", line, 0o644);
        let (code, _, err) = live(&f, &f.server(), &r.path);
        assert_eq!(code, 1, "{err}");
        assert!(err.lines().any(|l| l.starts_with(why)), "{line}: {err}");
        assert!(!r.path.join("etc/ran").exists(), "nothing ran");
    }
}

#[test]
fn only_real_scripts_run_and_leftovers_are_refused() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    for name in [
        "README",
        "10-x.sh~",
        ".hidden",
        "20-old.disabled",
        "notes.md",
    ] {
        f.module_file(
            "m",
            &format!("scripts/{name}"),
            "touch /etc/ran-by-mistake\n",
            0o755,
        );
    }
    f.module_file("m", "scripts/30-real", "touch /etc/ran\n", 0o755)
        .module_file(
            "m",
            "handlers/README.txt",
            "touch /etc/handler-ran\n",
            0o755,
        );
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("File: /etc/ran : Created"), "{err}");
    assert!(!err.contains("ran-by-mistake"), "{err}");
    assert!(
        err.contains("warning: m: not run (not a script by its name): scripts/.hidden, scripts/10-x.sh~, scripts/20-old.disabled, scripts/README, scripts/notes.md, handlers/README.txt"),
        "{err}"
    );
    f.module_file("m", "files/etc/foo.conf~", "x\n", 0o644);
    let (code, _, err) = f.noop_dance("n", &r.path, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("files/etc/foo.conf~ is an editor's or package manager's leftover"),
        "{err}"
    );
}
