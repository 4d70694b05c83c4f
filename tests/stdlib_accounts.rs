//! The standard modules `users`, `groups` and `packages` (`stdlib/`) on a
//! real Debian 12 root (`debootstrap --variant=minbase`), as a node runs
//! them: noop reports exactly what the live dance then does and leaves
//! the root as it was, live lands it, a second dance changes nothing,
//! changed parameters change the root, and undo gives back the pristine
//! root. Packages also in noop without a network, where the transaction
//! is only simulated and said.
mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::root::{deep_snapshot, pristine_view};
use common::{run, Fixture};

/// A server tree whose `modules/` holds copies of the named `stdlib/`
/// modules, and node `n` running `modules`.
fn server_with(f: &Fixture, stdlib: &[&str], modules: &[&str]) {
    for m in stdlib {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("stdlib").join(m))
            .arg(f.server().join("modules"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    f.node("n", modules);
}

/// Node `n`'s parameter `key` (parents made).
fn param(f: &Fixture, key: &str, value: &str) {
    f.file(&format!("parameters/n/parameters/{key}"), value);
}

/// Removes node `n`'s parameter `key`.
fn unparam(f: &Fixture, key: &str) {
    fs::remove_file(f.server().join("parameters/n/parameters").join(key)).unwrap();
}

/// The change lines of a dance's report (`File: …` and rolled-up
/// directories), without logs: what noop and live must agree on.
fn changes(err: &str) -> Vec<String> {
    err.lines()
        .filter(|l| l.starts_with("info: File: ") || l.starts_with("info: /"))
        .filter(|l| !l.contains(" /var/log/"))
        .map(String::from)
        .collect()
}

/// One dance of node `n` on `root`; (exit code, stdout, stderr).
fn dance(
    f: &Fixture,
    state: &Path,
    root: &Path,
    noop: bool,
    detailed: bool,
) -> (i32, String, String) {
    let mut c = f.disco_with_state(state);
    c.arg("--server").arg(f.server());
    if noop {
        c.env("NOOP", "1");
    }
    c.args(["--node", "n", "--root"]).arg(root).arg("dance");
    if detailed {
        c.arg("--detailed-exitcodes");
    }
    run(&mut c)
}

fn undo(f: &Fixture, state: &Path, root: &Path) {
    let (code, _, err) = run(f
        .disco_with_state(state)
        .arg("--root")
        .arg(root)
        .args(["undo", "--yes"]));
    assert_eq!(code, 0, "{err}");
}

/// The line of `name` in the root's `etc/FILE` (passwd, group, shadow).
fn entry(root: &Path, file: &str, name: &str) -> Option<String> {
    fs::read_to_string(root.join("etc").join(file))
        .unwrap()
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .map(String::from)
}

fn field(line: &str, i: usize) -> String {
    line.split(':').nth(i).unwrap().to_string()
}

#[test]
fn users_and_groups_noop_live_converged_changed_and_undone() {
    let f = Fixture::new();
    let Some(root) = common::debian::root(f.dir.path()) else {
        return; // said why on stderr
    };
    let state = root.join("var/lib/disco");
    fs::create_dir_all(&state).unwrap();
    // `users` pulls in `groups` (after groups).
    server_with(&f, &["users", "groups"], &["users"]);
    param(&f, "groups/devs/gid", "2000\n");
    param(&f, "groups/ops/system", "");
    param(&f, "groups/old/gid", "2100\n");
    param(&f, "users/alice/shell", "/bin/bash\n");
    param(&f, "users/alice/comment", "Alice\n");
    param(&f, "users/alice/groups", "devs\nops\n");
    let keys = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHt0ZXN0a2V5 alice@laptop\n";
    param(&f, "users/alice/authorized_keys", keys);
    param(&f, "users/bob/uid", "1500\n");
    param(&f, "users/bob/locked", "true\n");
    let pristine = pristine_view(&root);

    // Noop: the changes are reported, the root stays as it was.
    let (code, out, err) = dance(&f, &state, &root, true, true);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("info: Discovered dependency: users -> groups"),
        "{err}"
    );
    for said in [
        "groups: created group devs (gid 2000)",
        "groups: created group ops",
        "users: created user alice",
        "users: created user bob",
        "users: user bob: locked",
        "users: user alice: wrote /home/alice/.ssh/authorized_keys",
    ] {
        assert!(out.contains(said), "{said}: {out}");
    }
    for said in [
        "+alice:x:1000:1000:Alice:/home/alice:/bin/bash",
        "+bob:x:1500:1500::/home/bob:/bin/sh",
        "+devs:x:2000:alice",
        "File: /home/alice/.ssh : Created : type=[directory] mode=[0700] owner=[alice:alice]",
        "File: /home/alice/.ssh/authorized_keys : Created : type=[regular file] mode=[0600] owner=[alice:alice]",
    ] {
        assert!(err.contains(said), "{said}: {err}");
    }
    let noop_changes = changes(&err);
    assert_eq!(pristine_view(&root), pristine, "noop changed the root");

    // Live: what noop said, landed.
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(changes(&err), noop_changes, "noop reported what live did");
    assert_eq!(
        entry(&root, "passwd", "alice").unwrap(),
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash"
    );
    assert_eq!(entry(&root, "group", "devs").unwrap(), "devs:x:2000:alice");
    let ops = entry(&root, "group", "ops").unwrap();
    assert!(
        field(&ops, 2).parse::<u32>().unwrap() < 1000,
        "a system group: {ops}"
    );
    assert_eq!(field(&ops, 3), "alice");
    let bob = entry(&root, "shadow", "bob").unwrap();
    assert!(field(&bob, 1).starts_with('!'), "locked: {bob}");
    assert_eq!(field(&bob, 7), "1", "expired: {bob}");
    assert_eq!(field(&entry(&root, "passwd", "bob").unwrap(), 2), "1500");
    let ak = root.join("home/alice/.ssh/authorized_keys");
    assert_eq!(fs::read_to_string(&ak).unwrap(), keys);
    let m = fs::metadata(&ak).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 1000, 1000));
    let m = fs::metadata(root.join("home/alice/.ssh")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o700, 1000, 1000));

    // Converged: no command runs, nothing changes.
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 0, "the second dance changes nothing: {out}{err}");
    assert!(!err.contains("File: "), "{err}");
    assert_eq!(out, "", "no module said it did something");
    let landed = pristine_view(&root);

    // A wrong parameter fails with one line naming it, and changes nothing.
    param(&f, "users/alice/shell", "/bin/zsh\n");
    let (code, _, err) = dance(&f, &state, &root, true, true);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "error: users: parameter users/alice/shell: /bin/zsh does not exist in the root"
        ),
        "{err}"
    );

    // Changed parameters: a shell, fewer groups, a user and a group removed.
    param(&f, "users/alice/shell", "/bin/sh\n");
    param(&f, "users/alice/groups", "devs\n");
    unparam(&f, "users/bob/locked");
    param(&f, "users/bob/absent", "");
    param(&f, "groups/old/absent", "true\n");
    let (code, out, err) = dance(&f, &state, &root, true, true);
    assert_eq!(code, 2, "{out}{err}");
    for said in [
        "users: user alice: shell /bin/bash -> /bin/sh; groups -> devs",
        "users: removed user bob (its home is kept)",
        "groups: removed group old",
    ] {
        assert!(out.contains(said), "{said}: {out}");
    }
    let noop_changes = changes(&err);
    assert_eq!(pristine_view(&root), landed, "noop changed the root");
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(changes(&err), noop_changes, "noop reported what live did");
    assert_eq!(
        entry(&root, "passwd", "alice").unwrap(),
        "alice:x:1000:1000:Alice:/home/alice:/bin/sh"
    );
    assert_eq!(entry(&root, "passwd", "bob"), None);
    assert_eq!(entry(&root, "shadow", "bob"), None);
    assert_eq!(entry(&root, "group", "old"), None);
    assert_eq!(field(&entry(&root, "group", "ops").unwrap(), 3), "");
    assert_eq!(entry(&root, "group", "devs").unwrap(), "devs:x:2000:alice");
    assert!(root.join("home/bob").is_dir(), "userdel keeps the home");
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 0, "converged again: {out}{err}");

    // Undo twice: the changes, then the first live dance.
    undo(&f, &state, &root);
    assert_eq!(
        pristine_view(&root),
        landed,
        "undo gives back the first live dance"
    );
    undo(&f, &state, &root);
    assert_eq!(
        pristine_view(&root),
        pristine,
        "undo gives back the pristine root"
    );
}

/// The version of `name` in the root's apt lists (the bookworm Packages).
fn candidate(root: &Path, name: &str) -> String {
    let lists = root.join("var/lib/apt/lists");
    for e in fs::read_dir(&lists).unwrap().flatten() {
        if !e.file_name().to_string_lossy().ends_with("_Packages") {
            continue;
        }
        let text = fs::read_to_string(e.path()).unwrap();
        for stanza in text.split("\n\n") {
            if stanza.lines().next() == Some(&format!("Package: {name}")) {
                if let Some(v) = stanza.lines().find_map(|l| l.strip_prefix("Version: ")) {
                    return v.to_string();
                }
            }
        }
    }
    panic!("{name} is not in the apt lists of {}", lists.display());
}

fn dpkg_status(root: &Path, name: &str) -> Option<String> {
    let status = fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    status
        .split("\n\n")
        .find(|s| s.lines().next() == Some(&format!("Package: {name}")))
        .map(|s| {
            let get = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("")
                    .to_string()
            };
            format!("{} {}", get("Status: "), get("Version: "))
        })
}

#[test]
fn packages_offline_noop_host_noop_live_converged_removed_and_undone() {
    let f = Fixture::new();
    let Some(root) = common::debian::root(f.dir.path()) else {
        return; // said why on stderr
    };
    let state = root.join("var/lib/disco");
    fs::create_dir_all(&state).unwrap();
    server_with(&f, &["packages"], &["packages"]);
    // hello pinned to the version of the lists, less at any version.
    let hello = candidate(&root, "hello");
    let less = candidate(&root, "less");
    param(&f, "packages/install/hello", &format!("{hello}\n"));
    param(&f, "packages/install/less", "");
    assert_eq!(dpkg_status(&root, "hello"), None, "hello is not in minbase");
    let pristine = pristine_view(&root);
    // Byte for byte, logs and caches included: only disco's state may move.
    let whole = |root: &Path| -> Vec<String> {
        deep_snapshot(root)
            .into_iter()
            .filter(|l| !l.starts_with("var/lib/disco"))
            .collect()
    };
    let untouched = whole(&root);

    // Noop on the loopback network: simulated and said, nothing changed;
    // the installs are pending changes (exit 2, as the live dance's).
    let (code, out, err) = dance(&f, &state, &root, true, true);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains(&format!("would install hello {hello}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("would install less {less}\n")),
        "{out}"
    );
    let pending = err
        .lines()
        .find_map(|l| l.strip_prefix("info: packages: pending, not made in this noop: "))
        .unwrap_or_else(|| panic!("no pending line: {err}"));
    let mut pending: Vec<&str> = pending.split("; ").collect();
    pending.sort();
    assert_eq!(
        pending,
        [
            format!("install hello {hello}"),
            format!("install less {less}")
        ]
    );
    assert!(
        err.contains(
            "info: noop: 0 change(s), 2 pending (not made in noop) and 0 deferred action(s)"
        ),
        "offline noop changes no file: {err}"
    );
    assert_eq!(whole(&root), untouched, "noop changed the root");

    // A version apt does not have: one line naming the parameter.
    param(&f, "packages/install/hello", "9.9-nosuch\n");
    let (code, _, err) = dance(&f, &state, &root, true, false);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "error: packages: parameter packages/install/hello: version 9.9-nosuch is not available (apt has: {hello})"
        )),
        "{err}"
    );
    param(&f, "packages/install/hello", &format!("{hello}\n"));

    if !common::debian::mirror_reachable() {
        eprintln!("skipped: deb.debian.org:80 cannot be reached; the live installs need it");
        return;
    }
    // Noop with the host's network: the real install, in the sandbox.
    // (Every file said, none rolled up per directory.)
    fs::write(f.config(), "diff_limit = 100000\nnoop_network = \"host\"\n").unwrap();
    let (code, out, err) = dance(&f, &state, &root, true, true);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains(&format!("would install hello {hello}\n")),
        "{out}"
    );
    assert!(
        err.contains(
            "File: /usr/bin/hello : Created : type=[regular file] mode=[0755] owner=[root:root]"
        ),
        "{err}"
    );
    let noop_changes = changes(&err);
    assert_eq!(pristine_view(&root), pristine, "noop changed the root");
    fs::write(f.config(), "diff_limit = 100000\n").unwrap();

    // Live: the same transaction lands.
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains(&format!("install hello {hello}\n")), "{out}");
    assert_eq!(changes(&err), noop_changes, "noop reported what live did");
    assert_eq!(
        dpkg_status(&root, "hello").unwrap(),
        format!("install ok installed {hello}")
    );
    assert!(dpkg_status(&root, "less")
        .unwrap()
        .starts_with("install ok installed "));
    let bin = fs::metadata(root.join("usr/bin/hello")).unwrap();
    assert_eq!((bin.mode() & 0o7777, bin.uid()), (0o755, 0));
    // (debootstrap left its own .debs there.)
    let debs: Vec<PathBuf> = fs::read_dir(root.join("var/cache/apt/archives"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("hello_") || n.starts_with("less_")
        })
        .collect();
    assert!(debs.is_empty(), "no downloaded package is kept: {debs:?}");

    // Converged: installed at the wanted version, nothing runs.
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 0, "the second dance changes nothing: {out}{err}");
    assert_eq!(out, "");
    let landed = pristine_view(&root);

    // hello removed: said offline, done live.
    unparam(&f, "packages/install/hello");
    param(&f, "packages/remove/hello", "");
    let (code, out, err) = dance(&f, &state, &root, true, true);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(out, "would remove hello\n");
    assert!(
        err.contains("info: noop: 0 change(s), 1 pending (not made in noop)"),
        "offline noop changes no file: {err}"
    );
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(out, "remove hello\n");
    assert!(!root.join("usr/bin/hello").exists());
    assert!(dpkg_status(&root, "hello").is_none_or(|s| !s.starts_with("install ok installed")));
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 0, "converged again: {out}{err}");

    undo(&f, &state, &root);
    assert_eq!(pristine_view(&root), landed, "undo gives back the install");
    undo(&f, &state, &root);
    assert_eq!(
        pristine_view(&root),
        pristine,
        "undo gives back the pristine root"
    );
}

/// Content, mode, owner and group of a file (never following a link).
fn file_state(p: &Path) -> (Vec<u8>, u32, u32, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (fs::read(p).unwrap(), m.mode(), m.uid(), m.gid())
}

#[test]
fn users_never_follow_links_in_a_home_to_write_authorized_keys() {
    use std::os::unix::fs::{lchown, symlink};
    let f = Fixture::new();
    let Some(root) = common::debian::root(f.dir.path()) else {
        return; // said why on stderr
    };
    let state = root.join("var/lib/disco");
    fs::create_dir_all(&state).unwrap();
    server_with(&f, &["users", "groups"], &["users"]);
    param(&f, "users/alice/shell", "/bin/bash\n");
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 2, "{out}{err}");
    let shadow = root.join("etc/shadow");
    let etc_state = file_state(&shadow);
    let home = root.join("home/alice");
    let ssh = home.join(".ssh");
    let ak = ssh.join("authorized_keys");
    let keys = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHt0ZXN0a2V5 alice@laptop\n";
    param(&f, "users/alice/authorized_keys", keys);
    let p = "error: users: parameter users/alice/authorized_keys: user alice:";

    // alice's own .ssh, and in it a link to /etc/shadow: refused, noop and live.
    fs::create_dir(&ssh).unwrap();
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700)).unwrap();
    lchown(&ssh, Some(1000), Some(1000)).unwrap();
    symlink("/etc/shadow", &ak).unwrap();
    lchown(&ak, Some(1000), Some(1000)).unwrap();
    for noop in [true, false] {
        let (code, _, err) = dance(&f, &state, &root, noop, true);
        assert_eq!(code, 1, "{err}");
        let want = format!("{p} /home/alice/.ssh/authorized_keys is a symlink; refusing");
        assert!(err.lines().any(|l| l == want), "want {want:?}: {err}");
        assert_eq!(file_state(&shadow), etc_state, "/etc/shadow untouched");
    }

    // .ssh itself a link to /etc.
    fs::remove_file(&ak).unwrap();
    fs::remove_dir(&ssh).unwrap();
    symlink("/etc", &ssh).unwrap();
    lchown(&ssh, Some(1000), Some(1000)).unwrap();
    let (code, _, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 1, "{err}");
    let want = format!("{p} /home/alice/.ssh is a symlink; refusing");
    assert!(err.lines().any(|l| l == want), "want {want:?}: {err}");
    assert_eq!(file_state(&shadow), etc_state, "/etc/shadow untouched");
    let etc = fs::metadata(root.join("etc")).unwrap();
    assert_eq!((etc.uid(), etc.mode() & 0o7777), (0, 0o755));

    // .ssh a directory of someone else (not alice, not root): not taken over.
    fs::remove_file(&ssh).unwrap();
    fs::create_dir(&ssh).unwrap();
    lchown(&ssh, Some(1500), Some(1500)).unwrap();
    let (code, _, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 1, "{err}");
    let want = format!("{p} /home/alice/.ssh is owned by uid 1500, not by alice or root; refusing");
    assert!(err.lines().any(|l| l == want), "want {want:?}: {err}");
    assert_eq!(fs::metadata(&ssh).unwrap().uid(), 1500);

    // The home itself a link.
    fs::remove_dir(&ssh).unwrap();
    fs::rename(&home, root.join("home/alice.real")).unwrap();
    symlink("/etc", &home).unwrap();
    let (code, _, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 1, "{err}");
    let want = format!("{p} the home /home/alice is a symlink; refusing");
    assert!(err.lines().any(|l| l == want), "want {want:?}: {err}");
    assert_eq!(file_state(&shadow), etc_state, "/etc/shadow untouched");
    fs::remove_file(&home).unwrap();
    fs::rename(root.join("home/alice.real"), &home).unwrap();

    // A hard link to /etc/shadow in a root-owned, open .ssh: replaced, never
    // written through; .ssh given to alice, 0700.
    fs::create_dir(&ssh).unwrap();
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o755)).unwrap();
    fs::hard_link(&shadow, &ak).unwrap();
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("users: user alice: wrote /home/alice/.ssh/authorized_keys"),
        "{out}"
    );
    assert_eq!(file_state(&shadow), etc_state, "/etc/shadow untouched");
    let m = fs::symlink_metadata(&ak).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.nlink()),
        (0o600, 1000, 1000, 1)
    );
    assert_eq!(fs::read_to_string(&ak).unwrap(), keys);
    let m = fs::symlink_metadata(&ssh).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o700, 1000, 1000));
    assert_eq!(
        fs::read_dir(&ssh).unwrap().count(),
        1,
        "no temporary file is left"
    );
    let (code, out, err) = dance(&f, &state, &root, false, true);
    assert_eq!(code, 0, "converged: {out}{err}");
}

#[test]
fn packages_held_package_is_installed_and_stale_lists_with_update_are_said() {
    let f = Fixture::new();
    let Some(root) = common::debian::root(f.dir.path()) else {
        return; // said why on stderr
    };
    let state = root.join("var/lib/disco");
    fs::create_dir_all(&state).unwrap();
    server_with(&f, &["packages"], &["packages"]);
    // gzip (minbase) held at its installed version.
    let st = std::process::Command::new("chroot")
        .arg(&root)
        .args(["apt-mark", "hold", "gzip"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let status = dpkg_status(&root, "gzip").unwrap();
    let version = status
        .strip_prefix("hold ok installed ")
        .unwrap_or_else(|| panic!("gzip is held: {status}"))
        .to_string();
    // Lists that know nothing: anything asked of apt would fail.
    for e in fs::read_dir(root.join("var/lib/apt/lists"))
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy().ends_with("_Packages") {
            fs::remove_file(e.path()).unwrap();
        }
    }
    param(&f, "packages/install/gzip", &format!("{version}\n"));
    for noop in [true, false] {
        let (code, out, err) = dance(&f, &state, &root, noop, true);
        assert_eq!(code, 0, "a held installed package is converged: {out}{err}");
        assert_eq!(out, "", "no apt run");
    }

    // A package stale lists do not know: an error without packages/update …
    param(&f, "packages/install/hello", "");
    let (code, _, err) = dance(&f, &state, &root, true, true);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: packages: parameter packages/install/hello: apt knows no package hello (are the lists up to date? see packages/update)"),
        "{err}"
    );
    // … with it, an offline noop says (and counts) what the live dance,
    // which updates the lists first, does.
    param(&f, "packages/update", "true\n");
    let (code, out, err) = dance(&f, &state, &root, true, true);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        out, "would update the package lists, then install hello\n",
        "{err}"
    );
    assert!(
        err.contains("info: packages: pending, not made in this noop: update the package lists, then install hello\n"),
        "{err}"
    );
    param(&f, "packages/install/hello", "2.10-3\n");
    let (code, out, err) = dance(&f, &state, &root, true, true);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        out, "would update the package lists, then install hello 2.10-3\n",
        "{err}"
    );
}
