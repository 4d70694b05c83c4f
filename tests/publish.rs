//! `disco publish` on the server: snapshots are the served directory's
//! owner's alone, a served directory every local account may enter is
//! refused, older snapshots are made private, and the git set-up of
//! docs/fleet.md gives no other account a copy. "Another account" is
//! `nobody`, through `setpriv`; everything lives in the test's own
//! temporary directory (opened to 0755 so that only the modes under test
//! keep `nobody` out).
mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_error, nobody_ids, run, with_disco_on_path, Fixture};

/// A fixture whose temporary directory `nobody` may enter, with a tree for
/// node `n`: a private parameter (not under secrets/, which lint wants encrypted), a plain file and an executable one.
fn fixture() -> Fixture {
    let f = Fixture::new();
    fs::set_permissions(f.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    f.node("n", &["m"]).module("m", "");
    f.file("parameters/n/parameters/private/db_password", "Pa55-Qx7\n");
    f.module_file("m", "files/etc/m.conf", "c\n", 0o644);
    f.module_file("m", "files/usr/local/bin/tool", "#!/bin/sh\n", 0o755);
    f
}

/// `disco publish SRC --root SERVED [args]`.
fn publish(f: &Fixture, served: &Path, args: &[&str]) -> (i32, String, String) {
    f.publish(served, args)
}

/// Runs `argv` as `nobody` (group nogroup, no supplementary groups).
fn as_nobody(argv: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(argv)
        .output()
        .expect("setpriv (util-linux) is needed")
}

/// Whether `nobody` can read `file` (checked to work on a file it may read).
fn nobody_reads(file: &Path) -> bool {
    let out = as_nobody(&["cat", file.to_str().unwrap()]);
    out.status.success() || !out.stdout.is_empty()
}

/// Every path below `dir` (not following symlinks), `dir` first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if fs::symlink_metadata(dir).unwrap().is_dir() {
        for e in fs::read_dir(dir).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

/// Asserts every entry of `dir` is private: directories 0700, files 0600
/// or 0700, owned by `uid`.
fn assert_private(dir: &Path, uid: u32) {
    for p in walk(dir) {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.file_type().is_symlink() {
            continue;
        }
        let mode = m.mode() & 0o7777;
        let ok = if m.is_dir() {
            mode == 0o700
        } else {
            mode == 0o600 || mode == 0o700
        };
        assert!(ok, "{} is {mode:04o}", p.display());
        assert_eq!(
            m.uid(),
            uid,
            "{} belongs to the served dir's owner",
            p.display()
        );
    }
}

#[test]
fn nobody_can_read_what_the_test_opens_to_it() {
    // The control for every "nobody cannot read" below.
    let f = fixture();
    let open = f.dir.path().join("open");
    fs::write(&open, "x\n").unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(nobody_reads(&open));
}

#[test]
fn a_snapshot_is_readable_by_the_served_directorys_owner_only() {
    let f = fixture();
    let served = f.dir.path().join("served");
    fs::create_dir(&served).unwrap();
    fs::set_permissions(&served, fs::Permissions::from_mode(0o750)).unwrap();
    let (code, _, err) = publish(&f, &served, &[]);
    assert_eq!(code, 0, "{err}");
    let current = fs::canonicalize(served.join("current")).unwrap();
    assert_private(&served.join("snapshots"), 0);
    assert_eq!(
        fs::metadata(current.join("modules/m/files/usr/local/bin/tool"))
            .unwrap()
            .mode()
            & 0o7777,
        0o700,
        "an executable stays executable for its owner"
    );
    let secret = current.join("parameters/n/parameters/private/db_password");
    assert!(!nobody_reads(&secret));
    // Even with the served directory opened up (or the snapshot copied
    // with its modes), the snapshot itself keeps nobody out.
    for d in [&served, &served.join("snapshots")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert!(!nobody_reads(&secret));
    let copy = f.dir.path().join("copy");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&current)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    assert!(!nobody_reads(
        &copy.join("parameters/n/parameters/private/db_password")
    ));
    // A node fetching the snapshot locally gets it whole (the manifest's
    // modes are the private ones).
    fs::set_permissions(&served, fs::Permissions::from_mode(0o700)).unwrap();
    let (code, out, err) = run(f
        .disco_without_server()
        .arg("--server")
        .arg(&served)
        .args(["--node", "n", "plan"]));
    assert_eq!((code, out.as_str()), (0, "m\n"), "{err}");
}

#[test]
fn a_served_directory_it_makes_is_private() {
    let f = fixture();
    let served = f.dir.path().join("new/served");
    let (code, _, err) = publish(&f, &served, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::metadata(&served).unwrap().mode() & 0o7777, 0o700);
    assert_private(&served.join("snapshots"), 0);
}

#[test]
fn publish_into_a_served_directory_open_to_all_is_refused_and_writes_nothing() {
    let f = fixture();
    for mode in [0o755, 0o701] {
        let served = f.dir.path().join(format!("served-{mode:o}"));
        fs::create_dir(&served).unwrap();
        fs::set_permissions(&served, fs::Permissions::from_mode(mode)).unwrap();
        let expected = format!(
            "error: {0} is open to every local account (mode {mode:04o}): chmod 0700 {0} and publish again",
            served.display()
        );
        assert_error(publish(&f, &served, &[]), &expected);
        assert_error(publish(&f, &served, &["--noop"]), &expected);
        assert_eq!(fs::read_dir(&served).unwrap().count(), 0, "nothing written");
        assert_eq!(fs::metadata(&served).unwrap().mode() & 0o7777, mode);
    }
}

#[test]
fn snapshots_an_older_disco_left_open_are_made_private() {
    let f = fixture();
    let served = f.dir.path().join("served");
    let (code, _, err) = publish(&f, &served, &[]);
    assert_eq!(code, 0, "{err}");
    let old = fs::canonicalize(served.join("current")).unwrap();
    let old_id = old.file_name().unwrap().to_string_lossy().into_owned();
    // What an older disco made: 0755 directories, 0644/0755 files.
    for p in walk(&old) {
        let m = fs::symlink_metadata(&p).unwrap();
        let mode = if m.is_dir() || m.mode() & 0o100 != 0 {
            0o755
        } else {
            0o644
        };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    for d in [&served, &served.join("snapshots")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert!(nobody_reads(
        &old.join("parameters/n/parameters/private/db_password")
    ));
    // The upgraded disco refuses; the admin runs the chmod it names.
    assert_eq!(publish(&f, &served, &[]).0, 1);
    fs::set_permissions(&served, fs::Permissions::from_mode(0o700)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // ids have seconds
    let (code, _, err) = publish(&f, &served, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "info: made 1 older snapshot(s) readable by the served directory's owner only: {old_id}"
        )),
        "{err}"
    );
    assert_private(&served.join("snapshots"), 0);
    // Its manifest matches it again: served as current, it fetches.
    let link = served.join(".current.test");
    std::os::unix::fs::symlink(Path::new("snapshots").join(&old_id), &link).unwrap();
    fs::rename(&link, served.join("current")).unwrap();
    let (code, out, err) = run(f
        .disco_without_server()
        .arg("--server")
        .arg(&served)
        .args(["--node", "n", "plan"]));
    assert_eq!((code, out.as_str()), (0, "m\n"), "{err}");
    // Nothing left to do: the next publish says nothing of it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, _, err) = publish(&f, &served, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("older snapshot"), "{err}");
}

/// The body of the first ```sh block of docs/fleet.md that contains
/// `needle`, with `/srv/` moved into `base`, the shipped hooks taken from
/// this source tree and the `disco` account replaced by root (the test
/// adds no user to the host).
fn fleet_block(needle: &str, base: &Path) -> String {
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/fleet.md")).unwrap();
    let block = doc
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap())
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("docs/fleet.md has no sh block with {needle}"));
    block
        .replace("/srv/", &format!("{}/", base.display()))
        .replace(
            "/usr/share/disco/hooks/",
            &format!("{}/server-layout/hooks/", env!("CARGO_MANIFEST_DIR")),
        )
        .replace("chown -R disco: ", "chown -R root: ")
        .replace("chown disco: ", "chown root: ")
}

/// Runs `script` with sh, `disco` first on PATH, TMPDIR in `tmp`.
fn sh(script: &str, cwd: &Path, tmp: &Path) {
    let out = with_disco_on_path(
        Command::new("sh").args(["-ec", script]).current_dir(cwd),
        tmp,
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fleet_md_git_setup_gives_no_other_account_a_copy() {
    let f = fixture();
    let base = f.dir.path().join("srv");
    let tmp = f.dir.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    // adduser --system makes the home 0755; the rest of the block is run.
    fs::create_dir_all(base.join("disco")).unwrap();
    fs::set_permissions(base.join("disco"), fs::Permissions::from_mode(0o755)).unwrap();
    let setup: String = fleet_block("adduser --system", &base)
        .lines()
        .filter(|l| !l.starts_with("apt ") && !l.starts_with("adduser "))
        .map(|l| format!("{l}\n"))
        .collect();
    sh(&setup, f.dir.path(), &tmp);
    // umask 022, as root's shell usually has: the doc's commands set their own.
    sh(
        &format!("umask 022\n{}", fleet_block("git init --bare", &base)),
        f.dir.path(),
        &tmp,
    );
    let repo = base.join("disco.git");
    assert_eq!(
        Command::new("git")
            .args(["--git-dir", repo.to_str().unwrap()])
            .args(["config", "core.sharedRepository"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(1),
        "core.sharedRepository is unset"
    );
    // An admin's push of the tree, twice (the second removes a file).
    let work = f.dir.path().join("work");
    let push = |msg: &str| {
        sh(
            &format!(
                "umask 022\ngit -c user.name=t -c user.email=t@t add -A\n\
                 git -c user.name=t -c user.email=t@t commit -q -m {msg}\n\
                 git push -q origin HEAD:main 2>&1"
            ),
            &work,
            &tmp,
        )
    };
    sh(
        &format!(
            "umask 022\ngit -c init.defaultBranch=main clone -q {} {} 2>&1\ncp -a {}/. {}/",
            repo.display(),
            work.display(),
            f.server().display(),
            work.display()
        ),
        f.dir.path(),
        &tmp,
    );
    push("one");
    fs::remove_file(work.join("modules/m/files/etc/m.conf")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // ids have seconds
    push("two");
    let current = fs::canonicalize(base.join("disco/current")).unwrap();
    let secret = current.join("parameters/n/parameters/private/db_password");
    assert_eq!(fs::read_to_string(&secret).unwrap(), "Pa55-Qx7\n");
    assert!(!current.join("modules/m/files/etc/m.conf").exists());
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "the hooks' checkouts are removed"
    );
    // Not one file of the repository or of the snapshots, nor a clone.
    let mut files: Vec<String> = walk(&repo)
        .into_iter()
        .chain(walk(&base.join("disco")))
        .filter(|p| fs::symlink_metadata(p).unwrap().is_file())
        .map(|p| p.display().to_string())
        .collect();
    assert!(files.len() > 10, "{files:?}");
    let objects = files.iter().filter(|p| p.contains("/objects/")).count();
    assert!(objects > 5, "{files:?}");
    files.insert(0, "cat".into());
    let argv: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = as_nobody(&argv);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nobody read something");
    let out = as_nobody(&["git", "ls-remote", repo.to_str().unwrap()]);
    assert!(!out.status.success(), "nobody cannot clone the repository");
    assert!(!nobody_reads(&secret));
}

/// A served directory owned by `nobody`, 0700: publish (as root) gives
/// snapshots to nobody, the serving user.
fn served_by_nobody(f: &Fixture) -> PathBuf {
    let served = f.dir.path().join("served");
    fs::create_dir(&served).unwrap();
    fs::set_permissions(&served, fs::Permissions::from_mode(0o700)).unwrap();
    let (uid, gid) = nobody_ids();
    std::os::unix::fs::chown(&served, Some(uid), Some(gid)).unwrap();
    served
}

/// A directory outside the tree like `/etc`: a root-only (0600 root)
/// host key under `ssh/` and a root-only `shadow`. Returns it and the
/// bytes no snapshot may hold.
fn root_only_dir(f: &Fixture) -> (PathBuf, &'static str) {
    let secret = "ROOT-ONLY-HOST-KEY-4f1c9a";
    let etc = f.dir.path().join("etc-like");
    fs::create_dir_all(etc.join("ssh")).unwrap();
    for p in [etc.join("ssh/ssh_host_ed25519_key"), etc.join("shadow")] {
        fs::write(&p, format!("{secret}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Shaped like a module, so nothing else would refuse it.
    fs::create_dir_all(etc.join("ssh/files")).unwrap();
    (etc, secret)
}

/// Asserts no file below `dir` holds `needle`.
fn holds_nothing_of(dir: &Path, needle: &str) {
    if !dir.exists() {
        return;
    }
    for p in walk(dir) {
        if fs::symlink_metadata(&p).unwrap().is_file() {
            let bytes = fs::read(&p).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(needle),
                "{} holds root-only bytes",
                p.display()
            );
        }
    }
}

/// Git carries symlinks: a pushed `modules -> /etc`-like link, published
/// by root into a directory `nobody` serves, is refused in one line naming
/// the link and its target; no snapshot holds a byte behind it. The same
/// for `parameters` and `recipients`, and for a noop publish.
#[test]
fn a_top_level_link_out_of_the_tree_is_refused_and_copies_nothing() {
    for sub in ["modules", "parameters", "recipients"] {
        let f = fixture();
        let served = served_by_nobody(&f);
        let (etc, secret) = root_only_dir(&f);
        let link = f.server().join(sub);
        let _ = fs::remove_dir_all(&link);
        std::os::unix::fs::symlink(&etc, &link).unwrap();
        let expected = format!(
            "error: {0} is a symlink to {1}; disco publish, serve and lint never follow a top-level link of the tree (make it a directory; an admin may name the target to publish or lint with --allow-link-to {1})",
            link.display(),
            etc.display()
        );
        assert_error(publish(&f, &served, &[]), &expected);
        assert_error(publish(&f, &served, &["--noop"]), &expected);
        holds_nothing_of(&served, secret);
        assert!(!served.join("current").exists(), "{sub}: nothing published");
    }
}

/// A link the admin names on the command line is followed, but what lies
/// there is still read as the serving user: a root-only file behind it is
/// refused, naming it.
#[test]
fn a_named_link_is_followed_but_root_only_files_behind_it_are_refused() {
    let f = fixture();
    let served = served_by_nobody(&f);
    let (etc, secret) = root_only_dir(&f);
    let modules = f.server().join("modules");
    fs::rename(&modules, f.dir.path().join("modules-real")).unwrap();
    std::os::unix::fs::symlink(f.dir.path().join("modules-real"), &modules).unwrap();
    let real = f.dir.path().join("modules-real");
    let (code, _, err) = publish(&f, &served, &["--allow-link-to", real.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // The root-only directory named as the target: refused by the kernel.
    fs::remove_file(&modules).unwrap();
    std::os::unix::fs::symlink(&etc, &modules).unwrap();
    let (code, out, err) = publish(&f, &served, &["--allow-link-to", etc.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("publish reads the tree as nobody (uid ")
            && err.contains("cannot read modules/shadow: Permission denied"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    holds_nothing_of(&served, secret);
}

/// Publish, as root, copies no file the served directory's owner could
/// not read before: a root-only parameter is refused, naming it, and the
/// half-made snapshot is removed. Readable, the tree publishes and the
/// snapshot is nobody's.
#[test]
fn a_file_the_serving_user_cannot_read_is_refused() {
    let f = fixture();
    let served = served_by_nobody(&f);
    let (uid, _) = nobody_ids();
    let (code, _, err) = publish(&f, &served, &[]);
    assert_eq!(code, 0, "{err}");
    assert_private(&served.join("snapshots"), uid);
    let first = fs::canonicalize(served.join("current")).unwrap();
    f.file_mode(
        "parameters/n/parameters/root_only",
        "ROOT-ONLY-PARAM-77\n",
        0o600,
    );
    let (code, out, err) = publish(&f, &served, &[]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("publish reads the tree as nobody (uid ")
            && err.contains("cannot read parameters/n/parameters/root_only: Permission denied"),
        "{err}"
    );
    holds_nothing_of(&served, "ROOT-ONLY-PARAM-77");
    assert_eq!(fs::canonicalize(served.join("current")).unwrap(), first);
    assert_eq!(
        fs::read_dir(served.join("snapshots")).unwrap().count(),
        1,
        "no half-made snapshot left"
    );
}

/// A file hard-linked to one outside the tree is refused, naming it,
/// whether or not the serving user may read the other one (here a
/// root-only file); two links inside the tree are fine.
#[test]
fn a_hard_link_out_of_the_tree_is_refused() {
    let f = fixture();
    let served = served_by_nobody(&f);
    let (etc, secret) = root_only_dir(&f);
    let inside = f.server().join("modules/m/files/etc/linked");
    fs::hard_link(f.server().join("modules/m/files/etc/m.conf"), &inside).unwrap();
    let (code, _, err) = publish(&f, &served, &[]);
    assert_eq!(code, 0, "two links inside the tree: {err}");
    fs::remove_file(&inside).unwrap();
    fs::hard_link(etc.join("shadow"), &inside).unwrap();
    let expected = format!(
        "error: modules/m/files/etc/linked is a hard link to a file outside {} (2 links, 1 inside): publish copies no file that has a name elsewhere; replace it with a copy",
        f.server().display()
    );
    assert_error(publish(&f, &served, &[]), &expected);
    // World-readable, it is refused all the same.
    let open = f.dir.path().join("open");
    fs::write(&open, "o\n").unwrap();
    fs::remove_file(&inside).unwrap();
    fs::hard_link(&open, &inside).unwrap();
    assert_error(publish(&f, &served, &[]), &expected);
    holds_nothing_of(&served, secret);
}
