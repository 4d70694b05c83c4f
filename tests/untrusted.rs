//! What disco reads from a module's sandbox or from ROOT is untrusted
//! (issue 24, item 4): a template's output (a pipe disco holds), `/etc/passwd` and
//! `/etc/group` for `attributes`, ROOT's `os-release`. One test per
//! attack, each on a fixture root, each under a time limit and a memory
//! limit of its own (the attack would otherwise hang the test or grow
//! without end): a regression fails the test instead.
mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::root::FixtureRoot;
use common::Fixture;

/// [`common::bounded`], as (exit code, stdout, stderr).
fn bounded(cmd: Command) -> (i32, String, String) {
    let e = common::bounded(cmd);
    (e.code, e.out, e.err)
}

/// Asserts that `err` says exactly one `error:` line.
fn one_error(err: &str) {
    let n = err.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(n, 1, "{err}");
}

/// `disco … dance` (noop when `noop`) for node `n` on `root`.
fn dance(f: &Fixture, root: &Path, noop: bool) -> (i32, String, String) {
    let mut c = f.process(&f.state(), root);
    c.arg("dance");
    if noop {
        c.env("NOOP", "true");
    }
    bounded(c)
}

/// A fixture with module `m` on node `n` holding template `etc/x`.
fn template(body: &str) -> (Fixture, FixtureRoot) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "templates/etc/x", body, 0o644);
    (f, r)
}

/// md5 of `hello\n`, what the templates below print before their attack.
const HELLO_MD5: &str = "md5=[b1946ac92492d2347c6235b4d2611184]";

// A template's output is a pipe disco opened before the template started
// (streamed to the target): whatever the template does to the path it
// finds on its stdout, its output is what it printed.

#[test]
fn a_template_that_makes_its_output_a_fifo_neither_hangs_nor_changes_it() {
    let (f, r) =
        template("echo hello\nme=$BASHPID\nout=$(readlink /proc/$me/fd/1)\nrm -f \"$out\"\nmkfifo \"$out\"\n");
    let (code, out, err) = dance(&f, &r.path, true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains(HELLO_MD5), "{out}{err}");
}

#[test]
fn a_template_that_links_its_output_to_dev_zero_neither_grows_nor_changes_it() {
    let (f, r) = template(
        "echo hello\nme=$BASHPID\nout=$(readlink /proc/$me/fd/1)\nln -sf /dev/zero \"$out\"\n",
    );
    let (code, out, err) = dance(&f, &r.path, true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains(HELLO_MD5), "{out}{err}");
}

#[test]
fn a_template_sees_none_of_the_render_drivers_variables() {
    let (f, r) = template("echo \"names: ${!__disco*}\"\ndeclare -p\n");
    let (code, out, err) = dance(&f, &r.path, false);
    assert_eq!(code, 0, "{out}{err}");
    let text = fs::read_to_string(r.path.join("etc/x")).unwrap();
    assert!(text.starts_with("names: \n"), "{text}");
    assert!(!text.contains("__disco"), "{text}");
    assert!(!text.contains("/run/disco/render"), "{text}");
}

/// Module `a` runs `script`; module `b` (after `a`) installs
/// `/etc/app.conf` owned by a user named in its `attributes`.
fn accounts(script: &str) -> (Fixture, FixtureRoot) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    r.file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
        .file("etc/group", "root:x:0:\n");
    f.node("n", &["a", "b"])
        .module("a", "")
        .module("b", "after a\n");
    f.module_file("a", "scripts/10-break", script, 0o755);
    f.module_file("b", "files/etc/app.conf", "x\n", 0o644)
        .module_file("b", "attributes", "/etc/app.conf 0600 root:root\n", 0o644);
    (f, r)
}

#[test]
fn an_etc_passwd_fifo_from_an_earlier_module_fails_the_next_one_naming_it() {
    let (f, r) = accounts("rm -f /etc/passwd\nmkfifo /etc/passwd\n");
    let (code, out, err) = dance(&f, &r.path, true);
    assert_ne!(code, 0, "{out}{err}");
    one_error(&err);
    assert!(
        err.contains("/etc/passwd is a fifo; it must be a regular file"),
        "{out}{err}"
    );
}

#[test]
fn an_etc_group_fifo_from_an_earlier_module_fails_the_next_one_naming_it() {
    let (f, r) = accounts("rm -f /etc/group\nmkfifo /etc/group\n");
    let (code, out, err) = dance(&f, &r.path, true);
    assert_ne!(code, 0, "{out}{err}");
    one_error(&err);
    assert!(
        err.contains("/etc/group is a fifo; it must be a regular file"),
        "{out}{err}"
    );
}

#[test]
fn a_sparse_giant_etc_passwd_is_refused_at_the_cap() {
    let (f, r) = accounts("true\n");
    // 1.2 GB of holes: no disk is used.
    let p = fs::OpenOptions::new()
        .write(true)
        .open(r.path.join("etc/passwd"))
        .unwrap();
    p.set_len(1_200_000_000).unwrap();
    let (code, out, err) = dance(&f, &r.path, true);
    assert_ne!(code, 0, "{out}{err}");
    one_error(&err);
    assert!(
        err.contains("/etc/passwd is 1.1 GiB, more than the 16.0 MiB it may hold"),
        "{out}{err}"
    );
}

/// `disco facts` on `root`.
fn facts(f: &Fixture, root: &Path) -> (i32, String, String) {
    let mut c = f.process(&f.state(), root);
    c.arg("facts");
    bounded(c)
}

#[test]
fn an_os_release_fifo_fails_fact_gathering_naming_it() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let p = r.path.join("etc/os-release");
    let _ = fs::remove_file(&p);
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let (code, out, err) = facts(&f, &r.path);
    assert_ne!(code, 0, "{out}{err}");
    one_error(&err);
    assert!(
        err.contains("etc/os-release is a fifo; it must be a regular file"),
        "{out}{err}"
    );
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "templates/etc/x", "echo x\n", 0o644);
    let (code, out, err) = dance(&f, &r.path, true);
    assert_ne!(code, 0, "{out}{err}");
    one_error(&err);
    assert!(err.contains("etc/os-release is a fifo"), "{out}{err}");
}

/// Debian's `etc/os-release -> ../usr/lib/os-release` is read through
/// `..` with `RESOLVE_IN_ROOT`, which the kernel answers `EAGAIN` when any
/// rename on the system races the lookup: one in 25 fact gatherings failed
/// beside a rename loop before it was tried again.
#[test]
fn a_rename_elsewhere_never_fails_reading_os_release() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::create_dir_all(r.path.join("usr/lib")).unwrap();
    fs::write(r.path.join("usr/lib/os-release"), "ID=debian\n").unwrap();
    let _ = fs::remove_file(r.path.join("etc/os-release"));
    std::os::unix::fs::symlink("../usr/lib/os-release", r.path.join("etc/os-release")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renamer = std::thread::spawn({
        let (stop, dir) = (stop.clone(), f.dir.path().to_path_buf());
        move || {
            let (a, b) = (dir.join("rename-a"), dir.join("rename-b"));
            fs::write(&a, "").unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fs::rename(&a, &b).unwrap();
                fs::rename(&b, &a).unwrap();
            }
        }
    });
    let failed: Vec<String> = (0..150)
        .map(|_| facts(&f, &r.path))
        .filter(|(code, _, _)| *code != 0)
        .map(|(_, out, err)| format!("{out}{err}"))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    renamer.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of 150 failed: {}",
        failed.len(),
        failed[0]
    );
}

#[test]
fn an_absolute_os_release_symlink_is_resolved_inside_root() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    // The same absolute path on the host and inside ROOT, with different
    // contents: only ROOT's may ever be read.
    let host = tempfile::tempdir().unwrap();
    let abs = host.path().join("os-release");
    fs::write(&abs, "ID=hostsecret\nVERSION_ID=666\n").unwrap();
    let rel = abs.strip_prefix("/").unwrap().to_str().unwrap();
    r.file(rel, "ID=inside\nVERSION_ID=12\n");
    let link = r.path.join("etc/os-release");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&abs, &link).unwrap();
    let (code, out, err) = facts(&f, &r.path);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("hostsecret"), "{out}");
    assert!(out.contains("facts/os_id = inside\n"), "{out}");
    assert!(out.contains("facts/os_version = 12\n"), "{out}");
}
