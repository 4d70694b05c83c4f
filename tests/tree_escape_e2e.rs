//! End to end, against a private sshd on 127.0.0.1 and the real binary on
//! both sides: a pushed tree whose top-level `modules` is a symlink to an
//! `/etc`-like directory holding root-only files (a host private key) is
//! refused by `disco publish` (run as root for a served directory
//! `nobody` owns) and by `disco serve` (run as root by sshd, serving the
//! tree as is); no root-only byte reaches a snapshot or the node's cache.
mod common;

use common::sshd::{forced, keygen, Sshd};
use common::{nobody_ids, run, Fixture};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const SECRET: &str = "ROOT-ONLY-HOST-KEY-e2e-8d3b";

/// Every file below `dir` (symlinks not followed) holding [`SECRET`].
fn holding_secret(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(m) = fs::symlink_metadata(dir) else {
        return out;
    };
    if m.is_dir() {
        for e in fs::read_dir(dir).unwrap() {
            out.extend(holding_secret(&e.unwrap().path()));
        }
    } else if m.is_file() && String::from_utf8_lossy(&fs::read(dir).unwrap()).contains(SECRET) {
        out.push(dir.to_path_buf());
    }
    out
}

fn plan_over(f: &Fixture, uri: &str) -> (i32, String, String) {
    run(f
        .disco_without_server()
        .args(["--server", uri, "--node", "n", "plan"]))
}

#[test]
fn a_pushed_modules_link_to_root_only_files_reaches_no_snapshot_and_no_node() {
    let f = Fixture::new();
    fs::set_permissions(f.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The push: node n runs module `ssh`; a clean tree first.
    f.node("n", &["ssh"]).module("ssh", "");
    f.module_file("ssh", "files/etc/ssh/banner", "hello\n", 0o644);
    // The server's /etc-like directory: module-shaped, root-only key.
    let etc = f.dir.path().join("etc-like");
    fs::create_dir_all(etc.join("ssh/files")).unwrap();
    for p in [etc.join("ssh/ssh_host_ed25519_key"), etc.join("shadow")] {
        fs::write(&p, format!("{SECRET}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    // The served directory, nobody's (the serving user of the docs).
    let served = f.dir.path().join("served");
    fs::create_dir(&served).unwrap();
    fs::set_permissions(&served, fs::Permissions::from_mode(0o700)).unwrap();
    let (uid, gid) = nobody_ids();
    std::os::unix::fs::chown(&served, Some(uid), Some(gid)).unwrap();
    let publish = || {
        run(f
            .disco_without_server()
            .arg("publish")
            .arg(f.server())
            .arg("--root")
            .arg(&served))
    };
    let (code, _, err) = publish();
    assert_eq!(code, 0, "{err}");

    let keys = f.dir.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let (key_pub, key_src) = (keys.join("published"), keys.join("source"));
    let sshd = Sshd::start(
        &f.dir.path().join("sshd"),
        &[
            forced(&keygen(&key_pub), &served, Some("n")),
            forced(&keygen(&key_src), &f.server(), Some("n")),
        ],
    );
    fs::write(f.config(), sshd.client_config(&key_pub)).unwrap();
    let uri = sshd.uri(served.to_str().unwrap());
    let (code, out, err) = plan_over(&f, &uri);
    assert_eq!((code, out.as_str()), (0, "ssh\n"), "{err}");

    // The attack: modules -> the /etc-like directory.
    fs::rename(f.server().join("modules"), f.dir.path().join("modules-was")).unwrap();
    std::os::unix::fs::symlink(&etc, f.server().join("modules")).unwrap();
    let (code, _, err) = publish();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{} is a symlink to {}",
            f.server().join("modules").display(),
            etc.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // The node fetches what is still published: nothing of the key.
    let (code, out, err) = plan_over(&f, &uri);
    assert_eq!((code, out.as_str()), (0, "ssh\n"), "{err}");

    // Served as is (no publish), by root: serve refuses the link.
    fs::write(f.config(), sshd.client_config(&key_src)).unwrap();
    let (code, _, err) = plan_over(&f, &sshd.uri(f.server().to_str().unwrap()));
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("is a symlink to")
            && err.contains("never follow a top-level link of the tree"),
        "the node says why: {err}"
    );
    assert!(!err.contains(SECRET), "{err}");

    assert_eq!(holding_secret(&served), Vec::<PathBuf>::new());
    assert_eq!(holding_secret(&f.state()), Vec::<PathBuf>::new());
    // The control: the key is where the test put it, and findable.
    assert_eq!(holding_secret(&etc).len(), 2);
}

/// Served as is, a tree may carry its own `.disco-manifest.json` listing a
/// directory that is in fact a symlink to root-only files: serve opens
/// every file through no symlink, so the listing is all the node gets.
#[test]
fn a_forged_manifest_cannot_lead_serve_through_a_symlinked_directory() {
    let f = Fixture::new();
    f.node("n", &["ssh"]).module("ssh", "");
    let etc = f.dir.path().join("etc-like");
    fs::create_dir_all(etc.join("ssh")).unwrap();
    let key = etc.join("ssh/ssh_host_ed25519_key");
    fs::write(&key, format!("{SECRET}\n")).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    // The forger's manifest: publish a tree whose module holds a real
    // copy where the link will be (same bytes, same private mode).
    let sub = f.server().join("modules/ssh/sub");
    fs::create_dir_all(&sub).unwrap();
    fs::copy(&key, sub.join("ssh_host_ed25519_key")).unwrap();
    let served = f.dir.path().join("served");
    let (code, _, err) = run(f
        .disco_without_server()
        .arg("publish")
        .arg(f.server())
        .arg("--root")
        .arg(&served));
    assert_eq!(code, 0, "{err}");
    let snapshot = fs::canonicalize(served.join("current")).unwrap();
    fs::copy(
        snapshot.join(".disco-manifest.json"),
        f.server().join(".disco-manifest.json"),
    )
    .unwrap();
    fs::remove_dir_all(&served).unwrap();
    // Module files made private as publish would, so the listing matches.
    for p in [f.server().join("modules/ssh"), sub.clone()] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    }
    fs::remove_dir_all(&sub).unwrap();
    std::os::unix::fs::symlink(etc.join("ssh"), &sub).unwrap();

    let keys = f.dir.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let key_n = keys.join("n");
    let sshd = Sshd::start(
        &f.dir.path().join("sshd"),
        &[forced(&keygen(&key_n), &f.server(), Some("n"))],
    );
    fs::write(f.config(), sshd.client_config(&key_n)).unwrap();
    let (code, _, err) = plan_over(&f, &sshd.uri(f.server().to_str().unwrap()));
    assert_ne!(code, 0, "{err}");
    assert!(!err.contains(SECRET), "{err}");
    assert_eq!(holding_secret(&f.state()), Vec::<PathBuf>::new());
    assert_eq!(holding_secret(&etc).len(), 1);
}
