//! Live dances on fixture roots: the merge, undo, crash safety, deferred
//! actions, handlers, idempotence, and noop telling the truth.
mod common;

use common::root::{deep_snapshot, snapshot_no_mtimes, FixtureRoot, MountGuard};
use common::{run, Fixture};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn live_dance(f: &Fixture, root: &Path, args: &[&str]) -> (i32, String, String) {
    run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(root)
        .arg("dance")
        .args(args))
}

/// A snapshot without directory mtimes (adding and removing entries
/// changes them; everything else must be identical).
fn snapshot_no_dir_mtimes(root: &Path) -> Vec<String> {
    deep_snapshot(root)
        .into_iter()
        .map(|l| {
            let path = l.split(' ').next().unwrap().to_string();
            if root.join(&path).is_dir()
                && !fs::symlink_metadata(root.join(&path))
                    .unwrap()
                    .file_type()
                    .is_symlink()
            {
                let mut parts: Vec<&str> = l.split(' ').collect();
                parts[3] = "-";
                parts.join(" ")
            } else {
                l
            }
        })
        .collect()
}

/// Every kind of change, made by one script.
fn every_kind_of_change(f: &Fixture, r: &FixtureRoot) {
    r.file("etc/modify", "old\n")
        .file("etc/delete", "bye\n")
        .file("srv/dir-to-file/inner", "i\n");
    r.file("srv/file-to-dir", "f\n")
        .file("etc/chmod", "c\n")
        .file("etc/chown", "o\n")
        .file("etc/xattr", "x\n");
    std::os::unix::fs::symlink("a", r.path.join("etc/link")).unwrap();
    fs::create_dir_all(r.path.join("srv/replace")).unwrap();
    r.file("srv/replace/old", "o\n");
    f.node("n", &["m"]).module("m", "");
    // The mode comes from `attributes`, not from the checkout.
    f.module_file("m", "attributes", "/etc/created 0640\n", 0o644);
    f.module_file("m", "files/etc/created", "new file\n", 0o644).module_file(
        "m",
        "scripts/10-all",
        "echo new > /etc/modify\nrm /etc/delete\nrm -rf /srv/dir-to-file; echo file > /srv/dir-to-file\n\
         rm /srv/file-to-dir; mkdir /srv/file-to-dir; echo in > /srv/file-to-dir/x\n\
         ln -sfn b /etc/link\nchmod 600 /etc/chmod\nchown 1:1 /etc/chown\n\
         rm -rf /srv/replace; mkdir /srv/replace; echo n > /srv/replace/new\nmkdir -p /opt/tree/deep; echo d > /opt/tree/deep/f\n",
        0o755,
    );
}

fn assert_every_kind_landed(root: &Path) {
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
    let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
    assert_eq!(read("etc/created"), "new file\n");
    assert_eq!(meta("etc/created").mode() & 0o7777, 0o640);
    assert_eq!(read("etc/modify"), "new\n");
    assert!(!root.join("etc/delete").exists());
    assert_eq!(read("srv/dir-to-file"), "file\n");
    assert_eq!(read("srv/file-to-dir/x"), "in\n");
    assert_eq!(
        fs::read_link(root.join("etc/link")).unwrap().to_str(),
        Some("b")
    );
    assert_eq!(meta("etc/chmod").mode() & 0o7777, 0o600);
    assert_eq!((meta("etc/chown").uid(), meta("etc/chown").gid()), (1, 1));
    assert!(!root.join("srv/replace/old").exists());
    assert_eq!(read("srv/replace/new"), "n\n");
    assert_eq!(read("opt/tree/deep/f"), "d\n");
}

#[test]
fn every_kind_of_change_lands_exactly_and_noop_told_the_truth() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    every_kind_of_change(&f, &r);
    let before = deep_snapshot(&r.path);
    let (code, out, err) = run(f
        .disco()
        .env("NOOP", "true")
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .arg("dance"));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(deep_snapshot(&r.path), before);
    let noop: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();

    let (code, out, err) = live_dance(&f, &r.path, &["--detailed-exitcodes"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_every_kind_landed(&r.path);
    let live: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    assert_eq!(
        noop["modules"][0]["changes"], live["modules"][0]["changes"],
        "noop reported exactly what the live run applied"
    );
    // And what was reported is what the root now holds.
    for c in live["modules"][0]["changes"].as_array().unwrap() {
        let p = r
            .path
            .join(c["path"].as_str().unwrap().trim_start_matches('/'));
        match c["kind"].as_str().unwrap() {
            "Deleted" => assert!(fs::symlink_metadata(&p).is_err(), "{p:?}"),
            _ => {
                let m = fs::symlink_metadata(&p).unwrap();
                let new = &c["new"];
                assert_eq!(m.uid() as u64, new["uid"].as_u64().unwrap(), "{p:?}");
                if !m.file_type().is_symlink() {
                    assert_eq!(
                        (m.mode() & 0o7777) as u64,
                        new["mode"].as_u64().unwrap(),
                        "{p:?}"
                    );
                }
                // A file that is not world-readable is a secret: no md5 in the report.
                if m.is_file() && m.mode() & 0o004 != 0 {
                    let md5 = format!(
                        "{:x}",
                        <md5::Md5 as md5::Digest>::digest(fs::read(&p).unwrap())
                    );
                    assert_eq!(new["md5"].as_str().unwrap(), md5, "{p:?}");
                }
            }
        }
    }
    assert!(
        fs::read_dir(f.state().join("run"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "scratch removed"
    );
}

#[test]
fn xattr_only_change_lands() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    r.file("etc/xattr", "x\n");
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-x",
        "setfattr -n user.disco -v tagged /etc/xattr\n",
        0o755,
    );
    let (code, _, err) = run(f
        .disco()
        .env("NOOP", "1")
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .arg("dance"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("info: File: /etc/xattr : Modified : type=[regular file] mode=[0644] owner=[root:root] md5=["), "{err}");
    assert!(err.contains("xattrs=[changed]"), "{err}");
    assert_eq!(
        xattr::get(r.path.join("etc/xattr"), "user.disco").unwrap(),
        None
    );
    let (code, _, err) = live_dance(&f, &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        xattr::get(r.path.join("etc/xattr"), "user.disco")
            .unwrap()
            .as_deref(),
        Some(&b"tagged"[..])
    );
    assert_eq!(fs::read_to_string(r.path.join("etc/xattr")).unwrap(), "x\n");
}

#[test]
fn idempotent_second_dance_changes_nothing() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/app.conf", "a=1\n", 0o644)
        .module_file("m", "templates/etc/app.env", "echo ENV=$(disco param get env)\n", 0o644)
        .module_file("m", "scripts/10-state", "grep -qx m /var/lib/state 2>/dev/null || echo m >> /var/lib/state\nsystemctl restart app\n", 0o755)
        .module_file("m", "handlers/10-h", "echo handler ran >&2\n", 0o755)
        .file("parameters/n/parameters/env", "prod\n");
    let (code, _, err) = live_dance(&f, &r.path, &["--detailed-exitcodes"]);
    assert_eq!(code, 2, "{err}");
    let after_first = deep_snapshot(&r.path);
    let (code, _, err) = live_dance(&f, &r.path, &["--detailed-exitcodes", "--run-actions"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("File:"), "{err}");
    assert!(
        err.contains("skipped systemctl restart app: m changed nothing"),
        "{err}"
    );
    assert!(
        !err.contains("handler ran") && !err.contains("running handler"),
        "{err}"
    );
    assert_eq!(deep_snapshot(&r.path), after_first);
}

#[test]
fn failing_module_three_of_four_merges_nothing() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["a", "b", "c", "d"])
        .module("a", "")
        .module("b", "after a\n")
        .module("c", "after b\n")
        .module("d", "after c\n");
    for m in ["a", "b", "d"] {
        f.module_file(m, &format!("files/etc/{m}"), "x\n", 0o644);
    }
    f.module_file("c", "scripts/10-fail", "echo c > /etc/c; exit 7\n", 0o755);
    let before = deep_snapshot(&r.path);
    let (code, _, err) = live_dance(&f, &r.path, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error: c: scripts/10-fail exited 7\n"),
        "{err}"
    );
    assert_eq!(deep_snapshot(&r.path), before, "nothing merged");
    // The run dir goes with the run (the report keeps what ran, for
    // `disco diff`); `--keep` keeps it.
    assert_eq!(
        fs::read_dir(f.state().join("run")).unwrap().count(),
        0,
        "no run dir left"
    );
    let (code, out, _) = run(f.disco().arg("diff"));
    assert_eq!(code, 0);
    assert!(out.contains("File: /etc/c : Created"), "{out}");
    assert!(!f.state().join("backup").exists());
}

#[test]
fn undo_restores_the_root_exactly() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    every_kind_of_change(&f, &r);
    let before = snapshot_no_dir_mtimes(&r.path);
    let (code, _, err) = live_dance(&f, &r.path, &[]);
    assert_eq!(code, 0, "{err}");
    assert_every_kind_landed(&r.path);
    let (code, out, err) = run(f.disco().arg("--root").arg(&r.path).arg("undo"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("info: restored /etc/modify"), "{err}");
    assert!(
        err.contains("info: removed /etc/created (created by run"),
        "{err}"
    );
    assert_eq!(snapshot_no_dir_mtimes(&r.path), before);
    let (code, _, err) = run(f.disco().arg("--root").arg(&r.path).arg("undo"));
    assert_eq!(code, 1);
    assert!(err.starts_with("error: nothing to undo"), "{err}");
    // A backup is applied only to the root it was taken from.
    assert_eq!(live_dance(&f, &r.path, &[]).0, 0);
    let (code, _, err) = run(f.disco().arg("--root").arg(f.dir.path()).arg("undo"));
    assert_eq!(code, 1);
    assert!(
        err.contains("changed") && err.contains("give --root"),
        "{err}"
    );
}

#[test]
fn separately_mounted_filesystem_takes_the_copy_path() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let data = r.path.join("srv/data");
    let _guard = MountGuard::tmpfs(&data);
    fs::write(data.join("existing"), "old\n").unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-w", "echo new > /srv/data/new; echo changed > /srv/data/existing; chmod 600 /srv/data/existing\n", 0o755);
    let (code, out, err) = live_dance(&f, &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(fs::read_to_string(data.join("new")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(data.join("existing")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        fs::metadata(data.join("existing"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        fs::read_dir(&data).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("disco")),
        "no temp left"
    );
    let (code, _, err) = run(f.disco().arg("--root").arg(&r.path).arg("undo"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_to_string(data.join("existing")).unwrap(), "old\n");
    assert!(!data.join("new").exists());
}

#[test]
fn deferred_actions_and_handlers_replay_in_order_with_run_actions() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let double = "#!/bin/sh\necho \"${0##*/} $*\" >> /var/log/actions\n";
    r.file("usr/sbin/systemctl", double)
        .file("usr/sbin/service", double);
    fs::set_permissions(
        r.path.join("usr/sbin/systemctl"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::set_permissions(
        r.path.join("usr/sbin/service"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    f.node("n", &["m", "quiet"])
        .module("m", "")
        .module("quiet", "after m\n");
    f.module_file("m", "files/etc/nginx.conf", "conf\n", 0o644)
        .module_file("m", "scripts/10-x", "systemctl restart nginx\nservice postgresql reload\n/usr/sbin/systemctl daemon-reload\n", 0o755)
        .module_file("m", "handlers/10-h", "echo \"handler $DISCO_MODULE changed=$DISCO_CHANGED param=$(disco param get p)\" >> /var/log/actions\n", 0o755)
        .module_file("quiet", "scripts/10-y", "systemctl restart unrelated\n", 0o755)
        .file("parameters/n/parameters/p", "v\n");
    let (code, out, err) = live_dance(&f, &r.path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("not run (the root is"), "{err}");
    assert!(
        !r.path.join("var/log/actions").exists(),
        "nothing runs under --root without --run-actions"
    );
    fs::write(r.path.join("etc/nginx.conf"), "drifted\n").unwrap();
    let (code, out, err) = live_dance(&f, &r.path, &["--run-actions"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        fs::read_to_string(r.path.join("var/log/actions")).unwrap(),
        "systemctl restart nginx\nservice postgresql reload\nsystemctl daemon-reload\nhandler m changed=/etc/nginx.conf param=v\n"
    );
    assert!(
        !r.path.join("run/disco").exists(),
        "no leftover mount point in the root"
    );
}

#[test]
fn failing_action_fails_the_dance_but_files_stay_merged() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    r.file("usr/sbin/systemctl", "#!/bin/sh\nexit 5\n");
    fs::set_permissions(
        r.path.join("usr/sbin/systemctl"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/x", "x\n", 0o644).module_file(
        "m",
        "scripts/10-x",
        "systemctl restart x\n",
        0o755,
    );
    let (code, _, err) = live_dance(&f, &r.path, &["--run-actions", "--detailed-exitcodes"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("error: action systemctl restart x exited 5"),
        "{err}"
    );
    assert!(err.contains("the merged files stay merged"), "{err}");
    assert_eq!(fs::read_to_string(r.path.join("etc/x")).unwrap(), "x\n");
}

/// 200 entries: 100 created files, 100 modified ones.
fn two_hundred(f: &Fixture, r: &FixtureRoot) {
    f.node("n", &["m"]).module("m", "");
    for i in 0..100 {
        r.file(&format!("srv/mod/f{i:03}"), &format!("old {i}\n"));
        f.module_file(
            "m",
            &format!("files/srv/mod/f{i:03}"),
            &format!("new {i}\n"),
            0o644,
        );
        f.module_file(
            "m",
            &format!("files/srv/new/f{i:03}"),
            &format!("created {i}\n"),
            0o644,
        );
    }
}

#[test]
fn a_merge_killed_after_any_entry_is_finished_by_the_next_dance() {
    // The reference: an uninterrupted run.
    let reference = {
        let f = Fixture::new();
        let r = FixtureRoot::new(f.dir.path());
        two_hundred(&f, &r);
        let (code, _, err) = live_dance(&f, &r.path, &[]);
        assert_eq!(code, 0, "{err}");
        (snapshot_no_mtimes(&r.path.join("srv")), f)
    };
    // No core files from abort(): the limit is inherited by disco.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0).unwrap();
    // 201 entries: 100 modified files, the new directory, 100 created files.
    let mut ns: Vec<usize> = (1..=201).step_by(8).collect();
    ns.extend([2, 3, 100, 101, 199, 200]);
    for n in ns {
        let f = Fixture::new();
        let r = FixtureRoot::new(f.dir.path());
        two_hundred(&f, &r);
        let mut cmd = f.disco();
        cmd.env("DISCO_FAILPOINT", format!("merge-after:{n}"))
            .args(["--node", "n", "--root"])
            .arg(&r.path)
            .arg("dance");
        let (code, _, err) = run(&mut cmd);
        assert_ne!(code, 0, "N={n}: the failpoint must abort: {err}");
        assert!(f.state().join("merging").exists(), "N={n}: marker left");
        // Never a partial file: each is its old or its new content.
        for e in fs::read_dir(r.path.join("srv/mod")).unwrap() {
            let e = e.unwrap();
            let i: usize = e.file_name().to_string_lossy()[1..].parse().unwrap();
            let c = fs::read_to_string(e.path()).unwrap();
            assert!(
                c == format!("old {i}\n") || c == format!("new {i}\n"),
                "N={n}: partial {c:?}"
            );
        }
        if let Ok(d) = fs::read_dir(r.path.join("srv/new")) {
            for e in d {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    name.starts_with('f'),
                    "N={n}: a temporary file is visible: {name}"
                );
                let i: usize = name[1..].parse().unwrap();
                assert_eq!(
                    fs::read_to_string(e.path()).unwrap(),
                    format!("created {i}\n"),
                    "N={n}"
                );
            }
        }
        let (code, _, err) = live_dance(&f, &r.path, &[]);
        assert_eq!(code, 0, "N={n}: {err}");
        if n <= 201 {
            assert!(
                err.contains("was interrupted; finishing it first"),
                "N={n}: {err}"
            );
        }
        assert!(!f.state().join("merging").exists());
        assert!(
            snapshot_no_mtimes(&r.path.join("srv")) == reference.0,
            "N={n}: final root differs"
        );
    }
}

#[test]
fn state_dir_inside_the_root_keeps_layers_in_memory_and_merges() {
    // As on a real node: ROOT is `/` and the state dir lives inside it.
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let state = r.path.join("var/lib/disco");
    f.node("n", &["a", "b"])
        .module("a", "")
        .module("b", "after a\n");
    f.module_file("a", "files/etc/from-a", "a\n", 0o644)
        .module_file(
            "b",
            "scripts/10-x",
            "cat /etc/from-a > /etc/from-b; rm /etc/hostname\n",
            0o755,
        );
    let dance = |noop: bool| {
        run(f
            .disco_with_state(&state)
            .env("NOOP", if noop { "1" } else { "0" })
            .arg("--server")
            .arg(f.server())
            .args(["--node", "n", "--root"])
            .arg(&r.path)
            .arg("dance"))
    };
    let outside_state = |root: &Path| -> Vec<String> {
        deep_snapshot(root)
            .into_iter()
            .filter(|l| !l.starts_with("var/lib/disco"))
            .collect()
    };
    fs::create_dir_all(&state).unwrap();
    let before = outside_state(&r.path);
    let (code, out, err) = dance(true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("File: /etc/from-b : Created"), "{err}");
    assert_eq!(
        outside_state(&r.path),
        before,
        "noop changed nothing outside the state dir"
    );
    assert!(
        common::root::host_mounts_with("disco-scratch").is_empty(),
        "the in-memory layers are unmounted"
    );
    let (code, out, err) = dance(false);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        fs::read_to_string(r.path.join("etc/from-b")).unwrap(),
        "a\n"
    );
    assert!(!r.path.join("etc/hostname").exists());
    assert!(common::root::host_mounts_with("disco-scratch").is_empty());
    let (code, _, err) = run(f
        .disco_with_state(&state)
        .arg("--root")
        .arg(&r.path)
        .arg("undo"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        fs::read_to_string(r.path.join("etc/hostname")).unwrap(),
        "fixture\n"
    );
    assert!(!r.path.join("etc/from-b").exists());
}

/// A live dance of [`two_hundred`] with the state dir inside the root
/// (layers in the scratch image), aborted by the merge failpoint.
struct ImageMerge {
    f: Fixture,
    r: FixtureRoot,
    state: std::path::PathBuf,
    /// `srv/` before the dance.
    before: Vec<String>,
}

impl ImageMerge {
    fn killed_after(n: usize) -> ImageMerge {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0).unwrap();
        let f = Fixture::new();
        let r = FixtureRoot::new(f.dir.path());
        let state = r.path.join("var/lib/disco");
        two_hundred(&f, &r);
        let before = snapshot_no_mtimes(&r.path.join("srv"));
        let m = ImageMerge {
            f,
            r,
            state,
            before,
        };
        let (code, _, err) = run(m
            .disco()
            .env("DISCO_FAILPOINT", format!("merge-after:{n}"))
            .args(["--node", "n", "dance"]));
        assert_ne!(code, 0, "the failpoint must abort: {err}");
        m
    }

    /// disco on this root and state dir.
    fn disco(&self) -> assert_cmd::Command {
        let mut c = self.f.disco_with_state(&self.state);
        c.arg("--server")
            .arg(self.f.server())
            .arg("--root")
            .arg(&self.r.path);
        c
    }
}

#[test]
fn a_merge_from_the_scratch_image_killed_half_way_is_finished() {
    // The state dir inside ROOT: the layers are in the scratch image, on
    // disk; a killed disco leaves them there, and the next run finishes.
    let m = ImageMerge::killed_after(120);
    let (r, state, before) = (&m.r, &m.state, m.before.clone());
    let disco = || m.disco();
    assert!(state.join("merging").exists());
    assert_ne!(
        snapshot_no_mtimes(&r.path.join("srv")),
        before,
        "half merged"
    );
    assert!(common::root::host_mounts_with(state.to_str().unwrap()).is_empty());
    // A noop run would have to empty the image the merge needs: refused.
    let (code, _, err) = run(disco().env("NOOP", "true").args(["--node", "n", "dance"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("a merge was interrupted and its layers are in the scratch image"),
        "{err}"
    );
    let (code, _, err) = run(disco().args(["--node", "n", "dance"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("finishing it first"), "{err}");
    assert_eq!(r.read("srv/new/f099").as_deref(), Some("created 99\n"));
    assert_eq!(r.read("srv/mod/f000").as_deref(), Some("new 0\n"));
    assert!(!state.join("merging").exists());
    // And undo puts back the pre-dance root.
    let (code, _, err) = run(disco().arg("undo"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(snapshot_no_mtimes(&r.path.join("srv")), before);
}

#[test]
fn a_merge_killed_with_copies_not_yet_placed_rolls_back_without_leftovers() {
    // The copy path copies a directory's files beside their live names
    // before placing any: a killed merge whose layers are then lost is
    // rolled back, and those copies go too.
    let m = ImageMerge::killed_after(30);
    let (r, state, before) = (&m.r, &m.state, m.before.clone());
    let disco = || m.disco();
    let leftovers = |dir: &str| {
        fs::read_dir(r.path.join(dir))
            .into_iter()
            .flatten()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".disco-merge")
            })
            .count()
    };
    assert!(
        leftovers("srv/new") + leftovers("srv/mod") > 0,
        "copies were waiting for their rename"
    );
    // The layers are lost (the image is gone): roll back.
    fs::remove_file(state.join("scratch.img")).unwrap();
    let (code, _, err) = run(disco().arg("undo").arg("--yes"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rolling back"), "{err}");
    assert_eq!(leftovers("srv/new") + leftovers("srv/mod"), 0);
    assert_eq!(snapshot_no_mtimes(&r.path.join("srv")), before);
}

#[test]
fn a_dance_that_changes_nothing_merges_nothing() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    // The file lands once; then the script rewrites it identically (a
    // copy-up that changes nothing) at every dance.
    f.module_file("m", "files/etc/app.conf", "same\n", 0o644)
        .module_file(
            "m",
            "scripts/10-rewrite",
            "cp /etc/app.conf /etc/app.tmp && mv /etc/app.tmp /etc/app.conf\n",
            0o755,
        );
    let (code, _, err) = live_dance(&f, &r.path, &["--detailed-exitcodes"]);
    assert_eq!(code, 2, "{err}");
    let stages = |f: &Fixture| -> Vec<String> {
        let rep: serde_json::Value =
            serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap())
                .unwrap();
        rep["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(stages(&f).contains(&"merge".to_string()));
    let backups = || fs::read_dir(f.state().join("backup")).unwrap().count();
    let before = backups();
    let (code, _, err) = live_dance(&f, &r.path, &["--detailed-exitcodes"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !stages(&f).contains(&"merge".to_string()),
        "{:?}",
        stages(&f)
    );
    assert_eq!(backups(), before, "no journal, no backup");
    assert!(!f.state().join("merging").exists());
    assert_eq!(r.read("etc/app.conf").as_deref(), Some("same\n"));
}

#[test]
fn a_failed_handler_runs_again_until_it_succeeds() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/app.conf", "bad\n", 0o644)
        .module_file("m", "handlers/10-check", "exit 4\n", 0o755);
    let dance = || live_dance(&f, &r.path, &["--run-actions", "--detailed-exitcodes"]);
    let (code, _, err) = dance();
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("1 deferred action(s) or handler(s) failed"),
        "{err}"
    );
    // Nothing changed since, yet the failure is not forgotten.
    let (code, _, err) = dance();
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("running again what failed before in m"),
        "{err}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap();
    assert_eq!(report["pending_failed_actions"], 1);
    let (code, _, err) = live_dance(&f, &r.path, &["--retry-actions", "--detailed-exitcodes"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("1 deferred action(s) or handler(s) still fail"),
        "{err}"
    );
    // The fix is published: the handler runs once more, and succeeds.
    f.module_file(
        "m",
        "handlers/10-check",
        "echo ran >> /etc/handler-ran\n",
        0o755,
    );
    let (code, _, err) = dance();
    assert_eq!(code, 0, "{err}");
    assert_eq!(r.read("etc/handler-ran").as_deref(), Some("ran\n"));
    let (code, _, err) = dance();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        r.read("etc/handler-ran").as_deref(),
        Some("ran\n"),
        "not again"
    );
}
